"""Tests of MRBench-Synth (mrbench.builders.synth / mrbench.builders.scene).

Relevance, relations and grain bookkeeping are re-checked here from the stored data with independent
code (plain sets and the documented thresholds), not with the generator's own helpers.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrbench.builders import scene as sc
from mrbench.builders.synth import build_synth, realize, resolve_size
from mrbench.data.io import load_benchmark_dir
from mrbench.data.schema import GRAIN_TYPES, Benchmark, Task
from mrbench.errors import BenchmarkError, OutputExistsError, UnknownNameError

TASKS = {"t2i": ("text", "image"), "i2t": ("image", "text"), "i2i": ("image", "image"), "it2i": ("image+text", "image")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Benchmark:
    return build_synth(tmp_path_factory.mktemp("synth") / "tiny", size="tiny", seed=0)


# --------------------------------------------------------------------------- independent re-checks
def _type_of(key: str) -> str:
    if "|" in key:
        return "relation"
    if key.startswith("scene."):
        return "scene"
    if ".state=" in key:
        return "action_or_state"
    if "=" in key:
        return "attribute"
    return "entity"


def _grade(task: Task, q_facts: set[str], q_asserts: list[str], cand_meta: dict) -> int:
    """Expected grade of one pair, straight from the documented rule."""
    if task.name == "i2t":
        req, hold = cand_meta["asserts"], q_facts
    else:
        req, hold = q_asserts, set(cand_meta["facts"])
    frac = sum(f in hold for f in req) / len(req)
    return math.floor(100 * frac + 0.5) if frac >= 0.5 else 0


def _target_signature(task: Task, q) -> str:
    if task.name == "i2t":
        facts = q.meta["facts"]
    else:
        facts = {c.id: c for c in task.candidates}[q.meta["target"]].meta["facts"]
    return hashlib.sha256(json.dumps(sorted(facts), separators=(",", ":")).encode()).hexdigest()


def _image_items(bench: Benchmark):
    for t in bench.tasks:
        for it in [*t.queries, *t.candidates]:
            if it.image:
                yield t, it


# --------------------------------------------------------------------------- structure
def test_tiny_loads_back_with_verified_fingerprint(tiny: Benchmark) -> None:
    loaded = load_benchmark_dir(tiny.root, verify=True)
    assert loaded.fingerprint == tiny.fingerprint and tiny.fingerprint.startswith("sha256:")
    # the build hashed its images as rendered; computed from the files (PNGs decoded) it is the same
    from mrbench.data.fingerprint import fingerprint

    assert fingerprint(loaded) == tiny.fingerprint
    assert (loaded.name, loaded.version, loaded.split) == ("mrbench-synth-tiny", "1.0", "test")
    assert {t.name: (t.query_modality, t.candidate_modality) for t in loaded.tasks} == TASKS
    vocab = loaded.metadata["fact_vocabulary"]
    assert vocab == sorted(vocab) and len(vocab) == len(set(vocab)) > 100
    assert loaded.metadata["seed"] == 0 and loaded.metadata["image_size"] == 128
    vset = set(vocab)
    for t in loaded.tasks:
        assert t.relevance_level == 100
        assert t.query_instruction and t.candidate_instruction and t.description
        assert len(t.queries) == 8
        for q in t.queries:
            assert {g.key for g in q.grains} <= vset
            assert set(q.meta.get("facts", [])) <= vset
        for c in t.candidates:
            assert set(c.meta.get("facts", c.meta.get("asserts", []))) <= vset


def test_same_arguments_give_identical_files(tiny: Benchmark, tmp_path: Path) -> None:
    again = build_synth(tmp_path / "again", size="tiny", seed=0)
    assert again.fingerprint == tiny.fingerprint
    files_a = sorted(p.relative_to(tiny.root) for p in tiny.root.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tiny.root / rel).read_bytes() == (again.root / rel).read_bytes(), rel


def test_build_does_not_depend_on_python_hash_seed(tiny: Benchmark, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from mrbench.builders.synth import build_synth; "
        "print(build_synth(Path(sys.argv[1]), size='tiny', seed=0).fingerprint)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "h")], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == tiny.fingerprint


def test_different_seed_changes_fingerprint(tiny: Benchmark, tmp_path: Path) -> None:
    other = build_synth(tmp_path / "s1", size="tiny", seed=1)
    assert other.fingerprint != tiny.fingerprint


def test_train_and_test_target_scenes_are_disjoint(tiny: Benchmark, tmp_path: Path) -> None:
    sigs: dict[str, set[str]] = {"test": set(), "train": set()}
    benches = [tiny, build_synth(tmp_path / "test1", size=12, seed=1)]
    benches += [build_synth(tmp_path / f"train{s}", size=12, seed=s, split="train") for s in (0, 1)]
    for b in benches:
        assert b.split in sigs
        for t in b.tasks:
            for q in t.queries:
                sig = _target_signature(t, q)
                assert sig == q.meta["target_signature"]
                assert ("train" if int(sig[:8], 16) % 100 < 30 else "test") == b.split
                sigs[b.split].add(sig)
    assert len(sigs["train"]) > 50 and len(sigs["test"]) > 50
    assert not sigs["train"] & sigs["test"]


# --------------------------------------------------------------------------- grains
def test_grain_counts_and_types(tiny: Benchmark) -> None:
    types: Counter[str] = Counter()
    for t in tiny.tasks:
        counts = [q.n_grains for q in t.queries]
        assert min(counts) >= 2
        assert {2, 3, 4} <= set(counts) and max(counts) >= 5, (t.name, counts)
        for q in t.queries:
            assert q.meta["asserts"] == [g.key for g in q.grains]
            assert len(set(q.meta["asserts"])) == q.n_grains
            for g in q.grains:
                assert g.text and g.type == _type_of(g.key)
                types[g.type] += 1
            if t.query_modality == "text":  # every grain's words occur in the query text
                assert all(g.text in q.text for g in q.grains), (q.text, q.grains)
    assert set(types) == set(GRAIN_TYPES)


def test_drop_one_text(tiny: Benchmark) -> None:
    n_text = 0
    for t in tiny.tasks:
        for q in t.queries:
            drop = q.meta.get("drop_one_text")
            if "text" not in t.query_modality:
                assert drop is None
                continue
            assert isinstance(drop, list) and len(drop) == q.n_grains
            for d in drop:
                assert d is None or (d and d != q.text)
                n_text += d is not None
            if t.name == "t2i":
                assert None not in drop and len(set(drop)) == len(drop)
            else:  # it2i: kept grains are not in the edit text; a lone edit cannot be dropped
                for g, d in zip(q.grains, drop):
                    if g.key in q.meta["kept_grains"] or len(q.meta["edit_grains"]) == 1:
                        assert d is None
                    else:
                        assert g.text not in d or q.text.count(g.text) > 1
    assert n_text > 8


def test_realize_examples() -> None:
    facts = ["circle", "circle.size=large", "circle.pattern=striped", "circle.color=red", "circle|left_of|square", "square", "square.color=blue", "scene.background=gray"]
    text, order = realize(["circle", "square"], facts)
    assert text == "a large striped red circle to the left of a blue square on a gray background"
    assert sorted(order) == sorted(facts)
    assert realize(["circle", "square"], [f for f in facts if f != "circle"])[0].startswith("a large striped red shape to the left")
    assert realize(["circle", "square"], [f for f in facts if "|" not in f])[0] == "a large striped red circle and a blue square on a gray background"
    assert realize(["circle"], ["circle", "circle.color=orange"])[0] == "an orange circle"


# --------------------------------------------------------------------------- relevance
def test_qrels_are_exact_and_every_query_has_a_relevant_candidate(tiny: Benchmark) -> None:
    for t in tiny.tasks:
        for q in t.queries:
            expected = {}
            for c in t.candidates:
                g = _grade(t, set(q.meta.get("facts", [])), q.meta["asserts"], c.meta)
                if g:
                    expected[c.id] = g
            assert t.qrels.get(q.id, {}) == expected, (t.name, q.id)
            rel = t.relevant(q.id)
            assert rel and all(v == 100 for v in rel.values())
            assert q.meta["target"] in rel
        assert all(0 < g <= 100 for row in t.qrels.values() for g in row.values())


def test_each_query_has_a_non_relevant_one_grain_contrast(tiny: Benchmark) -> None:
    for t in tiny.tasks:
        for q in t.queries:
            found = []
            for c in t.candidates:
                if t.name == "i2t":
                    missing = [f for f in c.meta["asserts"] if f not in set(q.meta["facts"])]
                else:
                    missing = [f for f in q.meta["asserts"] if f not in set(c.meta["facts"])]
                if len(missing) == 1:
                    assert c.id not in t.relevant(q.id)
                    found.append(c)
            assert found, (t.name, q.id)
            if t.name != "i2t":  # captions are deduplicated across queries, so their labels may name another query
                assert any(c.meta.get("source_query") == q.id and c.meta["role"] == "contrast" for c in found)


def test_i2i_target_is_a_rerender_and_it2i_edits_are_false_in_the_reference(tiny: Benchmark) -> None:
    i2i, it2i = tiny.task("i2i"), tiny.task("it2i")
    cands = {c.id: c for c in i2i.candidates}
    for q in i2i.queries:
        tgt = cands[q.meta["target"]]
        assert tgt.meta["facts"] == q.meta["facts"]
        a = np.asarray(Image.open(tiny.image_path(q.image)), dtype=np.int16)
        b = np.asarray(Image.open(tiny.image_path(tgt.image)), dtype=np.int16)
        assert 0 < np.abs(a - b).mean() < 40
    cands = {c.id: c for c in it2i.candidates}
    for q in it2i.queries:
        ref = set(q.meta["facts"])
        assert q.meta["edit_grains"] and all(f not in ref for f in q.meta["edit_grains"])
        assert q.meta["asserts"] == q.meta["edit_grains"] + q.meta["kept_grains"]
        assert set(q.meta["asserts"]) <= set(cands[q.meta["target"]].meta["facts"])
        for g in q.grains[: len(q.meta["edit_grains"])]:
            assert g.text in q.text


# --------------------------------------------------------------------------- scenes and pixels
def test_relations_agree_with_positions(tiny: Benchmark) -> None:
    size = tiny.metadata["image_size"]
    n = 0
    for _, it in _image_items(tiny):
        scene = it.meta["scene"]
        facts = set(it.meta["facts"])
        objs = scene["objects"]
        assert len(objs) in (2, 3, 4) and len({o["shape"] for o in objs}) == len(objs)
        expected = {f"scene.background={scene['background']}"}
        for o in objs:
            expected.add(o["shape"])
            expected |= {f"{o['shape']}.{a}={o[a]}" for a in ("color", "size", "pattern", "state")}
        for a in objs:
            for b in objs:
                if a is b:
                    continue
                for d, pos, neg in ((b["x"] - a["x"], "left_of", "right_of"), (b["y"] - a["y"], "above", "below")):
                    assert abs(d) >= 0.2 * size - 0.01 or abs(d) <= 0.08 * size + 0.01, "ambiguous layout"
                    if d >= 0.2 * size - 0.01:
                        expected.add(f"{a['shape']}|{pos}|{b['shape']}")
                    elif d <= -0.2 * size + 0.01:
                        expected.add(f"{a['shape']}|{neg}|{b['shape']}")
            assert any(f.startswith(a["shape"] + "|") for f in expected)
        assert facts == expected
        n += 1
    assert n > 100


def test_rendered_objects_sit_where_the_scene_says(tiny: Benchmark) -> None:
    """Colour-mask centroids of rendered objects match the stored centres, hence the relations."""
    checked = 0
    for c in tiny.task("t2i").candidates:
        scene = c.meta["scene"]
        arr = np.asarray(Image.open(tiny.image_path(c.image)).convert("RGB"), dtype=np.float32)
        colors = Counter(o["color"] for o in scene["objects"])
        centroids = {}
        for o in scene["objects"]:
            if colors[o["color"]] > 1:
                continue
            dist = np.abs(arr - np.array(sc.COLORS[o["color"]], dtype=np.float32)).max(axis=2)
            m = dist < 20
            # erode (4-neighbourhood): drops 1-px antialiased edges of other objects that blend into
            # this colour (an orange edge over a dark outline is brownish)
            m[1:-1, 1:-1] &= m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
            ys, xs = np.nonzero(m)
            if len(xs) < 6:  # a small striped cracked star keeps few pure-colour pixels: not localisable
                continue
            # median: robust to antialiased edges of other objects that blend into this colour
            cx, cy = float(np.median(xs)) + 0.5, float(np.median(ys)) + 0.5
            tol = 0.45 * o["r"] + 1.5  # a heart's mass sits above its centre
            assert abs(cx - o["x"]) < tol and abs(cy - o["y"]) < tol, (c.id, o, cx, cy)
            centroids[o["shape"]] = (cx, cy)
            checked += 1
        for f in c.meta["facts"]:
            if "|" in f:
                a, rel, b = f.split("|")
                if a in centroids and b in centroids:
                    (xa, ya), (xb, yb) = centroids[a], centroids[b]
                    gap = {"left_of": xb - xa, "right_of": xa - xb, "above": yb - ya, "below": ya - yb}[rel]
                    assert gap > 0.15 * tiny.metadata["image_size"], (c.id, f)
    assert checked > 40


def test_images_open_at_configured_size(tiny: Benchmark, tmp_path: Path) -> None:
    small = build_synth(tmp_path / "s64", size=3, seed=2, image_size=64)
    for bench, px in ((tiny, 128), (small, 64)):
        seen = 0
        for _, it in _image_items(bench):
            with Image.open(bench.image_path(it.image)) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (px, px)
            seen += 1
        assert seen > 10
    assert small.task("t2i").queries[0].meta is not None


def test_scene_facts_are_independent_of_image_size() -> None:
    import random

    rng = random.Random(5)
    for _ in range(50):
        s = sc.random_scene(rng)
        assert sc.render_scene(s, 48).size == (48, 48)
        d1, d2 = s.to_dict(64), s.to_dict(256)
        assert [o["x"] * 4 for o in d1["objects"]] == pytest.approx([o["x"] for o in d2["objects"]], abs=0.02)
        assert s.facts <= set(sc.fact_vocabulary())


# --------------------------------------------------------------------------- API behaviour
def test_progress_overwrite_and_bad_arguments(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    out = tmp_path / "b"
    build_synth(out, size=2, seed=3, progress=lambda s, d, n: calls.append((s, d, n)))
    stages = {s for s, _, _ in calls}
    assert {"render t2i", "render i2t", "render i2i", "render it2i", "write"} <= stages
    for stage in stages:
        last = [c for c in calls if c[0] == stage][-1]
        assert last[1] == last[2] > 0
    with pytest.raises(OutputExistsError):
        build_synth(out, size=2, seed=3)
    b = build_synth(out, size=2, seed=4, overwrite=True)
    assert load_benchmark_dir(out).fingerprint == b.fingerprint
    with pytest.raises(UnknownNameError, match="tiny"):
        resolve_size("tinny")
    with pytest.raises(BenchmarkError):
        resolve_size(0)
    with pytest.raises(UnknownNameError):
        build_synth(tmp_path / "x", size="tiny", split="dev")
    with pytest.raises(BenchmarkError):
        build_synth(tmp_path / "y", size="tiny", image_size=8)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"image_size": 100_000}, r"^image_size 100000 is out of range; pass an integer from 32 to 1024 pixels$"),
        ({"image_size": 1025}, r"^image_size 1025 is out of range"),
        ({"image_size": 31}, r"^image_size 31 is out of range"),
        ({"image_size": 64.0}, r"^image_size 64.0 is out of range"),
        ({"size": 5001}, r"^size 5001 is too large; pass 1 to 5000 queries per task$"),
        ({"size": "10000000"}, r"^size 10000000 is too large"),
    ],
)
def test_size_options_are_bounded_before_anything_is_written(tmp_path: Path, monkeypatch, kwargs, pattern) -> None:
    """An image side or a size too large to build (--image-size 100000 was killed for memory and left
    a staging directory behind) is refused with one line before anything is planned or written."""
    import mrbench.builders.synth as synth

    def no_render(*a, **k):  # pragma: no cover - reached only without the bound
        raise AssertionError("rendered despite an out-of-range size")

    monkeypatch.setattr(synth, "render_scene", no_render)
    monkeypatch.setattr(synth, "_TaskBuilder", no_render)
    with pytest.raises(BenchmarkError, match=pattern):
        build_synth(tmp_path / "x", **{"size": "tiny", **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_size_bounds_are_inclusive(tmp_path: Path) -> None:
    from mrbench.builders.synth import MAX_QUERIES_PER_TASK, check_image_size

    assert resolve_size(MAX_QUERIES_PER_TASK) == MAX_QUERIES_PER_TASK
    assert check_image_size(32) == 32 and check_image_size(1024) == 1024
    b = build_synth(tmp_path / "big", size=1, image_size=1024)
    assert b.n_queries == 4


def test_default_build(tmp_path: Path) -> None:
    """The default size: ≈250 queries per task, pools up to ~1.5k, grain counts balanced (5–8 s here)."""
    t0 = time.perf_counter()
    bench = build_synth(tmp_path / "default", size="default", seed=0)
    elapsed = time.perf_counter() - t0
    print(f"default build: {elapsed:.1f} s, {bench.n_queries} queries")
    assert bench.n_queries == 1000
    # the built-in mrbench-synth: its name and the fingerprint the committed leaderboard pins
    lb = json.loads((Path(__file__).resolve().parents[1] / "leaderboard" / "leaderboard.json").read_text())
    assert (bench.name, bench.split) == ("mrbench-synth", "test")
    assert bench.fingerprint in {b["fingerprint"] for b in lb["benchmarks"] if b["name"] == "mrbench-synth"}
    for t in bench.tasks:
        assert 300 <= len(t.candidates) <= 1600
        buckets = Counter(min(q.n_grains, 5) for q in t.queries)
        assert all(0.2 <= buckets[k] / len(t.queries) <= 0.3 for k in (2, 3, 4, 5)), buckets
        assert any(q.n_grains >= 6 for q in t.queries)
        assert all(t.relevant(q.id) for q in t.queries)


# --------------------------------------------------------------------------- built-in names
def test_each_builtin_is_named_after_its_size_and_split(tiny: Benchmark, tmp_path: Path) -> None:
    """build_synth labels a build like the built-in of its size and split (the name is no content)."""
    import dataclasses

    from mrbench.builders.synth import synth_name
    from mrbench.data.fingerprint import fingerprint
    from mrbench.data.registry import BUILTIN_BENCHMARKS

    assert {n: synth_name(b.size, b.split) for n, b in BUILTIN_BENCHMARKS.items()} == {n: n for n in BUILTIN_BENCHMARKS}
    assert synth_name(8) == "mrbench-synth-tiny" and synth_name(250, "train") == "mrbench-synth-train"
    assert synth_name(12) == "mrbench-synth"  # other sizes keep the family name; the fingerprint tells them apart
    assert tiny.name == "mrbench-synth-tiny"
    # the name is not hashed: relabelling never moves a fingerprint (the default's stays the leaderboard's)
    assert fingerprint(dataclasses.replace(tiny, name="mrbench-synth")) == tiny.fingerprint
    own = build_synth(tmp_path / "own", size=2, seed=3, image_size=32, name="my-synth")
    assert own.name == "my-synth" and load_benchmark_dir(own.root).name == "my-synth"
    assert own.fingerprint == build_synth(tmp_path / "plain", size=2, seed=3, image_size=32).fingerprint
    for bad in ("", " x", "x\n", 0):
        with pytest.raises(BenchmarkError, match="benchmark name"):
            build_synth(tmp_path / "bad", size=2, name=bad)
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """`random` on the built-in mrbench-synth-tiny, written out (MRBENCH_HOME as conftest sets it)."""
    import mrbench

    home = tmp_path_factory.getbasetemp() / "mrbench-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MRBENCH_HOME", str(home))
        mp.setenv("MRBENCH_CACHE", str(home / "embeddings"))
        out = tmp_path_factory.mktemp("tinyrun") / "random"
        res = mrbench.evaluate("mrbench-synth-tiny", "random", output=out, cache=False, grain_sensitivity=False)
    return res, out


def test_builtins_record_their_own_name_in_results(tiny_run) -> None:
    from mrbench.data.registry import load_benchmark

    for name in ("mrbench-synth-tiny", "mrbench-synth-tiny-train"):
        b = load_benchmark(name)
        assert b.name == name and json.loads((b.root / "manifest.json").read_text())["name"] == name
    res, out = tiny_run
    assert res.data["benchmark"]["name"] == "mrbench-synth-tiny"
    assert json.loads((out / "results.json").read_text())["benchmark"]["name"] == "mrbench-synth-tiny"


def test_a_builtin_built_under_the_old_name_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny build left on disk by an older mrbench (manifest name ``mrbench-synth``) is never served."""
    from mrbench.data.registry import builtin_dir, load_benchmark

    monkeypatch.setenv("MRBENCH_HOME", str(tmp_path / "home"))
    d = builtin_dir("mrbench-synth-tiny")
    d.parent.mkdir(parents=True)
    old = build_synth(d, size="tiny", name="mrbench-synth")
    assert load_benchmark_dir(d).name == "mrbench-synth"
    b = load_benchmark("mrbench-synth-tiny")
    assert (b.name, b.root, b.fingerprint) == ("mrbench-synth-tiny", d, old.fingerprint)
    assert json.loads((d / "manifest.json").read_text())["name"] == "mrbench-synth-tiny"


def test_leaderboard_never_takes_a_tiny_run_for_mrbench_synth(tiny_run, tmp_path: Path) -> None:
    import shutil

    from mrbench.leaderboard.render import entry_rows
    from mrbench.leaderboard.store import add_benchmark, load_leaderboard, short_fingerprint, submit
    from mrbench.leaderboard.verify import SubmissionError

    _, run = tiny_run
    fp = json.loads((run / "results.json").read_text())["benchmark"]["fingerprint"]
    # the repository's leaderboard lists only the full mrbench-synth: refused, named as what it is
    lb = tmp_path / "lb.json"
    shutil.copy(Path(__file__).resolve().parents[1] / "leaderboard" / "leaderboard.json", lb)
    before = lb.read_bytes()
    with pytest.raises(SubmissionError, match="benchmark 'mrbench-synth-tiny' fingerprint .* is not one this leaderboard knows"):
        submit(run, lb)
    assert lb.read_bytes() == before
    # a leaderboard that takes the tiny benchmark labels it and its entries mrbench-synth-tiny
    rec, added = add_benchmark(lb, "mrbench-synth-tiny")
    assert added and (rec["name"], rec["fingerprint"]) == ("mrbench-synth-tiny", fp)
    # results a tiny run wrote before the fix (named mrbench-synth) are refused, not filed as mrbench-synth
    stale = tmp_path / "stale"
    shutil.copytree(run, stale)
    data = json.loads((stale / "results.json").read_text())
    data["benchmark"]["name"] = "mrbench-synth"
    (stale / "results.json").write_text(json.dumps(data))
    before = lb.read_bytes()
    with pytest.raises(SubmissionError, match=r"'mrbench-synth' fingerprint .* \(known: .*mrbench-synth-tiny"):
        submit(stale, lb)
    assert lb.read_bytes() == before
    e = submit(run, lb).entry
    assert e["id"] == f"random@sha256-normal-v1/mrbench-synth-tiny@{short_fingerprint(fp)}"
    assert e["benchmark"]["name"] == "mrbench-synth-tiny"
    doc = load_leaderboard(lb)
    assert {r["id"] for r in entry_rows(doc, benchmark="mrbench-synth-tiny")} == {e["id"]}
    assert e["id"] not in {r["id"] for r in entry_rows(doc, benchmark="mrbench-synth")}
