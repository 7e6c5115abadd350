"""The CLI, in-process (typer's CliRunner) and once as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrbench.cli.app import app

runner = CliRunner()
TINY = "mrbench-synth-tiny"
FIXTURES = Path(__file__).parent / "fixtures"


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(result, pattern: str) -> None:
    assert result.exit_code != 0, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert pattern in err, err
    assert "Traceback" not in result.output


def test_help_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("evaluate", "build", "check-encoder", "encoders", "benchmarks", "info"):
        assert cmd in r.stdout
    r = invoke("evaluate", "--help")
    assert r.exit_code == 0 and "--encoder" in r.stdout and "pessimistic" in r.stdout


def test_help_paragraphs_are_reflowed():
    """Docstring line breaks do not survive into --help: at 80 columns the terminal wraps the text."""
    from mrbench.cli.common import reflow

    assert reflow("One line\n    two.\n\n    Second\n    para.\n\n    - item\n      more") == (
        "One line two.\n\nSecond para.\n\n- item\n  more")
    r = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "queries without a relevant candidate are dropped and counted" in r.stdout
    r = runner.invoke(app, ["build", "--help"], env={"COLUMNS": "200"})
    assert "scene-graph relevance over four tasks (text" in r.stdout


def test_evaluate_writes_results_and_prints_tables(tmp_path):
    out = tmp_path / "out"
    r = invoke("evaluate", "-b", TINY, "-e", "oracle", "-e", "random", "-o", str(out), "-q")
    assert r.exit_code == 0, r.output
    assert "R@5" in r.stdout and "by number of grains" in r.stdout and "comparison" in r.stdout
    assert "grain sensitivity" in r.stdout
    for enc in ("oracle", "random"):
        data = json.loads((out / enc / "results.json").read_text())
        assert data["encoder"]["name"] == enc
    assert json.loads((out / "oracle" / "results.json").read_text())["scores"]["macro"]["hit@1"] == 1.0


def test_existing_output_is_refused(tmp_path):
    out = tmp_path / "out"
    assert invoke("evaluate", "-b", TINY, "-o", str(out), "-q", "--no-sensitivity").exit_code == 0
    one_line_error(invoke("evaluate", "-b", TINY, "-o", str(out), "-q"), "--overwrite")
    assert invoke("evaluate", "-b", TINY, "-o", str(out), "-q", "--overwrite").exit_code == 0


@pytest.mark.parametrize(
    "args, pattern",
    [
        (("evaluate", "-b", "no-such-bench"), "unknown benchmark 'no-such-bench'"),
        (("evaluate", "-b", TINY, "-e", "randon"), "did you mean 'random'"),
        (("evaluate", "-b", TINY, "--encoder-kwargs", "{dim: 3}"), "--encoder-kwargs"),
        (("evaluate", "-b", TINY, "--tasks", "t2i,zzz"), "no task 'zzz'"),
        (("evaluate", "-b", TINY, "--k", "0"), "--k"),
        (("evaluate", "-b", TINY, "-e", "random", "-e", "random"), "twice"),
        (("evaluate", "-b", TINY, "--batch-size", "0"), "--batch-size 0: expected a positive integer"),
        (("evaluate", "-b", TINY, "--batch-size", "-3"), "--batch-size -3: expected a positive integer"),
        (("evaluate", "-b", TINY, "-e", "random", "--workers", "-1"), "--workers -1: expected 0 or more"),
        (("evaluate", "-b", TINY, "-e", "random", "--backend", "faiss-gpu"), "unknown search backend 'faiss-gpu'"),
        (("encode", "-b", TINY, "-e", "random", "--workers", "-2"), "--workers -2: expected 0 or more"),
        (("evaluate", "-b", TINY, "-e", "random", "--tasks", ",,"), "--tasks ',,': no name in it"),
        (("encode", "-b", TINY, "-e", "random", "--tasks", " , "), "--tasks ' , ': no name in it"),
        (("evaluate", "-b", TINY, "-e", "random", "--tasks", "t2i,t2i"),
         "--tasks 't2i,t2i': 't2i' is given twice; give each once"),
        (("encode", "-b", TINY, "-e", "random", "--tasks", "t2i, i2t ,t2i"), "'t2i' is given twice; give each once"),
        (("build", "mbeir", "--mbeir-dir", "/no/such/mbeir", "-o", "/tmp/x-mrbench-never", "--tasks", "cirr_task7,cirr_task7"),
         "--tasks 'cirr_task7,cirr_task7': 'cirr_task7' is given twice"),
        (("leaderboard", "show", "--columns", "model,hit@5,model"), "--columns 'model,hit@5,model': 'model' is given twice"),
        (("build", "synth", "-o", "/tmp/x-mrbench-never", "--size", "huge"), "--size"),
        (("build", "synth", "-o", "/tmp/x-mrbench-never", "--size", "tiny", "--image-size", "100000"),
         "--image-size 100000 is out of range; pass an integer from 32 to 1024 pixels"),
        (("build", "synth", "-o", "/tmp/x-mrbench-never", "--size", "100000"),
         "--size 100000: out of range; use 'default', 'tiny' or 1 to 5000 queries per task"),
        (("build", "synth", "-o", "/tmp/x-mrbench-never", "--size", "0"), "--size 0: out of range"),
        (("info", "nope-bench"), "unknown benchmark"),
        (("evaluate", "-b", "/no/such/dir"), "/no/such/dir: no such directory"),
        (("evaluate", "-b", "no_such/"), "no_such/: no such directory"),
        (("evaluate", "-b", ""), "no benchmark named"),
        (("info", __file__), "a file, not a benchmark directory"),
    ],
)
def test_bad_input_gives_one_line(args, pattern):
    import mrbench

    mrbench.load_benchmark(TINY)  # built first: its build lines would reach stderr (the case run alone)
    one_line_error(invoke(*args), pattern)


def test_comma_separated_names_and_probe_size():
    from mrbench.cli.common import parse_names
    from mrbench.errors import MrbenchError

    assert parse_names(None) is None
    assert parse_names(" t2i, ,i2t,") == ["t2i", "i2t"]
    with pytest.raises(MrbenchError, match=r"^--columns 'a,b,a': 'a' is given twice; give each once$"):
        parse_names("a,b,a", "--columns")
    res = invoke("check-encoder", "random", "--n-items", "0")  # a 2-item probe at least, not a silent clamp
    assert res.exit_code == 2 and "--n-items" in res.output and "Traceback" not in res.output


def test_broken_benchmark_directory_gives_one_line(tmp_path):
    out = tmp_path / "b"
    assert invoke("build", "synth", "-o", str(out), "--size", "tiny").exit_code == 0
    assert invoke("info", str(out)).exit_code == 0
    qrels = out / "tasks/t2i/qrels.txt"
    good = qrels.read_text()
    qrels.write_text(good + "nope 0 nope 1\n")
    one_line_error(invoke("evaluate", "-b", str(out), "-q", "--no-verify"), "unknown query id 'nope'")
    qrels.write_text(good)
    # a structurally valid edit is caught by the fingerprint
    queries = out / "tasks/t2i/queries.jsonl"
    queries.write_text(queries.read_text().replace("circle", "circles", 1))
    one_line_error(invoke("evaluate", "-b", str(out), "-q"), "fingerprint mismatch")


def test_listings_and_check_encoder():
    r = invoke("encoders")
    assert r.exit_code == 0 and "oracle" in r.stdout and "constant" in r.stdout
    r = invoke("benchmarks")
    assert r.exit_code == 0 and "mrbench-synth" in r.stdout
    r = invoke("check-encoder", "random")
    assert r.exit_code == 0 and "shape" in r.stdout
    r = invoke("check-encoder", f"{FIXTURES / 'my_encoder.py'}:MyEncoder")
    assert r.exit_code == 0, r.output


def test_check_encoder_reports_a_broken_encoder(tmp_path):
    p = tmp_path / "bad.py"
    p.write_text(
        "import numpy as np\n"
        "from mrbench.encoders.base import EncoderMeta\n"
        "class Bad:\n"
        "    meta = EncoderMeta(name='bad', needs_pixels=False)\n"
        "    def encode(self, items, *, role, task):\n"
        "        return np.full((len(items), 4), np.nan, np.float32)\n"
    )
    r = invoke("check-encoder", f"{p}:Bad")
    assert r.exit_code == 1 and "FAIL" in r.stdout


def test_real_process_help_and_module_entry():
    r = subprocess.run([sys.executable, "-m", "mrbench", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "evaluate" in r.stdout
    r = subprocess.run([sys.executable, "-m", "mrbench", "evaluate", "-b", "nope"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: unknown benchmark") and "Traceback" not in r.stderr
    # --help must not import the heavy libraries
    code = "import sys; from mrbench.cli.app import app; print(sorted(m for m in ('torch','faiss','pandas','transformers','open_clip') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]"


def test_progress_bars_go_to_stderr_and_build_command(tmp_path):
    out = tmp_path / "b"
    r = invoke("build", "synth", "-o", str(out), "--size", "tiny", "--seed", "3")
    assert r.exit_code == 0 and "fingerprint sha256:" in r.stdout and "building: render t2i" in r.stderr
    one_line_error(invoke("build", "synth", "-o", str(out), "--size", "tiny"), "--overwrite")
    r = invoke("evaluate", "-b", str(out), "-e", "random", "--tasks", "t2i")
    assert r.exit_code == 0, r.output
    assert "t2i: encode queries" in r.stderr and "t2i: retrieve" in r.stderr
    assert "encode queries" not in r.stdout and "R@5" in r.stdout


def test_export_parquet_and_evaluate_it(tmp_path):
    out = tmp_path / "pq"
    r = invoke("export", TINY, "-o", str(out))
    assert r.exit_code == 0, r.output
    fp = r.stdout.strip().split()[-1]
    assert (out / "tasks/t2i/candidates.parquet").is_file()
    r = invoke("evaluate", "-b", str(out), "-e", "oracle", "-q", "--no-sensitivity", "-o", str(tmp_path / "res"))
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "res/results.json").read_text())["benchmark"]["fingerprint"] == fp
    one_line_error(invoke("export", TINY, "-o", str(tmp_path / "x"), "-f", "zip"), "--format")


def test_truncated_image_is_named(tmp_path):
    out = tmp_path / "b"
    assert invoke("build", "synth", "-o", str(out), "--size", "tiny").exit_code == 0
    victim = sorted((out / "images").rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:60])
    r = invoke("evaluate", "-b", str(out), "-q")
    one_line_error(r, victim.name)


def test_several_encoders_load_the_benchmark_once(monkeypatch):
    from mrbench.data import io

    loads: list[str] = []
    real = io._load_benchmark_dir
    monkeypatch.setattr(io, "_load_benchmark_dir", lambda root, *a, **k: loads.append(root.name) or real(root, *a, **k))
    r = invoke("evaluate", "-b", TINY, "-e", "random", "-e", "constant", "--tasks", "i2t", "-q", "--no-sensitivity")
    assert r.exit_code == 0, r.output
    assert len(loads) == 1 and "comparison" in r.stdout


@pytest.mark.parametrize("cache", [True, False])
def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, cache):
    """Ctrl-C during the second encoder of an evaluate with -o: one 'interrupted:' line that says what
    was kept and the command that resumes (--overwrite, since the first encoder's results are written);
    the re-run it names succeeds."""
    import mrbench.pipeline

    real = mrbench.pipeline.evaluate
    calls = []

    def second_interrupted(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(mrbench.pipeline, "evaluate", second_interrupted)
    out = tmp_path / "out"
    args = ["evaluate", "-b", TINY, "-e", "random", "-e", "oracle", "-o", str(out), "-q", "--no-sensitivity",
            *([] if cache else ["--no-cache"])]
    r = invoke(*args)
    assert r.exit_code == 130
    err = r.stderr.strip()
    assert "\n" not in err and err.startswith("interrupted: ")
    kept = "finished batches are in the embedding cache" if cache else "nothing was kept (--no-cache)"
    assert kept in err and "re-run the same command with --overwrite" in err, err
    monkeypatch.setattr(mrbench.pipeline, "evaluate", real)
    assert invoke(*args, "--overwrite").exit_code == 0


def test_tables_fit_80_columns_with_every_score_whole():
    """At 80 columns the result and comparison tables cut no score (they did: '0.1…'), long encoder
    names fold instead."""
    import re

    r = runner.invoke(app, ["evaluate", "-b", TINY, "-e", "random", "-e", "oracle", "-q", "--no-cache"],
                      env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "…" not in r.stdout and max(len(ln) for ln in r.stdout.splitlines()) <= 80
    comparison = r.stdout[r.stdout.index("comparison (macro over tasks)"):]
    rows = [ln for ln in comparison.splitlines() if ln.startswith(("random", "oracle"))]
    assert len(rows) == 2 and all(len(re.findall(r"\d\.\d{3}", ln)) == 8 for ln in rows), rows


def test_output_path_under_a_file_is_one_line(tmp_path):
    """An output path below a file is one 'error:' line naming the path (was a FileExistsError traceback)."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for args in (("build", "synth", "-o", str(blocker / "sub")),
                 ("evaluate", "-b", TINY, "-e", "random", "-q", "--no-sensitivity", "-o", str(blocker / "sub"))):
        r = invoke(*args)
        assert r.exit_code != 0
        err = r.stderr.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output, err
        assert "afile" in err and ("a file stands where a directory is needed" in err or "is a file" in err), err


def test_encoder_raising_in_encode_is_one_line(tmp_path, monkeypatch):
    """An encoder whose encode() raises gives one 'error:' line naming the encoder, the exception and
    the batch (was a ~100-line traceback); MRBENCH_TRACEBACK=1 shows the traceback with its cause."""
    src = tmp_path / "bad.py"
    src.write_text(
        "import numpy as np\n"
        "from mrbench.encoders.base import EncoderMeta\n"
        "class Raises:\n"
        "    def __init__(self):\n"
        "        self.meta = EncoderMeta(name='raises', revision='1', dim=8, needs_pixels=False)\n"
        "    def encode(self, items, *, role, task):\n"
        "        raise RuntimeError('boom inside encode')\n"
    )
    for cmd in ("evaluate", "encode"):
        r = invoke(cmd, "-b", TINY, "-e", f"{src}:Raises", "--tasks", "t2i", *(["-q"] if cmd == "evaluate" else []))
        err = r.stderr.strip().splitlines()[-1]  # (encode reports its plan and progress on stderr first)
        assert r.exit_code != 0 and err.startswith("error: ") and "Traceback" not in r.output, r.output
        assert "encoder 'raises': encode raised RuntimeError: boom inside encode" in err and "task 't2i'" in err, err
    monkeypatch.setenv("MRBENCH_TRACEBACK", "1")
    r = invoke("evaluate", "-b", TINY, "-e", f"{src}:Raises", "--tasks", "t2i", "-q")
    assert r.exit_code != 0 and isinstance(r.exception, Exception)
    assert isinstance(r.exception.__cause__, RuntimeError)


def _interrupt(*a, **k):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "target, args, hint",
    [
        ("mrbench.builders.synth.build_synth", ("build", "synth", "-o", "{tmp}/b", "--size", "tiny"),
         "nothing was written (the unfinished output is removed); re-run the same command"),
        ("mrbench.builders.hf.build_hf", ("build", "hf", "--dataset", "{tmp}/ds", "-o", "{tmp}/b"),
         "an unfinished output is removed; re-run the same command, adding --overwrite if it says the output exists"),
        ("mrbench.builders.mbeir.build_mbeir", ("build", "mbeir", "--mbeir-dir", "{tmp}/m", "-o", "{tmp}/b"),
         "adding --overwrite if it says the output exists"),
        ("mrbench.data.registry.load_benchmark", ("export", TINY, "-o", "{tmp}/b"), "nothing was written"),
        ("mrbench.data.registry.load_benchmark", ("info", TINY), "nothing was changed; re-run the same command"),
        ("mrbench.audit.audit", ("audit", "--no-cache"), "nothing was kept (--no-cache); re-run the same command"),
        ("mrbench.audit.audit", ("audit",), "finished batches are in the embedding cache"),
        ("mrbench.leaderboard.store.submit", ("submit", "{tmp}/r", "-l", "{tmp}/lb.json"),
         "the leaderboard file is replaced whole or not at all; re-run the same command"),
        ("mrbench.encoders.registry.get_encoder", ("check-encoder", "random"), "nothing was changed"),
    ],
)
def test_ctrl_c_hint_fits_the_command(tmp_path, monkeypatch, target, args, hint):
    """Ctrl-C in a command other than evaluate/encode says what that command leaves behind (the
    embedding-cache hint only where the cache is used), exit code 130, nothing written."""
    import importlib

    mod, _, attr = target.rpartition(".")
    monkeypatch.setattr(importlib.import_module(mod), attr, _interrupt)
    r = invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.exit_code == 130, r.output
    assert r.stderr.strip().splitlines()[-1].startswith("interrupted: ") and hint in r.stderr, r.stderr
    assert "embedding cache" not in r.stderr or "--no-cache" not in args and args[0] == "audit"
    assert "Traceback" not in r.output
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("world", ["2", "8"])
def test_evaluate_under_a_launcher_is_refused(tmp_path, world):
    """torchrun / accelerate launch set WORLD_SIZE: every rank would run the whole evaluation into the
    same output; one line pointing to mrbench encode, nothing written."""
    out = tmp_path / "out"
    r = runner.invoke(app, ["evaluate", "-b", TINY, "-o", str(out), "-q"],
                      env={"WORLD_SIZE": world, "RANK": "1", "LOCAL_RANK": "1"})
    one_line_error(r, f"WORLD_SIZE={world}: mrbench evaluate runs as one process")
    assert "mrbench encode" in r.stderr and "without a launcher" in r.stderr
    assert not out.exists()
    r = runner.invoke(app, ["evaluate", "-b", TINY, "-q", "--no-sensitivity", "--tasks", "t2i"], env={"WORLD_SIZE": "1"})
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("second, kwargs, pattern", [
    ("randon", None, "unknown encoder 'randon'"),
    ("{tmp}/nofile.py:Enc", None, "nofile.py' not found"),
    ("{tmp}/broken.py:Enc", None, "loading"),
    ("{tmp}/ok.py:Nope", None, "has no attribute 'Nope'"),
    ("openclip", None, "is an encoder family"),
    ("constant", '{"seed": 3}', "--encoder-kwargs applies to every -e"),
])
def test_every_encoder_spec_is_checked_before_the_first_runs(tmp_path, monkeypatch, second, kwargs, pattern):
    """With several -e, a bad second spec was found only after the first encoder had been evaluated
    (and its results written); now every spec is resolved (without building it) before the first runs."""
    import mrbench.pipeline

    (tmp_path / "broken.py").write_text("import no_such_module_xyz\n")
    (tmp_path / "ok.py").write_text("class Enc:\n    pass\n")
    ran: list[object] = []
    monkeypatch.setattr(mrbench.pipeline, "evaluate", lambda *a, **k: ran.append(a[1]))
    out = tmp_path / "out"
    args = ["evaluate", "-b", TINY, "-e", "random", "-e", second.format(tmp=tmp_path), "-o", str(out), "-q"]
    r = invoke(*args, *(["--encoder-kwargs", kwargs] if kwargs else []))
    one_line_error(r, pattern)
    assert r.exit_code == 2 and ran == [] and not out.exists()


def test_checking_a_spec_builds_nothing_and_agrees_with_the_registry(tmp_path, monkeypatch):
    """check_encoder_spec resolves as get_encoder does (same errors) without calling the constructor."""
    from mrbench.encoders.registry import get_encoder
    from mrbench.errors import MrbenchError
    from mrbench.encoders.registry import check_encoder_spec

    (tmp_path / "counted.py").write_text(
        "import numpy as np\nfrom mrbench.encoders.base import EncoderMeta\nBUILT = []\n"
        "class Enc:\n    def __init__(self, dim=4):\n        BUILT.append(dim)\n"
        "        self.meta = EncoderMeta(name='counted', revision='r', dim=dim, needs_pixels=False)\n"
        "    def encode(self, items, *, role, task):\n        return np.ones((len(items), 4), np.float32)\n")
    spec = f"{tmp_path}/counted.py:Enc"
    check_encoder_spec(spec, {"dim": 4})
    import sys

    mod = next(m for n, m in sys.modules.items() if n.startswith("mrbench_user_counted"))
    assert mod.BUILT == []
    for name, kwargs in [("random", {}), ("random", {"dim": 8}), ("constant", {}), (spec, {})]:
        check_encoder_spec(name, kwargs)
        get_encoder(name, **kwargs)
    for name, kwargs in [("randon", {}), ("random", {"nope": 1}), ("openclip", {}), ("random:x", {}), ("", {}),
                         ("hf:", {}), (f"{tmp_path}/counted.py:Nope", {}), (spec, {"width": 2}), ("no_mod.x:Y", {})]:
        with pytest.raises(MrbenchError) as checked:
            check_encoder_spec(name, kwargs)
        with pytest.raises(MrbenchError) as built:
            get_encoder(name, **kwargs)
        assert type(checked.value) is type(built.value) and str(checked.value) == str(built.value), name
    assert mod.BUILT == [4]  # the one get_encoder(spec) above


def test_encoder_kwargs_help_says_it_applies_to_every_encoder():
    r = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "with several -e, to every one of them" in r.stdout


def test_output_help_and_written_line_name_sensitivity_parquet(tmp_path):
    """--output's help and the 'results written to' line left out sensitivity.parquet."""
    r = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "sensitivity.parquet" in r.stdout
    r = runner.invoke(app, ["evaluate", "-b", TINY, "-e", "random", "--tasks", "t2i", "-o", str(tmp_path / "a"), "-q",
                            "--no-cache"], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("results written to"))
    assert "runs/, per_query.parquet, sensitivity.parquet" in line and (tmp_path / "a" / "sensitivity.parquet").is_file()
    r = runner.invoke(app, ["evaluate", "-b", TINY, "-e", "random", "--tasks", "t2i", "-o", str(tmp_path / "b"), "-q",
                            "--no-cache", "--no-sensitivity"], env={"COLUMNS": "300"})
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("results written to"))
    assert "sensitivity" not in line and not (tmp_path / "b" / "sensitivity.parquet").exists()


@pytest.mark.parametrize("args", [["benchmarks"], ["leaderboard", "show", "--markdown"]])  # a rich table, print()
def test_output_piped_into_a_reader_that_stops_is_quiet(args):
    """`mrbench info x | head -1`: once the reader has gone, the command stops without an error line
    and exits 141 (what a process killed by SIGPIPE reports), as cat or grep would."""
    import os

    from mrbench.cli.common import BROKEN_PIPE_EXIT

    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # the reader is gone before anything is written
    try:
        p = subprocess.run([sys.executable, "-m", "mrbench", *args], stdout=w_fd, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    finally:
        os.close(w_fd)
    assert p.returncode == BROKEN_PIPE_EXIT, p.stderr
    assert "error" not in p.stderr.lower() and "Traceback" not in p.stderr, p.stderr
