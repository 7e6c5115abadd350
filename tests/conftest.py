"""Shared fixtures. Every test runs offline with its own MRBENCH_HOME (no writes to ~/.cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point MRBENCH_HOME/MRBENCH_CACHE at a per-session temp dir shared by the tests of a worker,
    so built-in benchmarks are built once per worker, never in the user's home."""
    home = tmp_path_factory.getbasetemp() / "mrbench-home"
    monkeypatch.setenv("MRBENCH_HOME", str(home))
    monkeypatch.setenv("MRBENCH_CACHE", str(home / "embeddings"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures(
    "one_torch_thread")``): on a small shared machine (2 cores, pytest -n 2) two OpenMP threads per
    worker make a tiny model 10-40x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_png(path: Path, color: tuple[int, int, int], size: int = 16) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format="PNG")


@pytest.fixture
def small_bench(tmp_path: Path):
    """A hand-made two-task benchmark (text→image and image→text) saved to disk, with real PNGs."""
    from mrbench.data.io import save_benchmark
    from mrbench.data.schema import Benchmark, Candidate, Grain, Query, Task

    src = tmp_path / "src"
    colors = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    for name, rgb in colors.items():
        make_png(src / "images" / f"{name}.png", rgb)
    t2i = Task(
        name="t2i",
        query_modality="text",
        candidate_modality="image",
        queries=[
            Query("q1", text="a red square on the left", grains=[Grain("red", "attribute"), Grain("square", "entity"), Grain("on the left", "relation")]),
            Query("q2", text="a blue square", grains=[Grain("blue", "attribute"), Grain("square", "entity")]),
        ],
        candidates=[Candidate(f"c_{n}", image=f"images/{n}.png") for n in colors],
        qrels={"q1": {"c_red": 1}, "q2": {"c_blue": 2, "c_green": 1}},
        query_instruction="Find the image.",
    )
    i2t = Task(
        name="i2t",
        query_modality="image",
        candidate_modality="text",
        queries=[Query("q_red", image="images/red.png", grains=[Grain("red", "attribute"), Grain("square", "entity")])],
        candidates=[Candidate("t1", text="a red square"), Candidate("t2", text="a blue square")],
        qrels={"q_red": {"t1": 1}},
    )
    bench = Benchmark(name="small", version="0.1", tasks=[t2i, i2t], root=src, metadata={"note": "test"})
    return save_benchmark(bench, tmp_path / "bench")


@pytest.fixture
def lb(world: dict, tmp_path: Path) -> Path:
    """A copy of the module's ``world["lb"]`` leaderboard file (its ``world`` fixture builds one), for
    a test to change."""
    import shutil

    p = tmp_path / "lb.json"
    shutil.copy(world["lb"], p)
    return p


@pytest.fixture
def offline_hf_datasets(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """`datasets` offline, with its cache under the session's temporary directory (modules that build
    from Hugging Face datasets use it: ``pytestmark = pytest.mark.usefixtures("offline_hf_datasets")``)."""
    import datasets

    cache = tmp_path_factory.getbasetemp() / "hf-datasets-cache"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)  # read at import time otherwise
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
