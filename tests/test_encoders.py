"""Encoder registry resolution, the built-in sanity encoders, and check-encoder."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import numpy as np
import pytest

from mrbench.data.schema import Benchmark, Candidate, Query, Task
from mrbench.encoders.base import EncodeInput, Encoder, EncoderMeta
from mrbench.encoders.builtin import ConstantEncoder, OracleEncoder, RandomEncoder
from mrbench.encoders.check import CheckResult, check_encoder, passed
from mrbench.encoders.harness import encode_items, item_content_hash
from mrbench.encoders.registry import (
    ENTRY_POINT_GROUP,
    EncoderSpec,
    get_encoder,
    list_encoders,
    register_encoder,
    unregister_encoder,
)
from mrbench.errors import EncoderError, UnknownNameError

FIXTURES = Path(__file__).parent / "fixtures"
PLUGIN = FIXTURES / "my_encoder.py"


from fixtures import encbench as eb  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture
def fixtures_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    yield
    sys.modules.pop("my_encoder", None)


@pytest.fixture
def dummy_family():
    register_encoder("dummyfam", "my_encoder:make_encoder", description="test family", family=True)
    yield
    unregister_encoder("dummyfam")


def _fake_entry_points(monkeypatch, *eps: tuple[str, str]):
    objs = [importlib.metadata.EntryPoint(name=n, value=v, group=ENTRY_POINT_GROUP) for n, v in eps]

    def entry_points(**kw):
        assert kw.get("group") == ENTRY_POINT_GROUP
        return objs

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


# ---------------------------------------------------------------------------------------------------
# registry


def test_builtins_listed_and_resolved():
    names = {s.name: s for s in list_encoders()}
    assert {"random", "constant", "oracle"} <= set(names)
    assert isinstance(names["random"], EncoderSpec) and names["random"].target.endswith(":RandomEncoder")
    enc = get_encoder("random", dim=32, seed=3)
    assert isinstance(enc, RandomEncoder) and isinstance(enc, Encoder)
    assert enc.meta.dim == 32 and enc.meta.needs_pixels is False
    assert isinstance(get_encoder("constant"), ConstantEncoder)
    assert isinstance(get_encoder("oracle"), OracleEncoder)


def test_unknown_name_did_you_mean():
    with pytest.raises(UnknownNameError, match=r"did you mean 'random'") as e:
        get_encoder("randm")
    from mrbench.errors import did_you_mean

    assert did_you_mean("IVF", ("ivf", "hnsw")) == " (did you mean 'ivf'?)"  # case is ignored, a case-only difference first
    assert did_you_mean("Random", ("randoms", "random")) == " (did you mean 'random', 'randoms'?)"
    assert "family:spec" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnknownNameError):
        get_encoder("no_such_module_xyz:Thing")
    with pytest.raises(UnknownNameError, match="not a family"):
        get_encoder("random:foo")
    with pytest.raises(UnknownNameError):
        get_encoder("")


def test_bad_kwargs_list_accepted_parameters():
    with pytest.raises(EncoderError, match=r"bad kwargs.*accepted: dim, seed"):
        get_encoder("random", dimension=3)
    with pytest.raises(EncoderError, match="positive integer"):
        get_encoder("random", dim=0)


def test_module_class_and_py_prefix(fixtures_on_path):
    enc = get_encoder("my_encoder:MyEncoder", dim=20)
    assert enc.meta.name == "my-encoder" and enc.meta.dim == 20
    enc2 = get_encoder("py:my_encoder:MyEncoder")
    assert enc2.meta.dim == 16


def test_file_path_class(tmp_path):
    enc = get_encoder(f"{PLUGIN}:MyEncoder", dim=14, name="from-file")
    assert enc.meta.name == "from-file" and enc.meta.dim == 14
    again = get_encoder(f"{PLUGIN}:MyEncoder")
    assert type(again) is type(enc)  # the file is loaded once per process
    with pytest.raises(EncoderError, match="not found"):
        get_encoder(f"{tmp_path}/nope.py:X")
    with pytest.raises(EncoderError, match="did you mean 'MyEncoder'"):
        get_encoder(f"{PLUGIN}:MyEncodr")
    bad = tmp_path / "broken.py"
    bad.write_text("def oops(:\n")
    with pytest.raises(EncoderError, match=r"SyntaxError \(line 1\)"):
        get_encoder(f"{bad}:X")


def test_constructor_failure_is_one_line(fixtures_on_path):
    with pytest.raises(EncoderError, match=r"constructor failed with ValueError: dim must be at least 13"):
        get_encoder("my_encoder:MyEncoder", dim=4)


def test_import_failure_names_module_and_extra(tmp_path, monkeypatch):
    register_encoder("needsdep", "mrbench_missing_backend_xyz.models:Enc", extra="clip")
    try:
        with pytest.raises(EncoderError, match=r"pip install 'mrbench\[clip\]'") as e:
            get_encoder("needsdep")
        assert "mrbench_missing_backend_xyz" in str(e.value)
    finally:
        unregister_encoder("needsdep")
    (tmp_path / "enc_with_dep.py").write_text("import not_installed_pkg_xyz\nclass E: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EncoderError, match="missing 'not_installed_pkg_xyz'"):
        get_encoder("enc_with_dep:E")


def test_protocol_violations_named(fixtures_on_path):
    with pytest.raises(EncoderError, match=r"my_encoder:NotAnEncoder.*no 'meta'"):
        get_encoder("my_encoder:NotAnEncoder")
    with pytest.raises(EncoderError, match="not mrbench.encoders.base.EncoderMeta"):
        get_encoder("my_encoder:DictMetaEncoder")
    with pytest.raises(EncoderError, match=r"does not accept keyword argument\(s\) role, task"):
        get_encoder("my_encoder:NoRoleEncoder")
    with pytest.raises(EncoderError, match="not a class, factory or encoder"):
        get_encoder("my_encoder:__doc__")


def test_ready_instance(fixtures_on_path):
    enc = get_encoder("my_encoder:INSTANCE")
    assert enc.meta.name == "ready-instance"
    with pytest.raises(EncoderError, match="takes no kwargs"):
        get_encoder("my_encoder:INSTANCE", dim=3)


def test_family_prefix(fixtures_on_path, dummy_family):
    enc = get_encoder("dummyfam:ViT-B-32/laion2b", dim=18)
    assert enc.meta.name == "dummyfam:ViT-B-32/laion2b" and enc.meta.dim == 18
    fam = {s.name: s for s in list_encoders()}["dummyfam"]
    assert fam.family and fam.description == "test family"
    with pytest.raises(UnknownNameError, match="needs a spec"):
        get_encoder("dummyfam:")
    with pytest.raises(UnknownNameError, match="encoder family"):
        get_encoder("dummyfam")
    with pytest.raises(UnknownNameError, match="did you mean 'dummyfam'"):
        get_encoder("dumyfam:ViT-B-32")


def test_register_conflicts():
    register_encoder("tmp-enc", "mrbench.encoders.builtin:RandomEncoder")
    try:
        register_encoder("tmp-enc", "mrbench.encoders.builtin:RandomEncoder")  # identical: no-op
        with pytest.raises(EncoderError, match="already registered"):
            register_encoder("tmp-enc", "mrbench.encoders.builtin:ConstantEncoder")
        register_encoder("tmp-enc", "mrbench.encoders.builtin:ConstantEncoder", overwrite=True)
        assert isinstance(get_encoder("tmp-enc"), ConstantEncoder)
    finally:
        unregister_encoder("tmp-enc")
    with pytest.raises(EncoderError, match="module:attr"):
        register_encoder("bad", "no_colon")
    with pytest.raises(EncoderError):
        register_encoder("a:b", "x:y")


def test_entry_points(monkeypatch, fixtures_on_path):
    _fake_entry_points(monkeypatch, ("myenc", "my_encoder:MyEncoder"), ("myfam", "my_encoder:make_encoder"))
    names = {s.name: s for s in list_encoders()}
    assert names["myenc"].target == "my_encoder:MyEncoder" and not names["myenc"].family
    enc = get_encoder("myenc", dim=15)
    assert enc.meta.dim == 15
    fam = get_encoder("myfam:tiny", dim=13)
    assert fam.meta.name == "dummyfam:tiny"
    with pytest.raises(UnknownNameError, match="did you mean 'myenc'"):
        get_encoder("myenk")


def test_broken_entry_point(monkeypatch):
    _fake_entry_points(monkeypatch, ("ghost", "ghost_pkg_xyz.mod:Enc"))
    with pytest.raises(EncoderError, match="entry point 'ghost_pkg_xyz.mod:Enc' cannot import"):
        get_encoder("ghost")


# ---------------------------------------------------------------------------------------------------
# built-ins


def _inp(id_: str, text: str | None = None, *, instruction: str | None = None, meta=None) -> EncodeInput:
    return EncodeInput(id=id_, text=text, image=None, image_path=None, instruction=instruction,
                       content_hash=item_content_hash(text, None), meta=meta or {})


def test_random_deterministic_and_role_free():
    enc = RandomEncoder(dim=16, seed=7)
    info = eb.text_bench(2).tasks[0].info()
    items = [_inp("a", "hello"), _inp("b", "world"), _inp("c", "hello")]
    x = enc.encode(items, role="query", task=info)
    assert x.dtype == np.float32 and x.shape == (3, 16)
    np.testing.assert_array_equal(x[0], x[2])  # same content, different id
    assert not np.allclose(x[0], x[1])
    np.testing.assert_array_equal(x, enc.encode(items, role="candidate", task=info))  # role does not enter
    np.testing.assert_array_equal(x[1:2], enc.encode(items[1:2], role="query", task=info))  # batch-free
    instructed = enc.encode([_inp("a", "hello", instruction="Find it")], role="query", task=info)
    assert not np.allclose(instructed[0], x[0])
    assert not np.allclose(RandomEncoder(dim=16, seed=8).encode(items[:1], role="query", task=info)[0], x[0])


def test_constant_encoder_ties_everything():
    bench = eb.text_bench(5)
    task = bench.tasks[0]
    enc = ConstantEncoder(dim=4)
    q = encode_items(enc, task.queries, role="query", task=task, bench=bench)
    c = encode_items(enc, task.candidates, role="candidate", task=task, bench=bench)
    s = q @ c.T
    assert np.all(s == s[0, 0]) and abs(s[0, 0] - 1.0) < 1e-6


VOCAB = [f"{k}={v}" for k in ("shape", "color", "size", "pos", "texture", "count", "light")
         for v in ("a", "b", "c")]


def _scene_facts(i: int) -> list[str]:
    keys = ("shape", "color", "size", "pos", "texture", "count", "light")
    return [f"{k}={'abc'[(i >> j) % 3]}" for j, k in enumerate(keys)]


@pytest.mark.parametrize("combo", ["t2i", "i2t", "it2i", "t2it"])
@pytest.mark.parametrize("n_asserts", [1, 3, 5, 7])
def test_oracle_full_match_exactly_one(combo, n_asserts, tmp_path):
    """Every full match scores exactly 1.0, every partial match strictly less, in all four modality
    combinations, with the vocabulary coming from the benchmark's metadata via the harness."""
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (4, 4)).save(img)
    n = 12
    scenes = [_scene_facts(i) for i in range(n)]
    asserts = [s[:n_asserts] for s in scenes]
    qm, cm = {"t2i": ("text", "image"), "i2t": ("image", "text"), "it2i": ("image+text", "image"),
              "t2it": ("text", "image+text")}[combo]

    def item(cls, prefix, i, modality, scene_side):
        meta = {"facts": scenes[i]} if scene_side else {"asserts": asserts[i]}
        return cls(id=f"{prefix}{i}", text=f"text {i}" if "text" in modality else None,
                   image=str(img) if "image" in modality else None, meta=meta)

    text_pool = cm == "text"
    qs = [item(Query, "q", i, qm, scene_side=text_pool) for i in range(n)]
    cs = [item(Candidate, "c", i, cm, scene_side=not text_pool) for i in range(n)]
    task = Task(name=combo, query_modality=qm, candidate_modality=cm, queries=qs, candidates=cs,
                qrels={f"q{i}": {f"c{i}": 1} for i in range(n)})
    bench = Benchmark(name="o", version="1", tasks=[task], metadata={"fact_vocabulary": VOCAB})
    enc = get_encoder("oracle")
    q = encode_items(enc, qs, role="query", task=task, bench=bench)
    c = encode_items(enc, cs, role="candidate", task=task, bench=bench)
    assert q.shape[1] == c.shape[1] == len(VOCAB)
    import torch

    for scores in (q @ c.T, (q[:, ::-1] @ c[:, ::-1].T), torch.from_numpy(q) @ torch.from_numpy(c).T):
        scores = np.asarray(scores)
        for i in range(n):
            for j in range(n):
                if text_pool:  # query i is a scene, candidate j asserts asserts[j]
                    a, s = asserts[j], set(scenes[i])
                else:
                    a, s = asserts[i], set(scenes[j])
                frac = sum(f in s for f in a) / len(a)
                if frac == 1.0:
                    assert scores[i, j] == np.float32(1.0)
                else:
                    assert scores[i, j] < 1.0
                    assert abs(scores[i, j] - (2 * frac - 1)) < 1e-6
        assert np.all(np.diag(scores) == 1.0)


def test_oracle_errors():
    enc = OracleEncoder()
    t = Task(name="t", query_modality="text", candidate_modality="image", queries=[], candidates=[], qrels={})
    info = t.info()
    with pytest.raises(EncoderError, match="fact_vocabulary"):
        enc.encode([_inp("q1", "x", meta={"asserts": ["a"]})], role="query", task=info)
    t.metadata["fact_vocabulary"] = ["a", "b"]
    info = t.info()
    with pytest.raises(EncoderError, match=r"item 'q1'.*fact 'zzz'"):
        enc.encode([_inp("q1", "x", meta={"asserts": ["zzz"]})], role="query", task=info)
    with pytest.raises(EncoderError, match=r"item 'c9'.*meta\['facts'\]"):
        enc.encode([_inp("c9", "x", meta={"asserts": ["a"]})], role="candidate", task=info)
    with pytest.raises(EncoderError, match="item 'q2'"):
        enc.encode([_inp("q2", "x")], role="query", task=info)
    # an image query with only facts asserts them (image→image tasks)
    v = enc.encode([_inp("q3", meta={"facts": ["a"]})], role="query", task=info)
    np.testing.assert_array_equal(v, [[1.0, 0.0]])


def test_oracle_bypasses_cache(tmp_path):
    from mrbench.encoders.cache import EmbeddingCache

    bench = eb.text_bench(3)
    bench.metadata["fact_vocabulary"] = ["a", "b"]
    task = bench.tasks[0]
    for c in task.candidates:
        c.meta["asserts"] = ["a"]
    for q in task.queries:
        q.meta["facts"] = ["a"]
    cache = EmbeddingCache(tmp_path, "oracle@x")
    encode_items(OracleEncoder(), task.candidates, role="candidate", task=task, bench=bench, cache=cache)
    assert len(cache) == 0 and not list(tmp_path.rglob("*.npz"))


# ---------------------------------------------------------------------------------------------------
# check-encoder


def _by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


@pytest.mark.parametrize("name", ["random", "constant", "oracle"])
def test_check_builtins_pass(name, tmp_path):
    res = check_encoder(get_encoder(name), n_items=6, tmp_dir=tmp_path)
    assert passed(res), [r for r in res if not r.ok]
    assert {"protocol", "shape", "dtype", "finite", "dimension", "normalisation", "determinism",
            "batch invariance", "harness", "speed"} <= set(_by_name(res))


def test_check_plugin_with_pixels(tmp_path):
    enc = get_encoder(f"{PLUGIN}:MyEncoder")
    res = _by_name(check_encoder(enc, n_items=5, tmp_dir=tmp_path))
    assert all(r.ok for r in res.values()), res
    assert "not unit-norm" in res["normalisation"].detail
    assert {m for _, m, _ in enc.seen_images} == {"RGB"}
    assert not list(tmp_path.iterdir())  # temporary files removed


def _broken(fn, **kw):
    return eb.ScriptedEncoder(lambda items, role, k: fn(items, role, k), **kw)


def test_check_broken_encoders(tmp_path):
    def run(enc, **kw):
        return _by_name(check_encoder(enc, n_items=4, tmp_dir=tmp_path, **kw))

    r = run(_broken(lambda items, role, k: np.full((len(items), 4), np.nan)))
    assert not r["finite"].ok and "NaN for item" in r["finite"].detail

    r = run(_broken(lambda items, role, k: np.ones((len(items) + 1, 4))))
    assert not r["shape"].ok and "expected" in r["shape"].detail

    r = run(_broken(lambda items, role, k: np.random.default_rng(k).standard_normal((len(items), 4))))
    assert not r["determinism"].ok and r["shape"].ok

    def batch_dependent(items, role, k):
        x = eb.hashed(items, 4)
        return x - x.mean(axis=0) if len(items) > 1 else x

    r = run(_broken(batch_dependent))
    assert r["determinism"].ok and not r["batch invariance"].ok

    r = run(_broken(lambda items, role, k: eb.hashed(items, 4 if role == "query" else 6)))
    assert not r["dimension"].ok and "queries have dimension 4 but candidates 6" in r["dimension"].detail
    assert not r["harness"].ok

    r = run(_broken(lambda items, role, k: eb.hashed(items, 4), dim=5))
    assert not r["dimension"].ok and "meta.dim is 5" in r["dimension"].detail

    def boom(items, role, k):
        raise RuntimeError("CUDA out of memory\nsecond line")

    r = run(_broken(boom))
    assert not r["encode"].ok and r["encode"].detail.endswith("RuntimeError: CUDA out of memory (and 5 more)")
    assert not r["dtype"].ok

    r = run(_broken(lambda items, role, k: np.zeros((len(items), 4))))
    assert not r["normalisation"].ok and "zero vector" in r["normalisation"].detail

    r = run(_broken(lambda items, role, k: [["a"] * 3 for _ in items]))
    assert not r["dtype"].ok

    r = run(_broken(lambda items, role, k: eb.hashed(items, 4)), slow_seconds=0.0)
    assert r["speed"].ok and r["speed"].warning and r["speed"].detail.startswith("SLOW")

    res = check_encoder(object(), tmp_dir=tmp_path)  # type: ignore[arg-type]
    assert len(res) == 1 and not res[0].ok and "no 'meta'" in res[0].detail


def test_check_torch_and_dot(tmp_path):
    import torch

    enc = _broken(lambda items, role, k: torch.from_numpy(eb.hashed(items, 4)).to(torch.bfloat16).float(),
                  similarity="dot")
    r = _by_name(check_encoder(enc, n_items=4, tmp_dir=tmp_path))
    assert all(x.ok for x in r.values()), r
    assert "torch" in r["dtype"].detail and "dot" in r["normalisation"].detail


def test_check_text_only_and_bad_meta(tmp_path):
    enc = _broken(lambda items, role, k: eb.hashed(items, 4))
    enc.meta = EncoderMeta(name="t", modalities=("text",), needs_pixels=False)
    r = _by_name(check_encoder(enc, n_items=3, tmp_dir=tmp_path))
    assert all(x.ok for x in r.values()) and "probe-t2t" in r["encode"].detail
    bad = EncoderMeta(name="t")  # EncoderMeta refuses these values; check reports a meta changed after the fact
    object.__setattr__(bad, "modalities", ("audio",))
    object.__setattr__(bad, "similarity", "l2")
    enc.meta = bad
    r = _by_name(check_encoder(enc, tmp_dir=tmp_path))
    assert not r["meta"].ok and "similarity 'l2'" in r["meta"].detail and "encode" not in r


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("similarity", "euclid", "'cosine', 'dot'"),
        ("similarity", "Cosine", "'cosine', 'dot'"),
        ("modalities", ("txt",), "'text', 'image'"),
        ("modalities", (), "'text', 'image'"),
        ("modalities", ("text", "audio"), "'text', 'image'"),
        ("modalities", "text", "'text', 'image'"),
        ("dim", 0, "a positive integer or None"),
        ("dim", -3, "a positive integer or None"),
        ("dim", 8.0, "a positive integer or None"),
        ("dim", True, "a positive integer or None"),
        ("batch_size", 0, "a positive integer"),
        ("batch_size", None, "a positive integer"),
        ("batch_size", "64", "a positive integer"),
        ("name", "", "a non-empty string"),
        ("name", None, "a non-empty string"),
        ("revision", None, "a string"),
        ("revision", 3, "a string"),
    ],
)
def test_encoder_meta_rejects_invalid_values(field, value, accepted):
    """Audit 16b item 2: a value EncoderMeta would act on silently (similarity 'euclid' taken as dot,
    modalities without 'image' never given images…) is refused with one line naming the field, the
    value and what is accepted."""
    kw = {"name": "m", field: value}
    with pytest.raises(EncoderError) as ei:
        EncoderMeta(**kw)
    msg = str(ei.value)
    assert "\n" not in msg and f"{field} {value!r}" in msg and accepted in msg, msg


def test_encoder_meta_accepts_valid_values():
    m = EncoderMeta(name="m", modalities=["image"], dim=np.int64(16), batch_size=np.int32(8), similarity="dot")  # type: ignore[arg-type]
    assert m.modalities == ("image",) and m.dim == 16 and type(m.dim) is int and type(m.batch_size) is int
    assert EncoderMeta(name="m").to_dict()["modalities"] == ["text", "image"]
    assert EncoderMeta(name="m", modalities=("image", "text"), dim=None).dim is None
    for enc in (RandomEncoder(dim=4), ConstantEncoder(dim=4), OracleEncoder()):  # the built-ins still build
        assert isinstance(enc.meta, EncoderMeta)


def test_invalid_encoder_meta_is_one_cli_line(tmp_path):
    """`mrbench evaluate -e bad.py:Enc` with an invalid meta: one line naming the encoder, the field,
    the value and the accepted values; no traceback."""
    import subprocess

    p = tmp_path / "bad.py"
    p.write_text(
        "import numpy as np\n"
        "from mrbench.encoders.base import EncoderMeta\n"
        "class Enc:\n"
        "    def __init__(self):\n"
        "        self.meta = EncoderMeta(name='bad', similarity='euclid', needs_pixels=False)\n"
        "    def encode(self, items, *, role, task):\n"
        "        return np.ones((len(items), 4), np.float32)\n"
    )
    r = subprocess.run([sys.executable, "-m", "mrbench", "evaluate", "-b", "mrbench-synth-tiny", "-e", f"{p}:Enc",
                        "--no-cache"], capture_output=True, text=True, timeout=120)
    err = r.stderr.strip()
    assert r.returncode == 2 and "Traceback" not in err, err
    last = err.splitlines()[-1]  # earlier lines: the benchmark being built on first use
    assert last.startswith("error: ") and sum(x.startswith("error") for x in err.splitlines()) == 1, err
    assert f"{p}:Enc" in last and "similarity 'euclid'" in last and "'cosine', 'dot'" in last, err


def test_file_encoder_cache_follows_its_source(tmp_path, monkeypatch):
    """A 'file.py:Class' encoder's embedding cache is keyed by the file's content: a re-run with the
    file unchanged hits the cache, one after an edit encodes again (no stale embeddings, even when
    meta.revision was not bumped)."""
    import shutil

    import mrbench
    from mrbench.encoders.registry import source_digest

    monkeypatch.setenv("MRBENCH_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "mine.py"
    shutil.copy(PLUGIN, src)
    spec = f"{src}:MyEncoder"
    kw = dict(tasks=["t2i"], grain_sensitivity=False)
    first = mrbench.evaluate("mrbench-synth-tiny", spec, **kw)
    assert first.data["cache"]["encoded"] > 0
    again = mrbench.evaluate("mrbench-synth-tiny", spec, **kw)
    assert again.data["cache"]["encoded"] == 0
    before = source_digest(spec)
    src.write_text(src.read_text() + "\n# edited\n")
    assert source_digest(spec) != before and source_digest("random") is None
    edited = mrbench.evaluate("mrbench-synth-tiny", spec, **kw)
    assert edited.data["cache"]["hits"] == 0 and edited.data["cache"]["encoded"] == first.data["cache"]["encoded"]


@pytest.fixture
def drop_tmp_modules(tmp_path):
    """Forget, after the test, the modules it imported from its tmp_path."""
    yield
    for name, m in list(sys.modules.items()):
        f = getattr(m, "__file__", None)
        if isinstance(f, str) and Path(f).resolve().is_relative_to(tmp_path.resolve()):
            del sys.modules[name]


_LOCAL_ENC = """
import numpy as np
from mrbench.encoders.base import EncoderMeta
import {helper}
from {pkg} import util


class Enc:
    def __init__(self):
        self.meta = EncoderMeta(name="local-imports", revision="v1", dim=8, needs_pixels=False)

    def encode(self, items, *, role, task):
        s = {helper}.SCALE * util.SHIFT
        return np.asarray([[len(it.text or "") + s + j for j in range(8)] for it in items], np.float32)
"""


def test_file_encoder_cache_follows_its_local_imports(tmp_path, monkeypatch, drop_tmp_modules):
    """Audit 16b item 1: a 'file.py:Class' encoder importing a module of its own directory (or a
    package there) is keyed by that module's source too: editing the helper encodes again instead of
    serving the embeddings of the old helper (a new process, as a re-run of the CLI), and a re-run in
    the same process loads the edited helper (the code that runs is the code the key hashes)."""
    import mrbench
    from mrbench.encoders.registry import source_digest

    d = tmp_path / "enc_dir"
    (d / "localpkg16").mkdir(parents=True)
    (d / "localpkg16" / "__init__.py").write_text("")
    (d / "localpkg16" / "util.py").write_text("SHIFT = 1\n")
    (d / "helper16.py").write_text("SCALE = 2\n")
    (d / "enc.py").write_text(_LOCAL_ENC.format(helper="helper16", pkg="localpkg16"))
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setenv("MRBENCH_CACHE", str(tmp_path / "cache"))
    spec = f"{d / 'enc.py'}:Enc"
    kw = dict(tasks=["t2i"], grain_sensitivity=False)

    first = mrbench.evaluate("mrbench-synth-tiny", spec, **kw)
    assert first.data["cache"]["encoded"] > 0
    before = source_digest(spec)
    assert before == source_digest(spec)  # deterministic
    assert mrbench.evaluate("mrbench-synth-tiny", spec, **kw).data["cache"]["encoded"] == 0

    (d / "helper16.py").write_text("SCALE = 3\n")
    assert source_digest(spec) != before  # what a fresh process (the CLI re-run) keys by
    edited = mrbench.evaluate("mrbench-synth-tiny", spec, **kw)
    assert edited.data["cache"]["hits"] == 0 and edited.data["cache"]["encoded"] == first.data["cache"]["encoded"]
    assert sys.modules["helper16"].SCALE == 3  # reloaded: the new helper is what ran
    mid = source_digest(spec)

    (d / "localpkg16" / "util.py").write_text("SHIFT = 5\n")  # a module of a package beside it
    assert source_digest(spec) != mid
    assert mrbench.evaluate("mrbench-synth-tiny", spec, **kw).data["cache"]["hits"] == 0
    assert sys.modules["localpkg16.util"].SHIFT == 5

    from mrbench.encoders.registry import local_sources

    assert [rel for rel, _ in local_sources(d / "enc.py")] == ["helper16.py", "localpkg16/__init__.py",
                                                              "localpkg16/util.py"]


def test_file_encoder_source_digest_scope(tmp_path, monkeypatch, drop_tmp_modules):
    """The local modules are those under the file's directory, or under its top package directory
    when the file sits in a package; modules elsewhere (site-packages, mrbench, another directory)
    are not hashed, and a file without local imports keeps the file-only digest (existing caches
    stay valid)."""
    import hashlib

    from mrbench.encoders.registry import get_encoder, local_sources, source_digest

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "enc.py").write_text(_LOCAL_ENC.replace("import {helper}\n", "").replace(
        "from {pkg} import util\n", "").replace("{helper}.SCALE * util.SHIFT", "1"))
    spec = f"{plain / 'enc.py'}:Enc"
    get_encoder(spec)
    assert local_sources(plain / "enc.py") == []
    assert source_digest(spec) == hashlib.sha256((plain / "enc.py").read_bytes()).hexdigest()[:12]

    # proj/top16/sub/enc.py in a package: a module of the top package is local, one of proj/ is not
    proj = tmp_path / "proj"
    (proj / "top16" / "sub").mkdir(parents=True)
    (proj / "top16" / "__init__.py").write_text("")
    (proj / "top16" / "sub" / "__init__.py").write_text("")
    (proj / "top16" / "common.py").write_text("SCALE = 1\n")
    (proj / "outside16.py").write_text("SHIFT = 1\n")
    (proj / "top16" / "sub" / "enc.py").write_text(
        _LOCAL_ENC.replace("import {helper}", "from top16 import common as {helper}").format(
            helper="common", pkg="outside16").replace("from outside16 import util", "import outside16 as util"))
    monkeypatch.syspath_prepend(str(proj))
    pspec = f"{proj / 'top16' / 'sub' / 'enc.py'}:Enc"
    get_encoder(pspec)
    rels = [rel for rel, _ in local_sources(proj / "top16" / "sub" / "enc.py")]
    assert rels == ["__init__.py", "common.py"]
    before = source_digest(pspec)
    (proj / "outside16.py").write_text("SHIFT = 2\n")
    assert source_digest(pspec) == before
    (proj / "top16" / "common.py").write_text("SCALE = 2\n")
    assert source_digest(pspec) != before
    assert all(not r.startswith(("mrbench/", "numpy/")) for r in rels)


def test_encoder_kwargs_are_in_the_cache_key(tmp_path):
    """A checkpoint passed by path as an encoder kwarg is part of the cache namespace (a different
    path, a different cache); its content is not, which is why the README asks for a revision bump."""
    from mrbench.pipeline import open_cache

    a = open_cache("x.py:Enc", "v1", {"ckpt": "/m/a.pt"}, tmp_path)
    b = open_cache("x.py:Enc", "v1", {"ckpt": "/m/b.pt"}, tmp_path)
    c = open_cache("x.py:Enc", "v2", {"ckpt": "/m/a.pt"}, tmp_path)
    assert len({a.namespace, b.namespace, c.namespace}) == 3


def test_local_sources_realpath_matches_os_realpath(tmp_path, monkeypatch):
    """The memoised real path of a module file (one realpath per directory, a link check per file)
    is ``os.path.realpath`` of it: through a linked directory, a linked file, ``..`` after a link and
    a relative path."""
    import os

    from mrbench.encoders.registry import _realpath

    (tmp_path / "real" / "pkg").mkdir(parents=True)
    (tmp_path / "real" / "pkg" / "m.py").write_text("")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "t.py").write_text("")
    (tmp_path / "dirlink").symlink_to(tmp_path / "real" / "pkg", target_is_directory=True)
    (tmp_path / "real" / "pkg" / "flink.py").symlink_to(tmp_path / "other" / "t.py")
    monkeypatch.chdir(tmp_path)
    memo: dict[str, str] = {}
    for f in [str(tmp_path / "real" / "pkg" / "m.py"), str(tmp_path / "dirlink" / "m.py"),
              str(tmp_path / "dirlink" / "flink.py"), str(tmp_path / "dirlink" / ".." / "pkg" / "m.py"),
              "dirlink/m.py", "real/pkg/flink.py", "m.py", str(tmp_path / "real" / "pkg" / "..")]:
        assert _realpath(f, memo) == os.path.realpath(f), f
