"""Terminal tables: number columns never cut a value, -0.000 shows as 0.000, and the comparison's
drop-one-grain distance is the pooled mean over all drops (what the bundled encoders' recipes report)."""

from __future__ import annotations

import io

import pytest


def _render(table, width: int = 80) -> str:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(table)
    return buf.getvalue()


def test_score_column_widens_to_its_longest_value():
    from mrbench.report.tables import new_table, score_column

    t = new_table("t")
    score_column(t, "rank")
    score_column(t, "Δrank")
    t.add_row("1344.7", "-36.55")
    t.add_row("2.0", "0.10")
    out = _render(t)
    assert "1344.7" in out and "-36.55" in out


def test_fmt_negative_zero_and_small_negatives():
    from mrbench.report.tables import _fmt

    assert _fmt(-0.0001) == "0.000"
    assert _fmt(-0.0) == "0.000"
    assert _fmt(-0.001) == "-0.001"
    assert _fmt(-12.04, 1) == "-12.0"
    assert _fmt(None) == "–"


def test_pooled_drop_distance_weights_tasks_by_drops():
    from mrbench.report.tables import pooled_drop_distance

    sens = {"a": {"mask_distance": 0.1, "n": 1}, "b": {"mask_distance": 0.4, "n": 3}}
    assert pooled_drop_distance(sens) == pytest.approx(0.325)
    assert pooled_drop_distance({k: {"mask_distance": v["mask_distance"]} for k, v in sens.items()}) == pytest.approx(0.25)
    assert pooled_drop_distance({}) is None
    assert pooled_drop_distance({"a": {"mask_distance": None, "n": 2}}) is None


def test_comparison_table_drop_distance_is_the_mean_over_all_drops(tmp_path, monkeypatch):
    monkeypatch.setenv("MRBENCH_HOME", str(tmp_path / "home"))
    import mrbench
    from mrbench.report.tables import comparison_table, pooled_drop_distance

    r = mrbench.evaluate("mrbench-synth-tiny", "random", cache=False)
    sens = r.data["scores"]["grain_sensitivity"]
    assert len(sens) >= 2  # several tasks with drops, of different sizes
    pooled = pooled_drop_distance(sens)
    assert pooled == pytest.approx(float(r.sensitivity["mask_distance"].mean()), abs=1e-12)
    assert f"{pooled:.3f}" in _render(comparison_table([r]), width=200)
