"""Approximate search (FAISS IVF-Flat / HNSW-Flat): recall against exact search, parameter
validation, determinism, the GPU fallback, and the ``approx`` option of evaluate and the CLI."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest

from mrbench.errors import MrbenchError, UnknownNameError
from mrbench.metrics.ranking import score_queries
from mrbench.retrieval.approx import (
    ApproxError,
    ApproxResult,
    approx_search,
    check_approx_spec,
    gpu_unavailable,
    recall_against_exact,
    resolve_params,
)
from mrbench.retrieval.search import SearchError, exact_search


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_data(n: int = 2000, q: int = 40, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return unit(rng.standard_normal((q, d))), unit(rng.standard_normal((n, d)))


def clustered_data(n: int = 4000, q: int = 60, d: int = 32, k: int = 40, seed: int = 0):
    """Unit vectors around ``k`` random centres (queries drawn the same way): IVF cells mean something."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((k, d)))
    c = unit(centres[rng.integers(0, k, n)] + 0.35 * rng.standard_normal((n, d)))
    qs = unit(centres[rng.integers(0, k, q)] + 0.35 * rng.standard_normal((q, d)))
    return qs, c


# ------------------------------------------------------------------------------ recall vs exact
def test_exhaustive_ivf_is_exact():
    q, c = random_data()
    rng = np.random.default_rng(1)
    judged = [{int(i): int(g) for i, g in zip(rng.integers(0, len(c), 3), rng.integers(1, 3, 3))} for _ in range(len(q))]
    ex = exact_search(q, c, judged, depth=50, backend="faiss")
    ap = approx_search(q, c, judged=judged, depth=50, index="ivf", params={"nlist": 20, "nprobe": 20})
    assert isinstance(ap, ApproxResult) and ap.backend == "faiss-ivf" and ap.device == "cpu"
    for k in (1, 10, 50):
        assert recall_against_exact(ap, ex, k) == 1.0
    # exhaustive probing + canonical re-scoring: the very same lists, scores and (in-list) ranks
    np.testing.assert_array_equal(ap.topk_indices, ex.topk_indices)
    np.testing.assert_array_equal(ap.topk_scores, ex.topk_scores)
    assert ap.judged_ranks == [{c_: r for c_, r in d.items() if r <= 50} for d in ex.judged_ranks]
    assert ap.judged_scores == ex.judged_scores
    np.testing.assert_array_equal(ap.n_ties, ex.n_ties)
    assert ap.params == {"nlist": 20, "nprobe": 20, "train_size": len(c), "seed": 0, "shortlist": 82}


def test_hnsw_recall_is_high():
    q, c = random_data(n=3000, q=50)
    ex = exact_search(q, c, [{}] * len(q), depth=20, backend="faiss")
    ap = approx_search(q, c, depth=20, index="hnsw")
    assert ap.params["M"] == 32 and ap.params["ef_search"] == 128
    assert recall_against_exact(ap, ex, 10) > 0.9
    assert recall_against_exact(ap, ex, 20) > 0.9
    # scores are canonical: the approximate list's scores are exact scores of its candidates
    np.testing.assert_array_equal(ap.topk_scores[:, 0], ex.topk_scores[:, 0])
    assert (np.diff(ap.topk_scores, axis=1) <= 0).all()


def test_ivf_recall_grows_with_nprobe():
    q, c = clustered_data()
    ex = exact_search(q, c, [{}] * len(q), depth=50, backend="faiss")
    rec = [recall_against_exact(approx_search(q, c, depth=50, params={"nlist": 32, "nprobe": p}), ex, 50)
           for p in (1, 2, 4, 8, 32)]
    assert rec[0] < rec[-1] == 1.0
    assert rec[0] < 0.9  # one cell of 32 misses a good part of the true neighbours
    assert all(b >= a - 0.02 for a, b in itertools.pairwise(rec)), rec  # monotone up to noise


def test_judged_candidate_outside_the_list_counts_as_not_retrieved():
    q, c = clustered_data(n=2000, q=30)
    ap = approx_search(q, c, depth=10, params={"nlist": 32, "nprobe": 1})
    ex = exact_search(q, c, [{}] * len(q), depth=10, backend="faiss")
    # per query, the exact top-1 if the approximate list missed it, else it is in the list
    judged = [{int(ex.topk_indices[i, 0]): 1} for i in range(len(q))]
    ap = approx_search(q, c, judged=judged, depth=10, params={"nlist": 32, "nprobe": 1})
    missed = [i for i in range(len(q)) if int(ex.topk_indices[i, 0]) not in ap.topk_indices[i]]
    assert missed, "the test needs a query whose approximate list misses its true nearest neighbour"
    df = score_queries(ap.judged_ranks, judged, ks=(1, 10))
    for i in range(len(q)):
        cand = int(ex.topk_indices[i, 0])
        assert cand in ap.judged_scores[i]  # scored whether listed or not
        if i in missed:
            assert ap.judged_ranks[i] == {} and ap.n_ties[i] == 0
            assert df["hit@10"].iloc[i] == 0.0 and df["first_rank"].iloc[i] == np.inf
        else:
            r = ap.judged_ranks[i][cand]
            assert int(ap.topk_indices[i, r - 1]) == cand and df["hit@10"].iloc[i] == 1.0


def test_short_lists_are_refilled():
    q, c = clustered_data(n=600, q=20)
    # 64 cells of ~10 vectors, one probe: far fewer than the 132-long shortlist
    ap = approx_search(q, c, depth=100, params={"nlist": 64, "nprobe": 1})
    assert ap.n_refilled == len(q)
    assert ap.topk_indices.shape == (len(q), 100) and (ap.topk_indices >= 0).all()
    assert all(len(set(row)) == 100 for row in ap.topk_indices.tolist())
    ap = approx_search(q, c, depth=100, index="hnsw", params={"M": 4, "ef_search": 1})
    assert ap.topk_indices.shape == (len(q), 100) and (ap.topk_indices >= 0).all()


def test_recall_against_exact_definition():
    a = np.array([[1, 2, 3], [4, 5, 6]])
    e = np.array([[3, 2, 9], [7, 8, 4]])
    assert recall_against_exact(a, e, 1) == 0.0
    assert recall_against_exact(a, e, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert recall_against_exact(a, e, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    for bad in (0, 4, True, 2.0):
        with pytest.raises(ApproxError, match="k="):
            recall_against_exact(a, e, bad)
    with pytest.raises(ApproxError, match="queries"):
        recall_against_exact(a, e[:1], 1)


def test_ties_at_the_cutoff_follow_the_pessimistic_order():
    # four candidates with the same score for every query: the exact order is grade, then row
    q = np.ones((1, 4), np.float32)
    c = np.array([[1, 0, 0, 0]] * 4 + [[0.1, 0, 0, 0]] * 4, np.float32)
    judged = [{0: 1}]  # the relevant one goes last in its tie group
    ex = exact_search(q, c, judged, depth=2, backend="faiss")
    ap = approx_search(q, c, judged=judged, depth=2, params={"nlist": 1, "nprobe": 1})
    assert ex.topk_indices.tolist() == ap.topk_indices.tolist() == [[1, 2]]
    assert recall_against_exact(ap, ex, 2) == 1.0
    assert recall_against_exact(np.array([[1, 3]]), ex, 2) == 0.5  # same score as row 2, still a miss


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "index, params, words",
    [
        ("ivf", {"nlist": 0}, ["nlist=0", "1..2000"]),
        ("ivf", {"nlist": 5000}, ["nlist=5000", "1..2000"]),
        ("ivf", {"nlist": 16.0}, ["nlist=16.0", "integer"]),
        ("ivf", {"nlist": True}, ["nlist=True", "integer"]),
        ("ivf", {"nlist": 16, "nprobe": 17}, ["nprobe=17", "1..16"]),
        ("ivf", {"nprobe": 0}, ["nprobe=0", ">= 1"]),
        ("ivf", {"nlist": 16, "train_size": 8}, ["train_size=8", "16"]),
        ("ivf", {"nlist": 16, "train_size": 3000}, ["train_size=3000", "16..2000"]),
        ("ivf", {"M": 16}, ["'M'", "hnsw"]),
        ("ivf", {"nprobes": 4}, ["'nprobes'", "nprobe"]),
        ("hnsw", {"M": 2}, ["M=2", "4..128"]),
        ("hnsw", {"M": 256}, ["M=256", "4..128"]),
        ("hnsw", {"M": 16, "ef_construction": 8}, ["ef_construction=8", "16..65536"]),
        ("hnsw", {"ef_construction": 10}, ["ef_construction=10", "32..65536"]),
        ("hnsw", {"ef_search": 0}, ["ef_search=0", "1..65536"]),
        ("hnsw", {"ef_search": 10**6}, ["ef_search=1000000", "1..65536"]),
    ],
)
def test_parameter_out_of_range_is_one_line(index, params, words):
    q, c = random_data(n=2000, q=2)
    with pytest.raises(ApproxError) as ei:
        approx_search(q, c, depth=10, index=index, params=params)
    msg = str(ei.value)
    assert "\n" not in msg and isinstance(ei.value, (SearchError, MrbenchError))
    for w in words:
        assert w in msg, msg


def test_options_are_validated():
    q, c = random_data(n=100, q=2)
    with pytest.raises(UnknownNameError, match="did you mean 'hnsw'"):
        approx_search(q, c, index="hnsv")
    with pytest.raises(ApproxError, match="seed=-1"):
        approx_search(q, c, seed=-1)
    with pytest.raises(ApproxError, match="'tpu'"):
        approx_search(q, c, device="tpu")
    with pytest.raises(ApproxError, match="own argument"):
        approx_search(q, c, params={"seed": 1})
    with pytest.raises(SearchError, match="dimension"):
        approx_search(q[:, :8].copy(), c)
    # the pool-independent checks need no data (evaluate runs them before encoding)
    assert check_approx_spec({"index": "hnsw", "M": 8}) == {"index": "hnsw", "params": {"M": 8}, "seed": 0, "device": "cpu"}
    with pytest.raises(ApproxError, match="nprobe=9 .*1..8"):
        check_approx_spec({"nlist": 8, "nprobe": 9})
    assert resolve_params("ivf", {}, 200_000) == {"nlist": 1789, "nprobe": 111, "train_size": 200_000}
    assert resolve_params("ivf", {}, 20) == {"nlist": 1, "nprobe": 1, "train_size": 20}


# ------------------------------------------------------------------------------ determinism, device
@pytest.mark.parametrize("index, params", [("ivf", {"nlist": 32, "nprobe": 2, "train_size": 1000}), ("hnsw", {"M": 8, "ef_search": 16})])
def test_same_seed_same_results(index, params):
    q, c = clustered_data(n=3000, q=30)
    a = approx_search(q, c, depth=20, index=index, params=params, seed=7)
    b = approx_search(q, c, depth=20, index=index, params=params, seed=7)
    np.testing.assert_array_equal(a.topk_indices, b.topk_indices)
    np.testing.assert_array_equal(a.topk_scores, b.topk_scores)


def test_cuda_without_gpu_falls_back_with_one_warning(caplog):
    if gpu_unavailable("ivf") is None:
        pytest.skip("faiss-gpu and a GPU are present: nothing to fall back from")
    q, c = random_data(n=500, q=5)
    for index in ("ivf", "hnsw"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mrbench"):
            res = approx_search(q, c, depth=10, index=index, device="cuda")
        assert res.device == "cpu"
        warns = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warns) == 1, [r.getMessage() for r in warns]
        msg = warns[0].getMessage()
        assert "cuda" in msg and "CPU" in msg and "\n" not in msg
        ref = approx_search(q, c, depth=10, index=index)
        np.testing.assert_array_equal(res.topk_indices, ref.topk_indices)


# ------------------------------------------------------------------------------ evaluate and the CLI
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mrbench.builders.synth import build_synth

    root = tmp_path_factory.mktemp("approx") / "b"
    build_synth(root, size=8, image_size=32)
    return root


def test_evaluate_with_exhaustive_ivf_matches_exact(synth, tmp_path, caplog):
    import mrbench

    exact = mrbench.evaluate(synth, "random", cache=False, grain_sensitivity=False)
    assert "approx" not in exact.data["settings"] and "approx_recall" not in exact.scores
    out = tmp_path / "res"
    with caplog.at_level(logging.WARNING, logger="mrbench"):
        res = mrbench.evaluate(synth, "random", cache=False, grain_sensitivity=False, output=out,
                               approx={"index": "ivf", "device": "cuda"})
    if gpu_unavailable("ivf") is not None:  # one warning for the whole run, not one per task
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    data = json.loads((out / "results.json").read_text())
    st = data["settings"]["approx"]
    assert st["index"] == "ivf" and st["device_requested"] == "cuda" and set(st["tasks"]) == set(data["settings"]["tasks"])
    for task in data["settings"]["tasks"]:
        # pools of ~40 candidates: one cell, searched exhaustively, so the approximate lists are exact
        assert st["tasks"][task]["nlist"] == 1 and st["tasks"][task]["nprobe"] == 1
        assert data["scores"]["approx_recall"][task] == {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0, "recall@100": 1.0}
    assert data["scores"]["tasks"] == exact.scores["tasks"] == res.scores["tasks"]
    from mrbench.leaderboard.verify import verify_results

    assert verify_results(out).ok


def test_evaluate_with_approx_and_shallow_depth(synth, tmp_path):
    import mrbench

    out = tmp_path / "res"
    res = mrbench.evaluate(synth, "random", cache=False, depth=10, output=out,
                           approx={"index": "ivf", "nlist": 4, "nprobe": 1, "seed": 3})
    data = json.loads((out / "results.json").read_text())
    rec = data["scores"]["approx_recall"]
    assert set(rec) == set(data["settings"]["tasks"])
    for v in rec.values():
        assert set(v) == {"recall@1", "recall@5", "recall@10"} and all(0.0 <= x <= 1.0 for x in v.values())
    assert data["settings"]["approx"]["params"] == {"nlist": 4, "nprobe": 1} and data["settings"]["approx"]["seed"] == 3
    for s in data["scores"]["tasks"].values():
        assert 0.0 <= s["hit@10"] <= 1.0 and s["n_queries"] > 0
    # run files: depth lines per query, ranks 1..10
    for rel in data["files"]["runs"].values():
        lines = (out / rel).read_text().splitlines()
        assert lines and all(1 <= int(line.split()[3]) <= 10 for line in lines)
    assert "grain_sensitivity" in res.scores
    with pytest.raises(ApproxError, match="task .*nlist=500"):
        mrbench.evaluate(synth, "random", cache=False, approx={"index": "ivf", "nlist": 500})


def test_cli_approx(synth, tmp_path):
    from typer.testing import CliRunner

    from mrbench.cli.app import app

    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(app, ["evaluate", "-b", str(synth), "-e", "random", "--no-cache", "-q", "--no-sensitivity",
                            "--approx", '{"index":"hnsw"}', "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "approximate search (hnsw): recall@10" in r.stdout
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["approx"]["index"] == "hnsw"
    assert all(v["recall@10"] > 0.9 for v in data["scores"]["approx_recall"].values())
    for arg, words in [('{"index":"hnsw","M":1}', ["M=1", "4..128"]),
                       ('{"index":"hnsw","ef_search":0}', ["ef_search=0", "1..65536"]),
                       ('{"index":"flat"}', ["'flat'", "ivf, hnsw"]),
                       ('{"index":"ivf", "nlist": 1000}', ["nlist=1000", "1..", "task"]),
                       ('{"index":', ["not valid JSON"]),
                       ('[1]', ["JSON object"])]:
        r = runner.invoke(app, ["evaluate", "-b", str(synth), "-e", "random", "--no-cache", "-q", "--approx", arg])
        assert r.exit_code == 2, r.output
        err = r.stderr.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output, err
        for w in words:
            assert w in err, err


def test_build_once_search_many():
    from mrbench.retrieval.approx import build_index

    q, c = clustered_data(n=3000, q=30)
    ix = build_index(c, params={"nlist": 32}, seed=1)
    assert ix.params == {"nlist": 32, "nprobe": 8, "train_size": 3000, "seed": 1} and ix.build_seconds > 0
    for p in (1, 4, 32):
        a = ix.search(q, depth=20, nprobe=p)
        b = approx_search(q, c, depth=20, params={"nlist": 32, "nprobe": p}, seed=1)
        np.testing.assert_array_equal(a.topk_indices, b.topk_indices)
        assert a.params["nprobe"] == p
    with pytest.raises(ApproxError, match="nprobe=33 .*1..32"):
        ix.search(q, nprobe=33)
    with pytest.raises(ApproxError, match="HNSW"):
        ix.search(q, ef_search=10)
    h = build_index(c, index="hnsw", params={"M": 8})
    assert h.search(q, depth=20, ef_search=200).params["ef_search"] == 200


def test_parameter_errors_say_what_is_wrong():
    """A wrong type is called a wrong type, not 'out of range'; train_size's lower bound reads as a sentence."""
    with pytest.raises(ApproxError) as ei:
        check_approx_spec({"nlist": 1, "nprobe": 1, "train_size": 0})
    msg = str(ei.value)
    assert msg.endswith("train_size=0 is out of range: must be an integer >= 1 (at least nlist=1)"), msg
    for value, kind in [(2.0, "float"), ("4", "str"), (None, "NoneType")]:
        with pytest.raises(ApproxError) as ei:
            check_approx_spec({"nlist": value})
        msg = str(ei.value)
        assert f"nlist={value!r} has the wrong type ({kind}): must be an integer >= 1" in msg, msg
        assert "out of range" not in msg and "\n" not in msg
    with pytest.raises(ApproxError, match=r"nlist=2.0 has the wrong type \(float\): must be an integer in 1..44"):
        resolve_params("ivf", {"nlist": 2.0}, 44)


def test_cli_approx_help_matches_the_defaults_and_empty_value_is_refused(synth):
    from typer.testing import CliRunner

    from mrbench.cli.app import app

    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "1000"})
    assert r.exit_code == 0
    text = " ".join(r.stdout.replace("│", " ").split())
    for words in ("default round(4*sqrt(N)), at most N//39, at least 1", "default max(8, nlist//16), at most nlist",
                  "default 256*nlist, at most N", "default max(80, M)"):
        assert words in text, words
    # what the help says is what resolve_params does
    n = 1000
    assert resolve_params("ivf", {}, n)["nlist"] == min(n // 39, round(4 * n ** 0.5)) == 25
    assert resolve_params("ivf", {"nlist": 4}, n)["nprobe"] == 4  # max(8, 4//16) capped at nlist
    assert resolve_params("ivf", {"nlist": 8}, n)["train_size"] == n  # 256*8 capped at N
    assert resolve_params("hnsw", {"M": 100}, n)["ef_construction"] == 100
    for arg in ("", " "):
        r = runner.invoke(app, ["evaluate", "-b", str(synth), "-e", "random", "--no-cache", "-q", "--approx", arg])
        assert r.exit_code != 0, r.output
        err = r.stderr.strip()
        assert err.startswith("error: --approx") and "empty" in err and "\n" not in err, err


def test_pool_size_bounds_are_checked_for_every_task_before_the_encoder_is_built(synth, tmp_path, monkeypatch):
    """nlist=46 fits it2i's 48 candidates but not t2i's 44: refused naming t2i, its pool size and the
    parameter before any encoder is built (it was refused after it2i had been encoded and searched)."""
    from typer.testing import CliRunner

    import mrbench.pipeline as pl
    from mrbench.cli.app import app

    def no_encoder(*a, **k):
        raise AssertionError("the encoder was built before the --approx pool sizes were checked")

    monkeypatch.setattr(pl, "resolve_encoder", no_encoder)
    spec = {"index": "ivf", "nlist": 46, "nprobe": 2}
    with pytest.raises(ApproxError) as ei:
        pl.evaluate(synth, "random", tasks=["it2i", "t2i"], cache=False, grain_sensitivity=False, approx=spec)
    msg = str(ei.value)
    assert msg.startswith("task t2i (44 candidates): ") and "nlist=46" in msg and "1..44" in msg and "\n" not in msg, msg
    with pytest.raises(ApproxError, match=r"task t2i \(44 candidates\): .*train_size=45 .*2..44"):
        pl.evaluate(synth, "random", tasks=["it2i", "t2i"], approx={"nlist": 2, "train_size": 45})
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["evaluate", "-b", str(synth), "-e", "random", "--tasks", "it2i,t2i", "-q", "--no-cache",
                                 "--no-sensitivity", "--approx", json.dumps(spec), "-o", str(out)])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: task t2i (44 candidates): ") and "nlist=46" in err and "\n" not in err, err
    assert not out.exists()
