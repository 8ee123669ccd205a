"""The README's Python examples run as written (in order, sharing one namespace, as a reader would)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run(ray_session, monkeypatch, capsys):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2  # the persona quickstart, then the same villagers on the shipped models
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    out = capsys.readouterr().out
    assert out.count("Summary(") == 2 and "brain='ModelBrain'" in out
    assert "fallbacks=0" in out.split("brain='ModelBrain'")[1]
