"""benchmarks/gpu_check.py --quick runs on a CPU-only machine without faiss/datasets/open_clip and
records every section, the CUDA-only parts as skipped (never as errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ("env", "exact_vs_raw", "cpu_gpu_identity", "evaluate", "exact_vs_raw_d128")


def test_gpu_check_quick_cpu(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)  # as on the GPU machine: mrbench from the checkout, not installed
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU path even where a GPU exists
    env["MRBENCH_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(out),
         "--simulate-missing", "faiss,datasets,open_clip", "--budget-s", "120"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "=== exact_vs_raw" in proc.stdout  # progress lines
    data = json.loads(out.read_text())
    assert data["finished"] is True
    secs = data["sections"]
    assert set(SECTIONS) <= set(secs)
    for name in SECTIONS:
        assert secs[name]["status"] == "ok", (name, secs[name].get("error"), secs[name].get("traceback"))
        assert "error" not in secs[name]

    env_s = secs["env"]
    assert env_s["cuda_available"] is False
    assert env_s["mrbench_from_this_checkout"] is True
    assert env_s["faiss_importable"] is False and env_s["datasets_importable"] is False
    assert env_s["faiss_loaded_after_import"] is False

    for name in ("exact_vs_raw", "exact_vs_raw_d128"):
        ex = secs[name]
        assert ex["accepts_torch_tensors"] is False
        summ = ex["summary"]
        assert summ["exact_s"] > 0 and summ["raw_device_s"] > 0 and summ["ratio_exact_over_raw_device"] > 0
        assert ex["exact_result"]["target_in_top_depth"] > 0.9
        assert ex["exact_result"]["top_overlap_with_raw_fp32"] > 0.99
        # the warm-up's top functions by own time: some of the search module's (which ones depends on the load)
        assert "retrieval/search.py" in ex["exact"]["warmup_profile_tottime"]

    ident = secs["cpu_gpu_identity"]
    assert ident["identical"] is True and ident["cuda_compared"] is False
    assert ident["comparisons"]["cpu_small_chunks"]["mismatches"]["total"] == 0
    for part in ("cuda", "cuda_small_chunks"):
        assert ident["comparisons"][part]["status"] == "skipped"
    assert ident["comparisons"]["faiss_cpu"]["status"] == "skipped"  # blocked
    assert ident["reference"]["queries_with_ties"] > 0 and ident["reference"]["top_lists_with_tied_scores"] > 0

    ev = secs["evaluate"]
    assert ev["runs"]["cold"]["device"] == "cpu" and ev["runs"]["warm"]["timings"]["total"] > 0
    for part in ("cpu_vs_gpu", "constant_cpu_vs_gpu"):
        assert ev[part]["status"] == "skipped" and ev[part]["per_query_identical"] is True


def test_gpu_check_cuda_device_without_cuda_is_skipped(tmp_path: Path) -> None:
    """--device cuda on a machine without CUDA: the exact-vs-raw sections are skipped, not crashed."""
    out = tmp_path / "y.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", MRBENCH_HOME=str(tmp_path / "home"))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cuda", "--out", str(out),
         "--sections", "env,exact,exact_d2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    secs = json.loads(out.read_text())["sections"]
    assert secs["env"]["status"] == "ok"
    for name in ("exact_vs_raw", "exact_vs_raw_d128"):
        assert secs[name]["status"] == "skipped" and "CUDA" in secs[name]["reason"]
