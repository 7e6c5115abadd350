"""Pixel cache (preprocessed tensors on disk), the bounded decode queue and the GPU decode path.

The GPU path runs here on the CPU (``torchvision.io.decode_jpeg(device="cpu")``, with
``harness._gpu_decode_device`` patched); ``test_gpu_decode_on_cuda`` needs a CUDA device.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from mrbench.data.schema import Benchmark, Candidate, Query, Task
from mrbench.encoders import harness
from mrbench.encoders.base import EncoderMeta
from mrbench.encoders.harness import EncodeStats, encode_items
from mrbench.encoders.pixel_cache import (
    PIXEL_CACHE_ENV,
    PixelCache,
    describe,
    resolve_pixel_cache,
    transform_fingerprint,
)
from mrbench.errors import BenchmarkError

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]
FP = "ab" * 16


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(harness, "_WARNED", set())
    monkeypatch.delenv(PIXEL_CACHE_ENV, raising=False)


# ---------------------------------------------------------------------------------------------------
# toy transforms and encoders (module level: picklable for decode processes)


class PilResize:
    """PIL-only transform → uint8 [3, size, size]."""

    def __init__(self, size: int = 6) -> None:
        self.size = size

    def __call__(self, image):
        arr = np.asarray(image.convert("RGB").resize((self.size, self.size)), dtype=np.uint8)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))


def pil_stages(size: int = 8):
    """open_clip's own PIL-stage transform (PilToUint8 over a torchvision Compose), at ``size`` px."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

    from mrbench.encoders.openclip import PilToUint8

    return PilToUint8(Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size)]))


class PixEncoder:
    """Embeds each image from its prepared pixels (dot similarity: outputs show the pixels)."""

    def __init__(self, transform=None, *, as_torch: bool = True, name: str = "pix", revision: str = "r1",
                 device: str = "cpu", batch_size: int = 3) -> None:
        self.tr = transform if transform is not None else PilResize()
        self.as_torch = as_torch
        self.device = device
        self.prepared = 0
        self.seen: dict[str, np.ndarray] = {}
        self.meta = EncoderMeta(name=name, revision=revision, similarity="dot", needs_pixels=True,
                                batch_size=batch_size)

    def prepare_image(self, image):
        self.prepared += 1
        arr = self.tr(image)
        return torch.from_numpy(arr) if self.as_torch else arr

    def pixel_transform(self):
        return self.tr

    def encode(self, items, *, role, task):
        out = np.zeros((len(items), 5), np.float32)
        for i, it in enumerate(items):
            if it.image_path is None:
                out[i, 4] = 1
                continue
            pix = it.pixels
            assert pix is not None, "the harness must hand over pixels"
            a = pix.cpu().numpy() if hasattr(pix, "cpu") else np.asarray(pix)
            self.seen[it.id] = a.copy()
            f = a.astype(np.float32)
            out[i, :3] = f.mean(axis=(1, 2))
            out[i, 3] = f.std()
        return out


class NoHookEncoder(PixEncoder):
    """prepare_image only: no pixel_transform, no transform_id."""

    pixel_transform = None  # type: ignore[assignment]


def _bench(root: Path, n: int = 7, fmt: str = "JPEG", text_every: int = 0) -> Benchmark:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    cs = []
    for i in range(n):
        f = fmt if fmt != "mixed" else ("PNG" if i % 3 == 2 else "JPEG")
        h, w = 20 + 3 * i, 30 + 2 * i
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        rel = f"images/c{i}.{'jpg' if f == 'JPEG' else 'png'}"
        im.save(root / rel, format=f, **({"quality": 90} if f == "JPEG" else {}))
        cs.append(Candidate(id=f"c{i}", image=rel))
    if text_every:
        cs += [Candidate(id=f"t{i}", text=f"text {i}") for i in range(0, n, text_every)]
    qs = [Query(id="q0", text="picture")]
    t = Task(name="t2i", query_modality="text", candidate_modality="image", queries=qs, candidates=cs,
             qrels={"q0": {"c0": 1}})
    return Benchmark(name="px", version="1", tasks=[t], root=root)


def _encode(enc, bench, **kw):
    task = bench.tasks[0]
    kw.setdefault("num_workers", 2)
    return encode_items(enc, task.candidates, role="candidate", task=task, bench=bench, **kw)


class _CountDecodes:
    def __init__(self, monkeypatch):
        self.n = 0
        real, lock = harness.load_rgb, threading.Lock()

        def counting(path, item_id):
            with lock:
                self.n += 1
            return real(path, item_id)

        monkeypatch.setattr(harness, "load_rgb", counting)


# ---------------------------------------------------------------------------------------------------
# the store


def test_checksum_is_the_wrapping_sum_of_little_endian_words():
    from mrbench.encoders.pixel_cache import checksum

    def reference(arr):
        b = np.ascontiguousarray(arr).tobytes()
        b += bytes(-len(b) % 8)
        return sum(int.from_bytes(b[k : k + 8], "little") for k in range(0, len(b), 8)) % (1 << 64)

    rng = np.random.default_rng(3)
    big = np.full((3, 224, 224), 255, dtype=np.uint8)  # the sum wraps around 2**64 many times
    for arr in (big, rng.integers(0, 256, (3, 5, 7), dtype=np.uint8), rng.standard_normal((4, 3)).astype(np.float32),
                rng.integers(0, 256, (9, 6), dtype=np.uint8)[:, ::2], np.zeros(0, np.uint8), np.arange(13, dtype=np.uint8)):
        assert checksum(arr) == reference(arr)
    img = rng.integers(1, 256, (3, 224, 224), dtype=np.uint8)
    c = checksum(img)
    for damage in ("flip", "zeros", "tail"):
        bad = img.copy().reshape(-1)
        if damage == "flip":
            bad[77_777] ^= 0x10
        elif damage == "zeros":
            bad[8192:12288] = 0  # a lost 4 KiB block
        else:
            bad[-1] ^= 1
        assert checksum(bad.reshape(img.shape)) != c, damage


def test_round_trip_bitwise(tmp_path):
    from mrbench.encoders.qwen2vl import PreparedImage

    rng = np.random.default_rng(1)
    values = {
        "a" * 64: rng.integers(0, 256, (3, 7, 5), dtype=np.uint8),
        "b" * 64: rng.standard_normal((3, 4, 4)).astype(np.float32),
        "c" * 64: torch.from_numpy(rng.standard_normal((2, 3)).astype(np.float64)),
        "d" * 64: torch.tensor(1.5),  # 0-d
        "e" * 64: PreparedImage(rng.standard_normal((4, 6)).astype(np.float32), np.array([[1, 2, 2]])),
        "f" * 64: torch.ones(2, dtype=torch.bfloat16),  # not storable: skipped
        "0" * 64: [1, 2, 3],  # not storable: skipped
    }
    cache = PixelCache(tmp_path)
    assert cache.put_many(FP, values) is not None
    assert cache.put_many(FP, {"a" * 64: values["a" * 64]}) is None  # already stored
    fresh = PixelCache(tmp_path)  # reads the shards from disk
    assert fresh.contains(FP, list(values)) == [True] * 5 + [False, False]
    got = fresh.get_many(FP, list(values))
    for k in "abd":
        v = values[k * 64]
        g = got["abcdef0".index(k)]
        assert type(g) is type(v) and g.dtype == v.dtype and g.shape == v.shape
        assert (g == v).all() if isinstance(v, np.ndarray) else torch.equal(g, v)
    assert isinstance(got[2], torch.Tensor) and torch.equal(got[2], values["c" * 64])
    assert isinstance(got[4], PreparedImage)
    np.testing.assert_array_equal(got[4].pixel_values, values["e" * 64].pixel_values)
    np.testing.assert_array_equal(got[4].grid_thw, values["e" * 64].grid_thw)
    assert got[5] is None and got[6] is None
    assert fresh.stats.hits == 5 and fresh.stats.misses == 2
    d = fresh.directory(FP)
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_resolve_switch(tmp_path, monkeypatch):
    assert resolve_pixel_cache(None) is None  # default: off
    monkeypatch.setenv(PIXEL_CACHE_ENV, "0")
    assert resolve_pixel_cache(None) is None
    monkeypatch.setenv(PIXEL_CACHE_ENV, "1")
    c = resolve_pixel_cache(None)
    assert c is not None and c.root == Path(os.environ["MRBENCH_HOME"]) / "pixels"
    assert resolve_pixel_cache(None) is c  # one instance per root
    assert resolve_pixel_cache(False) is None  # the argument wins over the environment
    monkeypatch.setenv(PIXEL_CACHE_ENV, str(tmp_path / "px"))
    assert resolve_pixel_cache(None).root == tmp_path / "px"
    assert resolve_pixel_cache(tmp_path / "other").root == tmp_path / "other"
    own = PixelCache(tmp_path)
    assert resolve_pixel_cache(own) is own


def test_switch_words_and_paths(tmp_path, monkeypatch):
    """$MRBENCH_PIXEL_CACHE: on/off words in any case turn it on (default root) or off; a value that
    looks like a path is that directory; any other word (a misspelt switch) is refused with one line
    listing the accepted values, and never becomes a directory of that name."""
    from mrbench.errors import MrbenchError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = Path(os.environ["MRBENCH_HOME"]) / "pixels"
    for off in ("", "  ", "0", "false", "No", "OFF", "disable", "Disabled", "none"):
        monkeypatch.setenv(PIXEL_CACHE_ENV, off)
        assert resolve_pixel_cache(None) is None, off
    for on in ("1", "TRUE", "yes", "On", "enable", "enabled"):
        monkeypatch.setenv(PIXEL_CACHE_ENV, on)
        assert resolve_pixel_cache(None).root == default, on
    for path, root in (("./px", Path("./px")), ("px/", Path("px")), ("sub/px", Path("sub/px")),
                       ("~/px", tmp_path / "home" / "px"), (".px", Path(".px")), (str(tmp_path / "abs"), tmp_path / "abs")):
        monkeypatch.setenv(PIXEL_CACHE_ENV, path)
        assert resolve_pixel_cache(None).root == root, path
    for bad in ("disabled2", "cache", "no-thanks", "2", "enabld"):
        monkeypatch.setenv(PIXEL_CACHE_ENV, bad)
        with pytest.raises(MrbenchError) as ei:
            resolve_pixel_cache(None)
        msg = str(ei.value)
        assert "\n" not in msg and f"$MRBENCH_PIXEL_CACHE={bad!r}: expected" in msg, msg
        for word in ("1/true/yes/on/enable/enabled", "0/false/no/off/disable/disabled/none", "starting with '~' or '.'"):
            assert word in msg, msg
        assert not (tmp_path / bad).exists()
    assert resolve_pixel_cache(False) is None  # the argument wins over the environment
    assert resolve_pixel_cache("cache").root == Path("cache")  # (an explicit path argument is a path)


def test_a_misspelt_switch_is_one_line_at_the_cli(small_bench, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mrbench.cli.app import app

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["evaluate", "-b", str(small_bench.root), "-e", "contrastive-tiny", "--no-cache", "-q",
                                 "--no-sensitivity"], env={PIXEL_CACHE_ENV: "disabled2"})
    assert r.exit_code != 0, r.output
    err = r.stderr.strip()
    assert err.startswith("error: $MRBENCH_PIXEL_CACHE='disabled2': expected") and "\n" not in err, r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "disabled2").exists()


def test_a_file_where_the_pixel_cache_should_be_is_one_line(tmp_path, monkeypatch):
    from mrbench.errors import MrbenchError

    f = tmp_path / "not-a-dir"
    f.write_text("x")
    with pytest.raises(MrbenchError, match=r"not-a-dir: a file, so it cannot hold the pixel cache; point the pixel "
                                           r"cache path at a directory") as ei:
        resolve_pixel_cache(f)
    assert "\n" not in str(ei.value)
    monkeypatch.setenv(PIXEL_CACHE_ENV, str(f))
    with pytest.raises(MrbenchError, match=r"point \$MRBENCH_PIXEL_CACHE=.*not-a-dir at a directory \(1 for the default"):
        resolve_pixel_cache(None)


# ---------------------------------------------------------------------------------------------------
# fingerprints


def test_fingerprint_changes_with_the_transform():
    fp = lambda enc, tr=None, **kw: transform_fingerprint(enc, tr if tr is not None else enc.tr, **kw)[0]  # noqa: E731
    base = fp(PixEncoder(PilResize(6)))
    assert base == fp(PixEncoder(PilResize(6)))  # deterministic
    assert base != fp(PixEncoder(PilResize(7)))  # an attribute
    assert base != fp(PixEncoder(PilResize(6), revision="r2"))
    assert base != fp(PixEncoder(PilResize(6), name="other"))
    assert base != fp(PixEncoder(PilResize(6)), decoder="torchvision.io.decode_jpeg")
    a, b = pil_stages(8), pil_stages(8)
    assert fp(PixEncoder(a)) == fp(PixEncoder(b))
    from torchvision.transforms import InterpolationMode

    b.pil_stage.transforms[0].interpolation = InterpolationMode.BILINEAR
    assert fp(PixEncoder(a)) != fp(PixEncoder(b))

    def f1(x):
        return x + 1

    def f2(x):
        return x + 2

    f2.__qualname__ = f1.__qualname__
    assert describe(f1) != describe(f2)  # same name, other code
    enc = PixEncoder()
    enc.transform_id = "my-transform-v1"
    with_id = fp(enc)
    enc.tr = PilResize(9)
    assert fp(enc) == with_id  # a declared transform_id is the encoder's promise
    enc.transform_id = "my-transform-v2"
    assert fp(enc) != with_id
    with pytest.raises(ValueError):
        transform_fingerprint(NoHookEncoder(), None)


_FP_SCRIPT = textwrap.dedent("""
    import functools, sys
    from mrbench.encoders.base import EncoderMeta
    from mrbench.encoders.pixel_cache import transform_fingerprint

    def scale(x, k=2):
        return x * k if x not in {"a", "b", "c"} else x

    class T:
        def __init__(self, extra):
            self.modes = {"RGB", "L", "RGBA", "P", "CMYK", extra}
            self.table = {"b": 1, "a": (2, 3.5), "c": None, extra: [extra]}
            self.fn = functools.partial(scale, k=3)
            self.frozen = frozenset({"x", "y", "z"})

        def __call__(self, im):
            return im

    class E:
        meta = EncoderMeta(name="e", revision="r")

    print(transform_fingerprint(E(), T(sys.argv[1]))[0])
""")


def test_fingerprint_is_process_independent():
    """No memory address or hash-seed dependent ordering (sets, frozenset constants) enters it."""
    def run(seed: str, extra: str) -> str:
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run([sys.executable, "-c", _FP_SCRIPT, extra], env=env, capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    fps = {run(seed, "X") for seed in ("1", "2", "3")}
    assert len(fps) == 1 and len(next(iter(fps))) == 32
    assert run("1", "Y") not in fps


# ---------------------------------------------------------------------------------------------------
# the harness with the cache


@pytest.mark.parametrize("as_torch", [True, False])
def test_warm_run_decodes_nothing_and_outputs_are_identical(tmp_path, monkeypatch, as_torch):
    bench = _bench(tmp_path / "b", n=7, text_every=3)
    ref_enc = PixEncoder(as_torch=as_torch)
    ref = _encode(ref_enc, bench)  # cache off (the default)
    assert not (tmp_path / "px").exists()
    counter = _CountDecodes(monkeypatch)
    cold_enc, cold_stats = PixEncoder(as_torch=as_torch), EncodeStats()
    cold = _encode(cold_enc, bench, pixel_cache=tmp_path / "px", stats=cold_stats)
    assert counter.n == 7 and cold_enc.prepared == 7
    assert (cold_stats.pixel_cache_hits, cold_stats.pixel_cache_misses) == (0, 7)
    warm_enc, warm_stats = PixEncoder(as_torch=as_torch), EncodeStats()
    warm = _encode(warm_enc, bench, pixel_cache=PixelCache(tmp_path / "px"), stats=warm_stats)  # fresh index
    assert counter.n == 7 and warm_enc.prepared == 0  # nothing decoded, nothing transformed
    assert (warm_stats.pixel_cache_hits, warm_stats.pixel_cache_misses) == (7, 0)
    np.testing.assert_array_equal(cold, ref)
    np.testing.assert_array_equal(warm, ref)
    for k, v in ref_enc.seen.items():  # the very same pixels, bitwise
        assert warm_enc.seen[k].dtype == v.dtype
        np.testing.assert_array_equal(warm_enc.seen[k], v)
    d = next((tmp_path / "px").iterdir())
    assert d.name.startswith("pix-") and (d / "transform.json").is_file()
    # inline decoding (no threads) and the environment switch give the same
    monkeypatch.setenv(PIXEL_CACHE_ENV, str(tmp_path / "px"))
    env_stats = EncodeStats()
    np.testing.assert_array_equal(_encode(PixEncoder(as_torch=as_torch), bench, num_workers=0, stats=env_stats), ref)
    assert env_stats.pixel_cache_hits == 7 and counter.n == 7


def test_process_workers_with_cache(tmp_path):
    bench = _bench(tmp_path / "b", n=6)
    ref = _encode(PixEncoder(), bench, workers="thread")
    stats = EncodeStats()
    cold = _encode(PixEncoder(), bench, workers="process", pixel_cache=tmp_path / "px", stats=stats)
    warm = _encode(PixEncoder(), bench, workers="process", pixel_cache=tmp_path / "px", stats=stats)
    thread_warm = _encode(PixEncoder(), bench, workers="thread", pixel_cache=tmp_path / "px", stats=stats)
    for out in (cold, warm, thread_warm):
        np.testing.assert_array_equal(out, ref)
    assert (stats.pixel_cache_misses, stats.pixel_cache_hits) == (6, 12)


def test_process_workers_refusal_says_which_condition_failed(tmp_path, monkeypatch):
    """workers='process' that cannot be honoured names the condition that failed, in the Python
    API's and the CLI's spelling, and the alternative as both."""
    from mrbench.errors import EncoderError

    bench = _bench(tmp_path / "b", n=2)

    class NoneTransform(PixEncoder):
        def pixel_transform(self):
            return None

    both = "decode processes (workers='process', --decode process) need "
    fix = "; use workers='thread' (--decode thread)"
    cases = [(PixEncoder(), 0, "num_workers (--workers) > 0, not 0"),
             (NoHookEncoder(), 2, "an encoder with pixel_transform(), which 'pix' has not"),
             (NoneTransform(), 2, "an encoder with pixel_transform() giving a transform, but that of 'pix' returned None"),
             (NoHookEncoder(), 0, "an encoder with pixel_transform(), which 'pix' has not; and num_workers (--workers) > 0, not 0")]
    for enc, n, unmet in cases:
        with pytest.raises(EncoderError) as ei:
            _encode(enc, bench, workers="process", num_workers=n)
        assert str(ei.value) == f"encoder 'pix': {both}{unmet}{fix}"
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(EncoderError, match=r"need Linux \(the fork start method\), not darwin; use workers='thread'"):
        _encode(PixEncoder(), bench, workers="process", num_workers=2)


def test_changed_transform_misses(tmp_path, monkeypatch):
    bench = _bench(tmp_path / "b", n=4)
    _encode(PixEncoder(PilResize(6)), bench, pixel_cache=tmp_path / "px")
    stats = EncodeStats()
    out = _encode(PixEncoder(PilResize(5)), bench, pixel_cache=tmp_path / "px", stats=stats)
    assert (stats.pixel_cache_hits, stats.pixel_cache_misses) == (0, 4)
    np.testing.assert_array_equal(out, _encode(PixEncoder(PilResize(5)), bench))
    assert len(list((tmp_path / "px").iterdir())) == 2


def test_encoder_without_transform_is_not_cached(tmp_path, caplog):
    bench = _bench(tmp_path / "b", n=3)
    stats = EncodeStats()
    with caplog.at_level(logging.WARNING):
        out = _encode(NoHookEncoder(), bench, pixel_cache=tmp_path / "px", stats=stats)
        _encode(NoHookEncoder(), bench, pixel_cache=tmp_path / "px")
    msgs = [r.getMessage() for r in caplog.records if "pixel cache" in r.getMessage()]
    assert len(msgs) == 1 and "neither pixel_transform() nor transform_id" in msgs[0]
    np.testing.assert_array_equal(out, _encode(NoHookEncoder(), bench))
    assert stats.pixel_cache_hits == stats.pixel_cache_misses == 0
    enc = NoHookEncoder()
    enc.transform_id = "resize-6"  # opting in by declaration
    _encode(enc, bench, pixel_cache=tmp_path / "px")
    stats = EncodeStats()
    enc2 = NoHookEncoder()
    enc2.transform_id = "resize-6"
    np.testing.assert_array_equal(_encode(enc2, bench, pixel_cache=tmp_path / "px", stats=stats), out)
    assert stats.pixel_cache_hits == 3 and enc2.prepared == 0


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_shard_warns_and_recomputes(tmp_path, caplog, monkeypatch, damage):
    bench = _bench(tmp_path / "b", n=6)
    ref = _encode(PixEncoder(), bench)
    _encode(PixEncoder(batch_size=3), bench, pixel_cache=tmp_path / "px")
    shards = sorted(next((tmp_path / "px").iterdir()).glob("shard-*.safetensors"))
    assert len(shards) == 2
    bad = shards[0]
    data = bytearray(bad.read_bytes())
    if damage == "truncate":  # the header no longer matches the file: found when indexing
        bad.write_bytes(bytes(data[: len(data) // 2]))
    else:  # a flipped byte in the tensor data: found by the checksum when reading
        data[-5] ^= 0xFF
        bad.write_bytes(bytes(data))
    counter = _CountDecodes(monkeypatch)
    stats, cache = EncodeStats(), PixelCache(tmp_path / "px")
    with caplog.at_level(logging.WARNING):
        out = _encode(PixEncoder(), bench, pixel_cache=cache, stats=stats)
    np.testing.assert_array_equal(out, ref)
    warned = [r.getMessage() for r in caplog.records if "corrupt shard" in r.getMessage()]
    assert len(warned) == 1 and bad.name in warned[0] and "\n" not in warned[0]
    assert counter.n == 3 and stats.pixel_cache_misses == 3 and stats.pixel_cache_hits == 3
    assert cache.stats.corrupt_shards == 1
    # recomputed entries went to a new shard: the next run (fresh index) hits everything
    stats2 = EncodeStats()
    np.testing.assert_array_equal(_encode(PixEncoder(), bench, pixel_cache=PixelCache(tmp_path / "px"),
                                          stats=stats2), ref)
    assert stats2.pixel_cache_hits == 6 and counter.n == 3


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from mrbench.encoders.pixel_cache import PixelCache
    root, seed = sys.argv[1], int(sys.argv[2])
    cache = PixelCache(root)
    for k in range(12):
        lo = 4 * k + seed
        cache.put_many("ab" * 16, {f"{j:064x}": np.full((3, 64, 64), j % 251, np.uint8) for j in range(lo, lo + 6)})
""")


def test_concurrent_writers(tmp_path, caplog):
    root = tmp_path / "px"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(s)], cwd=ROOT) for s in (0, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    cache = PixelCache(root)
    digests = [f"{j:064x}" for j in range(0, 4 * 11 + 2 + 6)]
    with caplog.at_level(logging.WARNING):
        assert all(cache.contains(FP, digests))
        got = cache.get_many(FP, digests)
    assert not [r for r in caplog.records if "pixel cache" in r.getMessage()]
    for j, v in enumerate(got):
        assert v is not None and v.shape == (3, 64, 64) and (v == j % 251).all()
    names = [p.name for p in cache.directory(FP).iterdir()]
    assert len(names) == 24 and all(n.startswith("shard-") and n.endswith(".safetensors") for n in names)


# ---------------------------------------------------------------------------------------------------
# bounded queue


def test_bounded_map_limits_in_flight_work():
    from concurrent.futures import ThreadPoolExecutor

    live, peak, lock = 0, 0, threading.Lock()

    def submitted(x):
        nonlocal live, peak
        with lock:
            live += 1
            peak = max(peak, live)
        return x * 2

    with ThreadPoolExecutor(2) as pool:
        out = []
        for y in harness._bounded_map(pool, submitted, range(100), window=8):
            with lock:
                live -= 1
            out.append(y)
    assert out == [2 * x for x in range(100)] and peak <= 8


def test_decode_keeps_two_batches_in_flight(tmp_path, monkeypatch):
    """At most the batch being encoded, the PREFETCH_BATCHES prepared ones and the one decoding after
    them are decoded ahead (memory stays flat)."""
    bench = _bench(tmp_path / "b", n=12)
    counter = _CountDecodes(monkeypatch)
    ahead = []

    class Spy(PixEncoder):
        def encode(self, items, *, role, task):
            ahead.append(counter.n - sum(len(c) for c in calls))
            calls.append(items)
            return super().encode(items, role=role, task=task)

    calls: list = []
    _encode(Spy(batch_size=2), bench, num_workers=2)
    from mrbench.encoders import harness

    assert max(ahead) <= 2 * (2 + harness.PREFETCH_BATCHES)  # batches of 2: this one, prepared, decoding


# ---------------------------------------------------------------------------------------------------
# how many decode workers a call starts


@pytest.fixture()
def pool_sizes(monkeypatch):
    """The ``max_workers`` of every decode process pool and thread pool created, on a machine of 2
    usable cores (a fresh persistent process pool, shut down afterwards)."""
    import concurrent.futures as cf

    sizes: dict[str, list[int]] = {"process": [], "thread": []}
    real_proc, real_thread = cf.ProcessPoolExecutor, harness.ThreadPoolExecutor

    class Proc(real_proc):
        def __init__(self, max_workers=None, *a, **kw):
            sizes["process"].append(max_workers)
            super().__init__(max_workers, *a, **kw)

    class Thread(real_thread):
        def __init__(self, max_workers=None, *a, **kw):
            if not kw.get("thread_name_prefix"):  # the call's decode/hash pool (not the single-thread helpers)
                sizes["thread"].append(max_workers)
            super().__init__(max_workers, *a, **kw)

    monkeypatch.setattr(cf, "ProcessPoolExecutor", Proc)
    monkeypatch.setattr(harness, "ThreadPoolExecutor", Thread)
    monkeypatch.setattr(harness, "usable_cores", lambda: 2)
    pool = harness._ForkPool(harness._worker_init)
    monkeypatch.setattr(harness, "_DECODE_POOL", pool)
    yield sizes
    pool.shutdown()


def test_decode_processes_are_capped_at_the_cores_and_the_images(tmp_path, pool_sizes, caplog):
    """--workers 300 with decode processes forks one per usable core (2 here), with one warning line
    naming --workers and the number used; a call with fewer images than that forks no more than
    there are images; the embeddings are those of the thread path."""
    bench = _bench(tmp_path / "b", n=6)
    ref = _encode(PixEncoder(), bench, workers="thread")
    with caplog.at_level(logging.WARNING, logger="mrbench.encoders.harness"):
        for _ in range(2):
            np.testing.assert_array_equal(_encode(PixEncoder(), bench, workers="process", num_workers=300), ref)
    assert pool_sizes["process"] == [2]  # the second call kept the pool
    msgs = [r.getMessage() for r in caplog.records if "--workers" in r.getMessage()]
    assert len(msgs) == 1 and "--workers 300" in msgs[0] and "using 2 decode processes" in msgs[0], msgs
    assert "\n" not in msgs[0]

    harness._DECODE_POOL.shutdown()
    one = _bench(tmp_path / "one", n=1)
    _encode(PixEncoder(), one, workers="process", num_workers=300)
    assert pool_sizes["process"][-1] == 1


def test_decode_threads_are_capped_at_the_cores_and_the_images(tmp_path, pool_sizes, caplog):
    """Threads: at most 4 per usable core (8 here, never below the default's 8), at most 64, never
    more than the call's image files; one warning line for a --workers above the cap, none for the
    default; the embeddings are unchanged."""
    bench = _bench(tmp_path / "b", n=12)
    ref = _encode(PixEncoder(), bench, workers="thread", num_workers=0)
    with caplog.at_level(logging.WARNING, logger="mrbench.encoders.harness"):
        np.testing.assert_array_equal(_encode(PixEncoder(), bench, workers="thread", num_workers=100_000), ref)
        np.testing.assert_array_equal(_encode(PixEncoder(), bench, workers="thread", num_workers=1000), ref)
        np.testing.assert_array_equal(_encode(PixEncoder(), bench, workers="thread"), ref)
    assert pool_sizes["thread"] == [8, 8, min(8, os.cpu_count() or 1)]
    msgs = [r.getMessage() for r in caplog.records if "--workers" in r.getMessage()]
    assert len(msgs) == 1 and "--workers 100000" in msgs[0] and "using 8 decode threads" in msgs[0], msgs
    small = _bench(tmp_path / "small", n=3)
    _encode(PixEncoder(), small, workers="thread", num_workers=300)
    assert pool_sizes["thread"][-1] == 3
    assert pool_sizes["process"] == []


def test_thread_cap_follows_the_usable_cores(monkeypatch):
    for cores, cap in ((1, 8), (2, 8), (4, 16), (16, 64), (96, 64)):
        monkeypatch.setattr(harness, "usable_cores", lambda c=cores: c)
        assert harness.max_decode_threads() == cap and harness.max_decode_processes() == cores
        assert harness.max_decode_threads() >= harness.default_workers()


# ---------------------------------------------------------------------------------------------------
# GPU decode (the logic, on the CPU)


def _cpu_gpu(monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.setattr(harness, "_gpu_decode_device", lambda enc: "cpu")


def test_gpu_path_logic_on_cpu(tmp_path, monkeypatch, caplog):
    _cpu_gpu(monkeypatch)
    bench = _bench(tmp_path / "b", n=7, fmt="mixed", text_every=3)  # c2, c5 are PNGs
    ref_enc = PixEncoder(pil_stages(8))
    ref = _encode(ref_enc, bench, workers="thread")
    counter = _CountDecodes(monkeypatch)
    enc, stats = PixEncoder(pil_stages(8)), EncodeStats()
    with caplog.at_level(logging.WARNING):
        out = _encode(enc, bench, workers="gpu", stats=stats)
    assert stats.gpu_decoded == 5 and counter.n == 2  # the JPEGs on the "device", the PNGs with Pillow
    warned = [r.getMessage() for r in caplog.records if "decode='gpu'" in r.getMessage()]
    assert len(warned) == 1 and "not JPEG" in warned[0]
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out[[2, 5]], ref[[2, 5]])  # Pillow fallbacks: identical
    np.testing.assert_allclose(out[:, :3], ref[:, :3], atol=3.0)  # tensor resize ≈ Pillow resize
    assert all(isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.shape == (3, 8, 8) for v in enc.seen.values())
    # inline (no threads) gives the same
    np.testing.assert_array_equal(_encode(PixEncoder(pil_stages(8)), bench, workers="gpu", num_workers=0), out)
    # with the pixel cache: its own fingerprint; a warm run decodes nothing
    s1, s2 = EncodeStats(), EncodeStats()
    np.testing.assert_array_equal(_encode(PixEncoder(pil_stages(8)), bench, workers="gpu",
                                          pixel_cache=tmp_path / "px", stats=s1), out)
    n = counter.n
    warm = _encode(PixEncoder(pil_stages(8)), bench, workers="gpu", pixel_cache=tmp_path / "px", stats=s2)
    np.testing.assert_array_equal(warm, out)
    assert (s1.gpu_decoded, s2.gpu_decoded, s2.pixel_cache_hits, counter.n) == (5, 0, 7, n)
    cpu_run = EncodeStats()
    _encode(PixEncoder(pil_stages(8)), bench, workers="thread", pixel_cache=tmp_path / "px", stats=cpu_run)
    assert cpu_run.pixel_cache_hits == 0  # GPU-decoded pixels are never served to the Pillow path


def test_gpu_explicit_tensor_transform_and_bad_jpeg(tmp_path, monkeypatch):
    _cpu_gpu(monkeypatch)
    bench = _bench(tmp_path / "b", n=4)
    calls = []

    class WithTensorTransform(PixEncoder):
        def tensor_transform(self):
            def tt(x):
                calls.append(tuple(x.shape))
                return x[:, :6, :6].contiguous()
            return tt

    stats = EncodeStats()
    _encode(WithTensorTransform(PilResize(6)), bench, workers="gpu", stats=stats)
    assert stats.gpu_decoded == 4 and calls[0] == (3, 20, 30)
    bad = tmp_path / "b" / "images" / "c1.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(BenchmarkError) as e:  # the device fails, Pillow gives the usual one-line error
        _encode(WithTensorTransform(PilResize(6)), bench, workers="gpu")
    assert "'c1'" in str(e.value) and str(bad) in str(e.value) and "\n" not in str(e.value)


def test_gpu_fallback_warning(tmp_path, monkeypatch, caplog):
    bench = _bench(tmp_path / "b", n=5)
    ref = _encode(PixEncoder(pil_stages(8)), bench, workers="thread")
    monkeypatch.setattr(harness, "_gpu_decode_device", lambda enc: None)  # no CUDA (as on this machine)
    stats = EncodeStats()
    with caplog.at_level(logging.WARNING):
        out = _encode(PixEncoder(pil_stages(8)), bench, workers="gpu", stats=stats)
        _encode(PixEncoder(pil_stages(8)), bench, workers="gpu")
    np.testing.assert_array_equal(out, ref)  # the CPU path, unchanged
    warned = [r.getMessage() for r in caplog.records if "decode='gpu'" in r.getMessage()]
    assert len(warned) == 1 and "CUDA" in warned[0] and "\n" not in warned[0]
    assert stats.gpu_decoded == 0
    _cpu_gpu(monkeypatch)  # a device, but a transform that is not tensor-capable
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(_encode(PixEncoder(PilResize(6)), bench, workers="gpu"),
                                      _encode(PixEncoder(PilResize(6)), bench, workers="thread"))
    assert any("no tensor-capable transform" in r.getMessage() for r in caplog.records)
    with pytest.raises(Exception, match="expected one of auto, thread, process, gpu"):
        harness.check_worker_kind("cuda")


def test_openclip_transform_is_tensor_capable():
    """open_clip's eval transform (Resize, CenterCrop, MaybeConvertMode) derives a tensor transform
    that matches its PIL stages closely."""
    pytest.importorskip("open_clip")
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, Resize

    from mrbench.encoders.openclip import PilToUint8

    try:
        from open_clip.transform import MaybeConvertMode

        stage = Compose([Resize(224), CenterCrop(224), MaybeConvertMode()])
    except ImportError:
        stage = Compose([Resize(224), CenterCrop(224)])

    class Fake(PixEncoder):
        def pixel_transform(self):
            return PilToUint8(stage)

    tt = harness.tensor_transform_of(Fake())
    assert isinstance(tt, harness.TensorStages) and len(tt.steps) == 2
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
    ref = PilToUint8(stage)(Image.fromarray(arr))
    got = tt(torch.from_numpy(arr).permute(2, 0, 1).contiguous()).numpy()
    assert got.shape == ref.shape == (3, 224, 224) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 2.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_decode_on_cuda(tmp_path):
    pytest.importorskip("torchvision")
    bench = _bench(tmp_path / "b", n=9, fmt="mixed")
    ref = _encode(PixEncoder(pil_stages(16)), bench, workers="thread")
    stats = EncodeStats()
    out = _encode(PixEncoder(pil_stages(16), device="cuda"), bench, workers="gpu", stats=stats)
    assert stats.gpu_decoded == 6
    np.testing.assert_allclose(out[:, :3], ref[:, :3], atol=4.0)


def test_shard_reader_matches_safetensors_for_every_dtype(tmp_path):
    from safetensors.numpy import load_file, save_file

    from mrbench.encoders.pixel_cache import _ST_DTYPES, _ShardReader

    rng = np.random.default_rng(0)
    arrays = {f"t{k}": (rng.standard_normal((2, 3, 5)) * 100).astype(np.dtype(dt))
              for k, dt in enumerate(_ST_DTYPES.values())}
    arrays["empty"] = np.zeros((0, 4), np.float32)
    p = tmp_path / "s.safetensors"
    save_file(arrays, str(p), metadata={"entries": "{}"})
    ref = load_file(str(p))
    with _ShardReader(p) as f:
        assert f.metadata == {"entries": "{}"}
        for name, arr in ref.items():
            got = f.get_array(name)
            assert got.dtype == arr.dtype and got.shape == arr.shape
            np.testing.assert_array_equal(got, arr)


def test_shard_reader_rejects_damaged_files(tmp_path):
    import json as _json
    import struct

    from safetensors.numpy import save_file

    from mrbench.encoders.pixel_cache import _ShardReader

    p = tmp_path / "s.safetensors"
    save_file({"a": np.arange(12, dtype=np.uint8).reshape(3, 4)}, str(p))
    good = p.read_bytes()
    n = struct.unpack("<Q", good[:8])[0]
    header = _json.loads(good[8 : 8 + n])

    def rewrite(h: dict) -> bytes:
        raw = _json.dumps(h).encode()
        return struct.pack("<Q", len(raw)) + raw + good[8 + n :]

    cases = {
        "bad header length": struct.pack("<Q", 10**9) + good[8:],
        "truncated": good[:-3],
        "outside": rewrite({**header, "a": {**header["a"], "data_offsets": [0, 10**6]}}),
        "shape": rewrite({**header, "a": {**header["a"], "shape": [4, 4]}}),
        "dtype": rewrite({**header, "a": {**header["a"], "dtype": "C64"}}),
        "dtype not a name": rewrite({**header, "a": {**header["a"], "dtype": ["U8"]}}),
        "negative sizes": rewrite({**header, "a": {**header["a"], "shape": [-3, -4]}}),
        "not an object": rewrite({**header, "a": ["U8"]}),
    }
    for what, data in cases.items():
        p.write_bytes(data)
        with pytest.raises(ValueError):
            with _ShardReader(p) as f:
                f.get_array("a")


# ---------------------------------------------------------------------------------------------------
# reading a batch straight into the staging buffer


def test_get_many_reads_into_given_arrays(tmp_path):
    cache = PixelCache(tmp_path)
    vals = {"a" * 64: np.arange(12, dtype=np.uint8).reshape(3, 2, 2), "b" * 64: np.ones((3, 2, 2), np.uint8),
            "c" * 64: np.zeros((2, 2), np.float32)}
    cache.put_many(FP, vals)
    buf = np.full((3, 3, 2, 2), 7, np.uint8)
    got = cache.get_many(FP, list(vals), into=[buf[0], buf[1], buf[2]])
    for k, (dg, v) in enumerate(vals.items()):
        np.testing.assert_array_equal(got[k], v)
    assert np.shares_memory(got[0], buf[0]) and np.shares_memory(got[1], buf[1])
    assert not np.shares_memory(got[2], buf)  # shape and dtype differ: read into an array of its own
    assert (buf[2] == 7).all()


class _HostStager:
    """The device stager's host side without a GPU: alloc() buffers, stage() records what it got."""

    def __init__(self, device):
        self.buffers: list[np.ndarray] = []
        self.in_place: list[bool] = []
        self.whole: list[bool] = []  # handed over as one buffer (no per-row checks), rows checked here

    def alloc(self, n, shape, dtype):
        self.buffers.append(np.empty((n, *shape), dtype))
        return self.buffers[-1]

    def stage(self, loaded, whole=None):
        vals = [np.asarray(p) for _, p in loaded]
        self.in_place.append(any(all(np.shares_memory(v, b[j]) for j, v in enumerate(vals)) and len(vals) == len(b)
                                 for b in self.buffers))
        if whole is not None:
            assert any(whole is b for b in self.buffers) and len(whole) == len(vals)
            assert all(np.shares_memory(v, whole[j]) and v.shape == whole[j].shape for j, v in enumerate(vals))
        self.whole.append(whole is not None)
        return loaded, None


def test_batches_found_whole_in_the_cache_are_read_into_the_staging_buffer(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "_LAYOUTS", {})
    bench = _bench(tmp_path / "b", n=7)
    ref = _encode(PixEncoder(batch_size=2), bench)
    _encode(PixEncoder(batch_size=2), bench, pixel_cache=tmp_path / "px")  # fills the cache
    stagers: list[_HostStager] = []
    monkeypatch.setattr(harness, "_DeviceStager", lambda device: stagers.append(_HostStager(device)) or stagers[-1])
    monkeypatch.setattr(harness, "_gpu_decode_device", lambda encoder: "cuda")
    enc = PixEncoder(batch_size=2)
    enc.pixels_on_device = True
    stats = EncodeStats()
    warm = _encode(enc, bench, pixel_cache=tmp_path / "px", stats=stats)
    np.testing.assert_array_equal(warm, ref)
    (st,) = stagers
    times = stats.to_dict()  # where preparing went: reading and staging (no texts to tokenise)
    assert times["read_wait_seconds"] > 0 and times["stage_seconds"] > 0 and times["tokenize_seconds"] == 0
    assert 0 < times["startup_seconds"] < times["total_seconds"]
    # the first batch teaches the layout (it is read before the second is started); the next ones
    # (2, 2, then 1 image) are read in place
    assert st.in_place == [False, True, True, True] and [b.shape[0] for b in st.buffers] == [2, 2, 1]
    assert st.whole == [False, True, True, True]  # those are handed to the stager as their buffer
    # a later call knows the layout from the start: every batch is read in place
    np.testing.assert_array_equal(_encode(enc, bench, pixel_cache=tmp_path / "px"), ref)
    assert stagers[-1].in_place == [True] * 4


def test_a_batch_read_into_the_staging_buffer_is_reordered_to_the_shards_file_order(tmp_path, monkeypatch):
    """Warm batches read in place are sorted by where their pixels lie, so each worker reads a run
    with one readinto; every item still gets its own embedding."""
    from mrbench.encoders import pixel_cache as pc

    monkeypatch.setattr(harness, "_LAYOUTS", {})
    bench = _bench(tmp_path / "b", n=8)
    ref = _encode(PixEncoder(batch_size=4), bench)
    _encode(PixEncoder(batch_size=4), bench, pixel_cache=tmp_path / "px")  # fills the cache, a shard per batch
    monkeypatch.setattr(harness, "_DeviceStager", lambda device: _HostStager(device))
    monkeypatch.setattr(harness, "_gpu_decode_device", lambda encoder: "cuda")
    learner = PixEncoder(batch_size=4)
    learner.pixels_on_device = True
    _encode(learner, bench, pixel_cache=tmp_path / "px")  # learns the layout
    reads: list[tuple[int, ...]] = []
    real = pc._ShardReader.read_into
    monkeypatch.setattr(pc._ShardReader, "read_into", lambda self, b, arr: reads.append(arr.shape) or real(self, b, arr))
    seen: list[list[str]] = []

    class Order(PixEncoder):
        def encode(self, items, *, role, task):
            seen.append([it.id for it in items])
            return super().encode(items, role=role, task=task)

    enc = Order(batch_size=4)
    enc.pixels_on_device = True
    np.testing.assert_array_equal(_encode(enc, bench, pixel_cache=tmp_path / "px", num_workers=0), ref)
    cache = PixelCache(tmp_path / "px")
    (fp_dir,) = (tmp_path / "px").iterdir()
    fp = fp_dir.name.rsplit("-", 1)[-1]
    cache.refresh(fp)
    digest = {c.id: harness.file_content_hash(bench.image_path(c.image)) for c in bench.tasks[0].candidates}
    natural = [[c.id for c in bench.tasks[0].candidates][k : k + 4] for k in (0, 4)]
    assert [sorted(b) for b in seen] == [sorted(b) for b in natural]
    for ids in seen:  # each batch in file order: one read of its 4 rows
        where = cache.locate(fp, [digest[i] for i in ids])
        assert where == sorted(where)
    assert seen != natural  # (the fixture's digests are not in item order)
    assert reads == [(4, *enc.seen["c0"].shape)] * 2


def test_get_many_reads_a_run_of_consecutive_rows_at_once_and_checks_each(tmp_path, monkeypatch, caplog):
    from mrbench.encoders import pixel_cache as pc

    cache = PixelCache(tmp_path)
    rng = np.random.default_rng(5)
    vals = {f"{k:02x}" * 32: rng.integers(0, 256, (3, 8, 8), dtype=np.uint8) for k in range(9)}
    cache.put_many(FP, vals)
    digests = list(vals)
    where = cache.locate(FP, digests)
    assert all(w is not None for w in where) and len({w[0] for w in where}) == 1
    assert cache.locate(FP, ["ff" * 32]) == [None]
    opened: list[object] = []
    real_init = pc._ShardReader.__init__
    monkeypatch.setattr(pc._ShardReader, "__init__", lambda self, *a: opened.append(a[0]) or real_init(self, *a))
    assert cache.locate(FP, digests) == where and opened == []  # the remembered header: no file opened
    in_file = [dg for _, dg in sorted(zip(where, digests))]
    reads: list[tuple[int, ...]] = []
    real = pc._ShardReader.read_into
    monkeypatch.setattr(pc._ShardReader, "read_into", lambda self, b, arr: reads.append(arr.shape) or real(self, b, arr))
    # rows against the file order: one read each; ``into`` as a list of rows or as one array
    for order, n_reads, as_array in ((in_file, 1, False), (in_file[::-1], 9, False), (in_file, 1, True),
                                     (in_file[::-1], 9, True)):
        reads.clear()
        buf = np.empty((9, 3, 8, 8), np.uint8)
        placed: list[int] = []
        got = cache.get_many(FP, order, buf if as_array else list(buf), placed)
        assert len(reads) == n_reads
        assert sorted(placed) == list(range(9))
        for dg, v, row in zip(order, got, buf):
            np.testing.assert_array_equal(v, vals[dg])
            assert np.shares_memory(v, row)
    # a slice of the array whose rows are read in two runs (a gap in the file between them)
    reads.clear()
    buf = np.empty((9, 3, 8, 8), np.uint8)
    order = in_file[:3] + in_file[5:]
    got = cache.get_many(FP, order, buf[2:2 + len(order)])
    assert len(reads) == 2
    for dg, v, row in zip(order, got, buf[2:]):
        np.testing.assert_array_equal(v, vals[dg])
        assert np.shares_memory(v, row)
    shard = next(tmp_path.rglob("shard-*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x40  # one bit of one tensor in the middle of the run
    shard.write_bytes(bytes(data))
    fresh = PixelCache(tmp_path)
    assert fresh.contains(FP, in_file) == [True] * 9  # indexed: the damage is inside the data
    with caplog.at_level(logging.WARNING):
        got = fresh.get_many(FP, in_file, list(np.empty((9, 3, 8, 8), np.uint8)))
    assert got == [None] * 9
    assert len([r for r in caplog.records if "checksum mismatch" in r.getMessage()]) == 1
    fresh = PixelCache(tmp_path)
    fresh.refresh(FP)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        got = fresh.get_many(FP, in_file, np.empty((9, 3, 8, 8), np.uint8))
    assert got == [None] * 9
    assert len([r for r in caplog.records if "checksum mismatch" in r.getMessage()]) == 1


# ---------------------------------------------------------------------------------------------------
# parsed shard headers are remembered


def test_warm_reads_parse_each_shard_header_once(tmp_path, monkeypatch):
    from mrbench.encoders import pixel_cache as pc

    parsed: list[str] = []
    real = pc._ShardReader._parse

    def counting(self, size, sig):
        parsed.append(self.f.name)
        return real(self, size, sig)

    monkeypatch.setattr(pc._ShardReader, "_parse", counting)
    checked: list[str] = []
    real_check = pc._ShardReader._check_layout
    monkeypatch.setattr(pc._ShardReader, "_check_layout", lambda self, name: checked.append(name) or real_check(self, name))
    cache = PixelCache(tmp_path)
    vals = {c * 64: np.full((3, 4), k, np.uint8) for k, c in enumerate("abcdef")}
    cache.put_many(FP, vals)
    for _ in range(3):  # every read of the shard, in slices as the harness reads a batch
        for dg in vals:
            np.testing.assert_array_equal(cache.get_many(FP, [dg])[0], vals[dg])
            np.testing.assert_array_equal(cache.get_many(FP, [dg], np.empty((1, 3, 4), np.uint8))[0], vals[dg])
    assert len(parsed) == 1
    assert sorted(checked) == sorted(vals)  # each tensor's offsets and shape checked once
    # a fresh cache object (another run) parses it again, once
    fresh = PixelCache(tmp_path)
    fresh.refresh(FP)
    np.testing.assert_array_equal(fresh.get_many(FP, list(vals))[2], vals["c" * 64])
    assert len(parsed) == 2


def test_a_shard_replaced_at_the_same_path_is_read_afresh(tmp_path):
    import os

    cache = PixelCache(tmp_path)
    first = cache.put_many(FP, {"a" * 64: np.arange(6, dtype=np.uint8).reshape(2, 3)})
    np.testing.assert_array_equal(cache.get_many(FP, ["a" * 64])[0], np.arange(6).reshape(2, 3))
    # another writer's shard with a different layout moved onto that name (a new inode and size)
    other = PixelCache(tmp_path / "other").put_many(FP, {"b" * 64: np.zeros(5, np.float32),
                                                          "a" * 64: np.full((2, 3), 9, np.uint8)})
    os.replace(other, first)
    np.testing.assert_array_equal(cache.get_many(FP, ["a" * 64])[0], np.full((2, 3), 9, np.uint8))


def test_header_memo_keeps_the_most_recently_used_shards(monkeypatch):
    from mrbench.encoders.pixel_cache import _HeaderMemo, _ShardHeader

    monkeypatch.setattr(_HeaderMemo, "MAX_SHARDS", 2)
    memo = _HeaderMemo()
    heads = {k: _ShardHeader((k, 1, 1), 8, 0, {}, {}) for k in range(3)}
    memo.put("s0", heads[0])
    memo.put("s1", heads[1])
    assert memo.get("s0", (0, 1, 1)) is heads[0]  # s0 used last: s1 goes first
    memo.put("s2", heads[2])
    assert memo.get("s1", (1, 1, 1)) is None and memo.get("s0", (0, 1, 1)) is heads[0]
    assert memo.get("s2", (9, 1, 1)) is None  # another file at that path


def test_a_pixel_cache_under_a_file_is_refused_by_evaluate_up_front(tmp_path, monkeypatch):
    """$MRBENCH_PIXEL_CACHE is checked before anything is encoded, even for an encoder that needs no
    pixels (it was checked only by the first call that did, after the text tasks' work, and a path
    under a file gave warnings instead of one line)."""
    import mrbench
    from mrbench.errors import MrbenchError

    f = tmp_path / "file.txt"
    f.write_text("x")
    monkeypatch.setenv("MRBENCH_PIXEL_CACHE", str(f / "pixels"))
    with pytest.raises(MrbenchError, match=r"under the file .*file.txt, so it cannot hold the pixel cache"):
        mrbench.evaluate("mrbench-synth-tiny", "random", cache=False)
    monkeypatch.setenv("MRBENCH_PIXEL_CACHE", "maybe")
    with pytest.raises(MrbenchError, match=r"MRBENCH_PIXEL_CACHE='maybe': expected"):
        mrbench.evaluate("mrbench-synth-tiny", "random", cache=False)

