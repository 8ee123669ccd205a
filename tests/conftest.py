"""Shared fixtures: tiny random models built in the test session, one Ray instance per session."""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MURMURATE_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def murmurate_cache(tmp_path_factory):
    """What murmurate generates (rewritten graphs, benchmark models) goes to a directory of the test
    session's, not the user's."""
    path = tmp_path_factory.mktemp("murmurate-cache")
    os.environ["MURMURATE_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Random tiny models (llama, qwen3, qwen3_moe with 8 experts / top-2), exported with optimum."""
    pytest.importorskip("torch")
    pytest.importorskip("optimum.exporters.onnx")
    from exports.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {
        arch: build_tiny_model(arch, root / arch, preset="test", seed=i)
        for i, arch in enumerate(["llama", "qwen3", "qwen3_moe"])
    }


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session (fractional CPUs keep 2 cores from deadlocking)."""
    import ray

    from runtime.scheduler import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def moe_batcher(tiny_models):
    """An in-process batcher over the tiny MoE model, shared by the constrained-decoding tests."""
    from _helpers import make_batcher

    return make_batcher(tiny_models["qwen3_moe"])


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The whole act factory at the tiny scale (``murmurate models build``, about 15 s): its output
    directory and the build's result."""
    pytest.importorskip("torch")
    pytest.importorskip("optimum.exporters.onnx")
    from exports.build import build_models

    out = tmp_path_factory.mktemp("models")
    # The tiny models are barely trained, so int8 may flip a near-tie; keep the variant regardless
    # (the threshold itself is exercised in test_build's test_int8_is_dropped_when_it_disagrees).
    result = build_models(out, scale="tiny", int8_min_agreement=0.0, progress=False)
    return out, result
