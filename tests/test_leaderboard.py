"""The leaderboard: verification from run files, submission rules, the file's integrity, fuzzing, concurrency."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mrbench.errors import MrbenchError
from mrbench.leaderboard.store import (
    add_benchmark,
    check_leaderboard,
    load_leaderboard,
    short_fingerprint,
    submit,
)
from mrbench.leaderboard.verify import SubmissionError, load_results, verify_results

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small MRBench-Synth (12 queries per task), results of `random` and `constant` on it, and a
    leaderboard that knows the benchmark."""
    from mrbench import evaluate
    from mrbench.builders.synth import build_synth

    root = tmp_path_factory.mktemp("lbworld")
    bench = build_synth(root / "bench", size=12, image_size=32)
    out = {"bench": root / "bench", "lb": root / "lb.json"}
    for enc in ("random", "constant"):
        evaluate(bench, enc, output=root / enc, cache=False, grain_sensitivity=enc == "random")
        out[enc] = root / enc
    add_benchmark(out["lb"], out["bench"])
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_results(d: Path, fn) -> None:
    p = d / "results.json"
    data = json.loads(p.read_text())
    fn(data)
    p.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------ verify
@pytest.mark.parametrize("enc", ["random", "constant"])
def test_recomputation_matches_evaluate(world: dict[str, Path], enc: str) -> None:
    """`constant` ties every candidate: pessimistic ranks put the relevant ones last, and the run
    files must say the same."""
    v = verify_results(world[enc], benchmark=world["bench"])
    assert v.ok, v.mismatches[:3]
    assert {"hit@1", "hit@5", "hit@10", "recall@10", "mrr@10", "ndcg@10", "n_queries"} <= set(v.verified_metrics)
    assert "mean_rank" not in v.verified_metrics and "ties" not in v.verified_metrics
    assert v.compared > 100 and set(v.run_sha256) == {"t2i", "i2t", "i2i", "it2i"}


def test_tampered_score_is_named(world: dict[str, Path], tmp_path: Path, lb: Path) -> None:
    d = _copy(world["random"], tmp_path / "r")
    _edit_results(d, lambda x: x["scores"]["grain_count"]["t2i"]["2"].__setitem__("hit@5", 0.987))
    v = verify_results(d, benchmark=world["bench"])
    assert not v.ok and len(v.mismatches) == 1
    assert v.mismatches[0].startswith("scores.grain_count.t2i.2.hit@5: submitted 0.987, recomputed")
    before = lb.read_bytes()
    with pytest.raises(SubmissionError, match=r"rejected.*scores\.grain_count\.t2i\.2\.hit@5: submitted 0\.987"):
        submit(d, lb, benchmark=world["bench"])
    assert lb.read_bytes() == before
    res = CliRunner().invoke(_app(), ["verify", str(d), "-b", str(world["bench"])])
    assert res.exit_code == 1 and "MISMATCH: 1 of" in res.output and "grain_count.t2i.2.hit@5" in res.output


def test_missing_and_extra_groups(world: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(world["random"], tmp_path / "r")
    _edit_results(d, lambda x: (x["scores"]["grain_type"]["i2i"].pop(next(iter(x["scores"]["grain_type"]["i2i"]))),
                                x["scores"]["tasks"]["t2i"].pop("ndcg@5"),
                                x["scores"]["grain_count"]["all"].__setitem__("9", {"n_queries": 1})))
    msgs = verify_results(d, benchmark=world["bench"]).mismatches
    assert any(m.startswith("scores.grain_type.i2i.") and "missing from the submission" in m for m in msgs)
    assert any(m.startswith("scores.tasks.t2i.ndcg@5: missing") for m in msgs)
    assert any(m.startswith("scores.grain_count.all.9: not a group") for m in msgs)


def _run_lines(d: Path, task: str = "t2i") -> list[str]:
    return (d / "runs" / f"{task}.trec").read_text().splitlines()


def _set_run(d: Path, lines: list[str], task: str = "t2i") -> None:
    (d / "runs" / f"{task}.trec").write_text("\n".join(lines) + "\n")


def _mut_unknown_id(lines: list[str]) -> list[str]:
    f = lines[3].split()
    f[2] = "no-such-candidate"
    return [*lines[:3], " ".join(f), *lines[4:]]


def _mut_drop_query(lines: list[str]) -> list[str]:
    first = lines[0].split()[0]
    return [x for x in lines if x.split()[0] != first]


def _mut_gap(lines: list[str]) -> list[str]:
    return lines[:5] + lines[6:]


def _mut_rising(lines: list[str]) -> list[str]:
    a, b = lines[0].split(), lines[1].split()
    a[4], b[4] = "0.1", "0.9"
    return [" ".join(a), " ".join(b), *lines[2:]]


@pytest.mark.parametrize("mutate, match", [
    (lambda ls: [*ls, ls[0]], "duplicate"),
    (_mut_unknown_id, "unknown candidate id 'no-such-candidate'"),
    (_mut_drop_query, r"has 11 of the 12 queries of task 't2i' \(first missing"),
    (_mut_gap, "expected exactly 1.."),
    (_mut_rising, "ranks must follow scores"),
    (lambda ls: [ls[0].replace(ls[0].split()[4], "nan"), *ls[1:]], "not finite"),
    (lambda ls: [ls[0] + " extra", *ls[1:]], "expected 6 fields"),
])
def test_bad_run_files_are_rejected(world: dict[str, Path], tmp_path: Path, lb: Path, mutate, match: str) -> None:
    d = _copy(world["random"], tmp_path / "r")
    _set_run(d, mutate(_run_lines(d)))
    before = lb.read_bytes()
    with pytest.raises(SubmissionError, match=match) as e:
        submit(d, lb, benchmark=world["bench"])
    assert "t2i.trec" in str(e.value) and "\n" not in str(e.value)
    assert lb.read_bytes() == before


def test_missing_run_file_and_escaping_path(world: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(world["random"], tmp_path / "r")
    (d / "runs" / "i2t.trec").unlink()
    with pytest.raises(SubmissionError, match=r"i2t.trec: the run file of task 'i2t' \(files.runs.i2t\) is missing; "
                       r"use the whole directory mrbench evaluate wrote \(to submit scores without run files: "
                       r"mrbench submit --self-reported\)$"):
        verify_results(d, benchmark=world["bench"])
    _edit_results(d, lambda x: x["files"]["runs"].__setitem__("i2t", "../../etc/passwd"))
    with pytest.raises(SubmissionError, match="must be a path inside the results directory"):
        verify_results(d, benchmark=world["bench"])
    _edit_results(d, lambda x: x["files"]["runs"].pop("i2t"))
    with pytest.raises(SubmissionError, match=r"no run file for task 'i2t'.*\(to submit scores without run files: "
                       r"mrbench submit --self-reported\)$") as ei:
        verify_results(d, benchmark=world["bench"])
    assert "or use --self-reported" not in str(ei.value)  # (verify has no such option)



def test_verify_without_run_files_says_how_to_submit_without_them(world: dict[str, Path], tmp_path: Path) -> None:
    """`mrbench verify` suggested '--self-reported', an option only `submit` has; its error exits 2."""
    d = _copy(world["random"], tmp_path / "r")
    shutil.rmtree(d / "runs")
    r = CliRunner().invoke(_app(), ["verify", str(d), "-b", str(world["bench"])])
    err = r.stderr.strip()
    assert r.exit_code == 2 and err.startswith("error: ") and "\n" not in err, r.output
    assert "is missing" in err and "to submit scores without run files: mrbench submit --self-reported" in err


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"schema_version": NaN}', "NaN is not allowed"),
    ("[]", r"\(top level\): \[\] is not of type 'object'"),
])
def test_results_not_json(world: dict[str, Path], tmp_path: Path, text: str, match: str) -> None:
    d = _copy(world["random"], tmp_path / "r")
    (d / "results.json").write_text(text)
    with pytest.raises(SubmissionError, match=match):
        load_results(d)


@pytest.mark.parametrize("edit, match", [
    (lambda x: x.pop("scores"), "'scores' is a required property"),
    (lambda x: x["scores"]["macro"].__setitem__("hit@5", 1.5), r"scores\.macro\.hit@5: 1\.5 is greater than the maximum of 1"),
    (lambda x: x["scores"]["tasks"]["t2i"].__setitem__("recall@1", -0.1), r"scores\.tasks\.t2i\.recall@1: -0\.1 is less than"),
    (lambda x: x["settings"].__setitem__("depth", "100"), r"settings\.depth: '100' is not of type 'integer'"),
    (lambda x: x["encoder"].pop("revision"), r"encoder: 'revision' is a required property"),
    (lambda x: x["scores"]["tasks"].pop("i2i"), "scores.tasks has no entry for task 'i2i'"),
])
def test_results_schema_errors_name_the_field(world: dict[str, Path], tmp_path: Path, edit, match: str) -> None:
    d = _copy(world["random"], tmp_path / "r")
    _edit_results(d, edit)
    with pytest.raises(SubmissionError, match=match) as e:
        load_results(d)
    assert str(d / "results.json") in str(e.value)


# ------------------------------------------------------------------------------------------ submit
def test_submit_duplicate_replace_and_self_reported(world: dict[str, Path], lb: Path) -> None:
    out = submit(world["random"], lb, benchmark=world["bench"], training="zero-shot", parameters=0, command="mrbench evaluate -e random")
    e = out.entry
    assert e["status"] == "verified" and not out.replaced and e["encoder"]["training"] == "zero-shot"
    assert e["id"] == f"random@sha256-normal-v1/mrbench-synth@{short_fingerprint(e['benchmark']['fingerprint'])}"
    assert e["verified_metrics"] == out.verification.verified_metrics and len(e["run_sha256"]) == 4
    before = lb.read_bytes()
    with pytest.raises(SubmissionError, match="already exists; pass --replace"):
        submit(world["random"], lb, benchmark=world["bench"])
    assert lb.read_bytes() == before
    again = submit(world["random"], lb, benchmark=world["bench"], replace=True)
    assert again.replaced and len(load_leaderboard(lb)["entries"]) == 1
    sr = submit(world["constant"], lb, self_reported=True)
    assert sr.entry["status"] == "self-reported" and sr.verification is None and sr.entry["verified_metrics"] == []
    assert [x["encoder"]["name"] for x in load_leaderboard(lb)["entries"]] == ["random", "constant"]


def test_unknown_benchmark_fingerprint(world: dict[str, Path], tmp_path: Path, lb: Path) -> None:
    d = _copy(world["random"], tmp_path / "r")
    _edit_results(d, lambda x: x["benchmark"].__setitem__("fingerprint", "sha256:" + "0" * 64))
    with pytest.raises(SubmissionError, match="fingerprint sha256:0+ is not one this leaderboard knows"):
        submit(d, lb)


def test_wrong_benchmark_is_refused(world: dict[str, Path], tmp_path: Path) -> None:
    from mrbench.builders.synth import build_synth

    other = build_synth(tmp_path / "other", size=8, image_size=32, seed=3)
    with pytest.raises(SubmissionError, match=f"but {other.root} has"):
        verify_results(world["random"], benchmark=other.root)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["entries"][0]["scores"]["macro"].__setitem__("hit@5", "high"), r"entries\.0\.scores\.macro\.hit@5: 'high' is not of type"),
    (lambda d: d["entries"].append(dict(d["entries"][0])), "appears twice"),
    (lambda d: d["entries"][0].__setitem__("id", "x@y/z"), "should be"),
    (lambda d: d["benchmarks"].clear(), "is not in benchmarks"),
    (lambda d: d["entries"][0].__setitem__("status", "trusted"), r"entries\.0\.status: 'trusted' is not one of"),
    (lambda d: d.__setitem__("extra", 1), "Additional properties are not allowed"),
    (lambda d: d["entries"][0]["scores"]["macro"].pop("hit@5"),
     r"entries\.0 \(random@.*\): scores\.macro\.hit@5 is missing \(the score the leaderboard ranks by\)"),
    (lambda d: d["entries"][0]["scores"]["tasks"]["i2t"].pop("mrr@10"),
     r"entries\.0 \(random@.*\): scores\.tasks\.i2t\.mrr@10 is missing \(listed in verified_metrics\)"),
])
def test_hand_edited_leaderboard_is_never_overwritten(world: dict[str, Path], lb: Path, edit, match: str) -> None:
    submit(world["random"], lb, benchmark=world["bench"])
    doc = json.loads(lb.read_text())
    edit(doc)
    lb.write_text(json.dumps(doc, indent=1))
    before = lb.read_bytes()
    with pytest.raises(SubmissionError, match=match) as e:
        submit(world["constant"], lb, benchmark=world["bench"])
    assert "was not changed" in str(e.value) or "remove" in str(e.value) or "should be" in str(e.value)
    assert lb.read_bytes() == before


def test_entry_without_its_headline_score_is_refused(world: dict[str, Path], lb: Path) -> None:
    """A verified entry whose scores.macro lost hit@5 fails to load (show: one line), and --replace of the
    same results does not write over the broken file."""
    doc = json.loads((REPO / "leaderboard" / "leaderboard.json").read_text())
    check_leaderboard(doc, "repo")  # the committed leaderboard has every required score
    doc["entries"][2]["scores"]["macro"].pop("hit@5")
    gap = lb.parent / "gap.json"
    gap.write_text(json.dumps(doc, indent=2))
    r = CliRunner().invoke(_app(), ["leaderboard", "show", "-l", str(gap)])
    assert r.exit_code == 2 and r.output == (
        f"error: {gap}: entries.2 ({doc['entries'][2]['id']}): scores.macro.hit@5 is missing (the score the leaderboard "
        "ranks by); restore it (e.g. from git), or remove the entry and re-submit its results\n")
    submit(world["random"], lb, benchmark=world["bench"])
    doc = json.loads(lb.read_text())
    doc["entries"][0]["scores"]["macro"].pop("hit@5")
    lb.write_text(json.dumps(doc, indent=1))
    before = lb.read_bytes()
    with pytest.raises(SubmissionError, match=r"scores\.macro\.hit@5 is missing.*re-submit"):
        submit(world["random"], lb, benchmark=world["bench"], replace=True)
    assert lb.read_bytes() == before


def test_results_without_the_headline_score_are_refused(world: dict[str, Path], tmp_path: Path, lb: Path) -> None:
    d = _copy(world["constant"], tmp_path / "c")
    _edit_results(d, lambda data: data["scores"]["tasks"]["t2i"].pop("hit@5"))
    before = lb.read_bytes()
    with pytest.raises(SubmissionError, match=r"results\.json: scores\.tasks\.t2i\.hit@5 is missing .*5 among its --k"):
        submit(d, lb, self_reported=True)
    assert lb.read_bytes() == before


def test_leaderboard_not_json_and_missing(tmp_path: Path, world: dict[str, Path]) -> None:
    bad = tmp_path / "lb.json"
    bad.write_text('{"schema_version": 1, "benchmarks": [], "entries": [}')
    with pytest.raises(SubmissionError, match="lb.json: the leaderboard is not valid JSON"):
        submit(world["random"], bad)
    with pytest.raises(SubmissionError, match="no leaderboard file.*add-benchmark"):
        load_leaderboard(tmp_path / "nope.json")


def test_schema_files_in_repo_match_the_package() -> None:
    for name in ("leaderboard.schema.json", "results.schema.json"):
        assert (REPO / "leaderboard" / name).read_bytes() == (REPO / "mrbench" / "leaderboard" / name).read_bytes()


def test_cli_submit_verify_show(world: dict[str, Path], lb: Path) -> None:
    r = CliRunner().invoke(_app(), ["verify", str(world["random"]), "--benchmark", str(world["bench"])])
    assert r.exit_code == 0 and r.output.startswith("ok: ") and "hit@5" in r.output
    r = CliRunner().invoke(_app(), ["submit", str(world["random"]), "-l", str(lb), "-b", str(world["bench"]),
                                    "--training", "zero-shot", "--parameters", "0"])
    assert r.exit_code == 0 and r.output.startswith("added random@sha256-normal-v1/") and "verified" in r.output
    r = CliRunner().invoke(_app(), ["submit", str(world["random"]), "-l", str(lb), "-b", str(world["bench"])])
    assert r.exit_code != 0 and "--replace" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(_app(), ["submit", str(world["random"]), "-l", str(lb), "--training", "maybe"])
    assert r.exit_code != 0 and "--training 'maybe'" in r.output


def _app():
    from mrbench.cli.app import app

    return app


# ------------------------------------------------------------------------------------------ fuzz
_REQUIRED = [("schema_version",), ("benchmark",), ("benchmark", "fingerprint"), ("encoder", "name"), ("settings", "ks"),
             ("settings", "depth"), ("settings", "tasks"), ("scores",), ("scores", "macro"), ("scores", "tasks"),
             ("scores", "grain_count"), ("files",), ("mrbench_version",), ("created",)]
_BAD_VALUES = st.one_of(st.none(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                        st.floats(min_value=1.0001, max_value=1e9), st.floats(max_value=-1e-6, min_value=-1e9), st.booleans())


def _verified_paths(data: dict[str, Any]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [("macro", m) for m in data["scores"]["macro"] if m.startswith(("hit@", "ndcg@", "mrr@", "recall@"))]
    for t, d in data["scores"]["tasks"].items():
        out += [("tasks", t, m) for m in d if m.startswith(("hit@", "mrr@"))]
    for t, d in data["scores"]["grain_count"].items():
        for g, mm in d.items():
            out += [("grain_count", t, g, m) for m in mm if m.startswith("hit@")]
    return out


@st.composite
def _malformed(draw, base: dict[str, Any], runs: dict[str, list[str]]) -> tuple[str | None, dict[str, list[str]]]:
    """A submission that must be rejected: (results.json text, run files)."""
    data = json.loads(json.dumps(base))
    runs = {k: list(v) for k, v in runs.items()}
    kind = draw(st.sampled_from(["delete", "score", "bad_value", "truncate", "fingerprint", "depth", "run_line",
                                 "run_dup", "run_id", "run_rank", "run_score"]))
    if kind == "delete":
        path = draw(st.sampled_from(_REQUIRED))
        node = data
        for k in path[:-1]:
            node = node[k]
        node.pop(path[-1])
    elif kind in ("score", "bad_value"):
        path = draw(st.sampled_from(_verified_paths(data)))
        node = data["scores"]
        for k in path[:-1]:
            node = node[k]
        old = node[path[-1]]
        if kind == "score":
            new = draw(st.floats(min_value=0, max_value=1).filter(lambda v: old is None or abs(v - old) > 1e-6))
        else:
            new = draw(_BAD_VALUES.filter(lambda v: v is not None or old is not None))
        node[path[-1]] = new
    elif kind == "truncate":
        text = json.dumps(data, indent=2).rstrip()
        return text[: draw(st.integers(0, len(text) - 1))], runs
    elif kind == "fingerprint":
        data["benchmark"]["fingerprint"] = "sha256:" + draw(st.text("0123456789abcdef", min_size=64, max_size=64))
    elif kind == "depth":
        data["settings"]["depth"] = draw(st.one_of(st.integers(max_value=0), st.just("10"), st.none()))
    else:
        task = draw(st.sampled_from(sorted(runs)))
        lines = runs[task]
        i = draw(st.integers(0, len(lines) - 1))
        f = lines[i].split()
        if kind == "run_line":
            lines.pop(i)
        elif kind == "run_dup":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif kind == "run_id":
            f[draw(st.sampled_from([0, 2]))] = draw(st.sampled_from(["ghost", "q-999", "c-999"]))
            lines[i] = " ".join(f)
        elif kind == "run_rank":
            f[3] = draw(st.sampled_from(["0", "-1", "x", "1.5", str(10_000)]))
            lines[i] = " ".join(f)
        else:
            f[4] = draw(st.sampled_from(["nan", "inf", "abc", ""]))
            lines[i] = " ".join(x for x in f if x)
    return json.dumps(data), runs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_submissions_are_rejected_and_leave_the_file_alone(world: dict[str, Path], tmp_path_factory, data) -> None:
    base_dir = world["random"]
    base = json.loads((base_dir / "results.json").read_text())
    runs = {t: (base_dir / "runs" / f"{t}.trec").read_text().splitlines() for t in base["files"]["runs"]}
    text, new_runs = data.draw(_malformed(base, runs))
    d = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(base_dir, d / "r")
    (d / "r" / "results.json").write_text(text)
    for t, lines in new_runs.items():
        (d / "r" / "runs" / f"{t}.trec").write_text("\n".join(lines) + "\n")
    lbp = d / "lb.json"
    shutil.copy(world["lb"], lbp)
    before = lbp.read_bytes()
    with pytest.raises(MrbenchError) as e:
        submit(d / "r", lbp, benchmark=world["bench"])
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    assert lbp.read_bytes() == before
    check_leaderboard(json.loads(lbp.read_text()), "fuzz")


# ------------------------------------------------------------------------------------------ concurrency
def _submit_one(args: tuple[str, str, str, Any]) -> str:
    result_dir, lb_path, bench, barrier = args
    barrier.wait()
    return submit(result_dir, lb_path, benchmark=bench).entry["id"]


def test_concurrent_submissions_lose_nothing(world: dict[str, Path], tmp_path: Path, lb: Path) -> None:
    """20 processes submit 20 different entries at once: all 20 end up in a valid file."""
    dirs = []
    for i in range(20):
        d = _copy(world["random"], tmp_path / f"r{i}")
        _edit_results(d, lambda x, i=i: x["encoder"].__setitem__("revision", f"rev-{i:02d}"))
        dirs.append(d)
    ctx = mp.get_context("fork")
    barrier = ctx.Manager().Barrier(20)
    with ctx.Pool(20) as pool:
        ids = pool.map(_submit_one, [(str(d), str(lb), str(world["bench"]), barrier) for d in dirs])
    doc = load_leaderboard(lb)
    assert sorted(e["id"] for e in doc["entries"]) == sorted(ids) and len(ids) == 20
    assert not list(lb.parent.glob(".lb.json.*.tmp"))


def test_cli_leaderboard_show_render_add(world: dict[str, Path], tmp_path: Path) -> None:
    lbp = tmp_path / "new" / "lb.json"
    r = CliRunner().invoke(_app(), ["leaderboard", "add-benchmark", str(world["bench"]), "-l", str(lbp)])
    assert r.exit_code == 0 and r.output.startswith("added mrbench-synth") and lbp.is_file()
    r = CliRunner().invoke(_app(), ["leaderboard", "add-benchmark", str(world["bench"]), "-l", str(lbp)])
    assert r.exit_code == 0 and r.output.startswith("already listed")
    for enc in ("random", "constant"):
        submit(world[enc], lbp, benchmark=world["bench"])
    r = CliRunner().invoke(_app(), ["leaderboard", "show", "-l", str(lbp), "--sort", "hit@5"])
    assert r.exit_code == 0 and r.output.index("random") < r.output.index("constant") and "verified" in r.output
    r = CliRunner().invoke(_app(), ["leaderboard", "show", "-l", str(lbp), "--sort", "hit@5", "--ascending", "--markdown",
                                    "--task", "i2t", "-c", "model,hit@5"])
    assert r.exit_code == 0 and r.output.startswith("| model | hit@5 |") and r.output.index("constant") < r.output.index("random")
    r = CliRunner().invoke(_app(), ["leaderboard", "show", "-l", str(lbp), "--sort", "nope"])
    assert r.exit_code != 0 and "unknown column 'nope'" in r.output
    html, md = tmp_path / "page.html", tmp_path / "t.md"
    r = CliRunner().invoke(_app(), ["leaderboard", "render", "-l", str(lbp), "--html", str(html), "--markdown", str(md)])
    assert r.exit_code == 0 and html.read_text().count("<tr data-model=") == 2 and md.read_text().startswith("| model |")
    r = CliRunner().invoke(_app(), ["leaderboard", "render", "-l", str(lbp)])
    assert r.exit_code != 0 and "--html" in r.output


@pytest.mark.parametrize("args, line", [
    (["show", "-b", "my-bench"], ("error: {lb}: no benchmark matches 'my-bench' (did you mean 'mrbench-synth'?); "
                                  "pass a benchmark name or fingerprint prefix; known benchmarks: mrbench-synth (b2f20e25aefb)")),
    (["render", "--html", "{out}", "-b", "nope"], "error: {lb}: no benchmark matches 'nope'; "),
    (["render", "--markdown", "{out}", "-b", "nope"], "error: {lb}: no benchmark matches 'nope'; "),
    (["show", "--task", "nope"], "error: {lb}: unknown task 'nope'; known tasks: i2i, i2t, it2i, t2i"),
    (["show", "--task", "t2"], "error: {lb}: unknown task 't2' (did you mean 't2i'"),
    (["show", "--columns", "model,nope"], "error: --columns: unknown column 'nope'"),
    (["show", "--markdown", "-c", "model,hit5"], "error: --columns: unknown column 'hit5' (did you mean 'hit@5'"),
    (["show", "--sort", "hit5"], "error: --sort: unknown column 'hit5' (did you mean 'hit@5'"),
], ids=["show-benchmark", "render-html", "render-markdown", "task", "task-typo", "columns", "columns-markdown", "sort"])
def test_cli_unknown_benchmark_task_or_column_is_one_line(tmp_path: Path, args: list[str], line: str) -> None:
    """An unknown --benchmark, --task or column is one 'error:' line with close matches, not a traceback,
    and render writes nothing (not even the output's directory)."""
    lbp = tmp_path / "lb.json"
    shutil.copy(REPO / "leaderboard" / "leaderboard.json", lbp)
    out = tmp_path / "new" / "x.out"
    r = CliRunner().invoke(_app(), ["leaderboard", *[a.format(out=out) for a in args], "-l", str(lbp)])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith(line.format(lb=lbp)), r.output
    assert not out.parent.exists()


def test_approximate_results_are_refused(world: dict[str, Path], tmp_path: Path, lb: Path) -> None:
    d = _copy(world["random"], tmp_path / "r")
    _edit_results(d, lambda x: x["settings"].__setitem__("approx", {"index": "ivf"}))
    before = lb.read_bytes()
    with pytest.raises(SubmissionError, match="approximate search .*ivf.*exact search only"):
        submit(d, lb, benchmark=world["bench"])
    assert lb.read_bytes() == before


def test_verification_reads_only_the_results_tasks_and_names_an_unknown_one(world: dict[str, Path], tmp_path: Path,
                                                                           monkeypatch) -> None:
    from mrbench import evaluate
    from mrbench.data import io

    part = tmp_path / "part"
    evaluate(world["bench"], "random", tasks=["i2t"], output=part, cache=False, grain_sensitivity=False)
    read: list[str] = []
    real = io._read_jsonl
    monkeypatch.setattr(io, "_read_jsonl", lambda p: read.append(p.parent.name) or real(p))
    assert verify_results(part, benchmark=world["bench"]).ok
    assert set(read) == {"i2t"}
    def unknown_task(x: dict) -> None:
        x["settings"]["tasks"] = ["i2t", "zzz"]
        x["scores"]["tasks"]["zzz"] = x["scores"]["tasks"]["i2t"]

    _edit_results(part, unknown_task)
    with pytest.raises(SubmissionError, match=r"results.json: settings.tasks: .*no task 'zzz'"):
        verify_results(part, benchmark=world["bench"])


def test_tied_candidates_listed_in_the_models_favour_are_rejected(world: dict[str, Path], tmp_path: Path,
                                                                   lb: Path) -> None:
    """With the constant encoder every score ties: moving a relevant candidate to rank 1 (scores
    unchanged, metrics rewritten to match) would raise hit@1; ties rank the lower grade first."""
    import mrbench

    d = _copy(world["constant"], tmp_path / "c")
    lines = _run_lines(d)
    qrels = mrbench.load_benchmark(world["bench"]).task("t2i").qrels
    qid = lines[0].split()[0]
    mine = [i for i, ln in enumerate(lines) if ln.split()[0] == qid]
    rel = next(i for i in mine if qrels[qid].get(lines[i].split()[2], 0) > 0)
    assert rel != mine[0] and qrels[qid].get(lines[mine[0]].split()[2], 0) == 0
    first, moved = lines[mine[0]].split(), lines[rel].split()
    first[2], moved[2] = moved[2], first[2]  # the relevant candidate now at rank 1, same scores
    lines[mine[0]], lines[rel] = " ".join(first), " ".join(moved)
    _set_run(d, lines)
    with pytest.raises(SubmissionError, match=r"tie at score .* higher grade comes first") as e:
        verify_results(d, benchmark=world["bench"])
    assert "t2i.trec" in str(e.value) and qid in str(e.value) and "\n" not in str(e.value)
    before = lb.read_bytes()
    with pytest.raises(SubmissionError, match="pessimistic"):
        submit(d, lb, benchmark=world["bench"])
    assert lb.read_bytes() == before
