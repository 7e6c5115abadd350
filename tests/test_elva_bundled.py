"""The bundled reference encoders: registered, small, loadable right after install, their recorded
MRBench-Synth scores reproduced, and the rebuild command's plumbing (on the tiny benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("open_clip")

import mrbench  # noqa: E402
from elva_baseline.bundled import BUNDLE_DIR, RECIPES_FILE, build_bundled, headline_scores  # noqa: E402

NAMES = ("contrastive-tiny", "elva-tiny")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", NAMES)
def test_bundled_encoder_is_registered_small_and_loads(name: str) -> None:
    d = BUNDLE_DIR / name
    assert (d / "model.safetensors").stat().st_size < 3_000_000  # "a few MB"
    enc = mrbench.get_encoder(name)
    assert enc.meta.name == name and enc.meta.dim == 64 and enc.meta.extra["bundled"]
    assert name in {e.name for e in mrbench.list_encoders()}


def test_recorded_scores_are_what_the_shipped_elva_tiny_scores() -> None:
    """A regression guard for the bundle and the metrics: recipes.json pins the test scores."""
    rec = json.loads((BUNDLE_DIR / RECIPES_FILE).read_text())
    assert rec["encoders"]["elva-tiny"]["test_scores"] == headline_scores(BUNDLE_DIR / "elva-tiny")
    sha = json.loads((BUNDLE_DIR / "elva-tiny" / "config.json").read_text())["weights_sha256"]
    assert rec["encoders"]["elva-tiny"]["weights_sha256"] == sha


def test_build_bundled_plumbing_on_the_tiny_benchmark(tmp_path: Path) -> None:
    payload = build_bundled(tmp_path, warmup=3, rl=2, progress=False, train_benchmark="mrbench-synth-tiny-train",
                            test_benchmark="mrbench-synth-tiny")
    assert set(payload["encoders"]) == set(NAMES)
    for name in NAMES:
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        assert cfg["step"] == (5 if name == "contrastive-tiny" else 2) and "sparse_rows" in cfg
        assert (tmp_path / name / "model.safetensors").stat().st_size < 3_000_000
    assert json.loads((tmp_path / RECIPES_FILE).read_text()) == payload
    assert "rl.steps=2" in payload["encoders"]["elva-tiny"]["command"]
