"""Shared benchmark plumbing: the default generated model, result tables and JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runtime.registry import cache_dir


def default_bench_model(console: Console | None = None) -> Path:
    """The small generated llama used when no ``--model`` is given (built once, then reused)."""
    from runtime.artifacts import ModelError, load_model_dir

    root = cache_dir() / "bench-llama-20m"
    try:
        load_model_dir(root / "onnx")
        return root / "onnx"
    except ModelError:
        pass
    if console:
        console.print(f"[dim]building the benchmark model in {root} (once)…[/dim]")
    from exports.tiny import build_tiny_model

    return build_tiny_model("llama", root, preset="bench", seed=0, name="bench-llama-20m", last_token=True)


def print_table(console: Console, title: str, columns: list[str], rows: list[list[Any]]) -> None:
    cells = [[_fmt(x) for x in r] for r in rows]
    table = Table(title=title)
    for i, c in enumerate(columns):
        # Numbers and header words are never cut short: a narrow console wraps headers between words.
        widest = max([len(r[i]) for r in cells] + [len(w) for w in c.split()])
        table.add_column(c, justify="left" if i == 0 else "right", min_width=widest, overflow="fold")
    for r in cells:
        table.add_row(*r)
    console.print(table, crop=False)  # a console too narrow wraps lines rather than dropping columns


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:,.3f}" if abs(x) < 10 else f"{x:,.1f}"
    return str(x)


def write_json(path: str | Path | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def machine_info() -> dict[str, Any]:
    """The machine and libraries a benchmark ran on, and its load (the machine may be shared)."""
    import platform

    import onnxruntime

    try:
        import torch

        torch_info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    except ImportError:  # runtime-only runs need no torch
        torch_info = {}
    return {
        "cpus": os.cpu_count(),
        **cpu_model(),
        "platform": platform.platform(),
        "onnxruntime": onnxruntime.__version__,
        **torch_info,
        # the machine is shared: the load during the run says how much the numbers can be trusted
        "load_avg_1m": os.getloadavg()[0],
    }


# Instruction sets that decide how fast ONNX Runtime's kernels run (int8 GEMMs above all).
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def cpu_model() -> dict[str, Any]:
    """The CPU's model name and the vector instruction sets it has (Linux; empty elsewhere).

    Two VMs sold as "2 vCPUs" can differ by 2× on int8 work (AVX-512 VNNI or not): the numbers of
    a benchmark mean little without them.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name"), "isa": [f for f in _ISA_FLAGS if f in flags]}
