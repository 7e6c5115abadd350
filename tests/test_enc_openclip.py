"""The ``openclip`` encoder family, offline, on a tiny random-weight model of the real open_clip architecture.

The tiny model (ViT: image 32, patch 8, width 32, 1 layer; text: width 32, 1 layer, context 16, the real
BPE vocabulary shipped with open_clip; embed dim 32) is built here with a fixed seed and saved as a
safetensors file and a torch ``.pt`` state dict, then loaded by path exactly like a real checkpoint.
``MRBENCH_OPENCLIP_CHECKPOINT`` (a weights file, with ``MRBENCH_OPENCLIP_ARCH``, default ViT-B-32, or an
open_clip model directory) enables the real-weights test (``pytest -m realweights``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

import mrbench  # noqa: E402
from mrbench.data.schema import TaskInfo  # noqa: E402
from mrbench.encoders.base import EncodeInput  # noqa: E402
from mrbench.encoders.harness import encode_items, load_rgb, validate_embeddings  # noqa: E402
from mrbench.encoders.openclip import FUSION, OpenClipEncoder  # noqa: E402
from mrbench.encoders.registry import get_encoder  # noqa: E402
from mrbench.encoders.runtime import file_revision  # noqa: E402
from mrbench.errors import EncoderError, MrbenchError, UnknownNameError  # noqa: E402

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TASK = TaskInfo(name="probe", query_modality="text", candidate_modality="image")
COLORS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (240, 240, 20), (0, 0, 0), (255, 255, 255), (128, 0, 128)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny reference model (seed 1234), its checkpoints and a few PNGs."""
    from PIL import Image
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("openclip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = open_clip.CLIP(**copy.deepcopy(TINY_CFG)).eval()
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(d / "tiny.safetensors"))
    torch.save(sd, d / "tiny.pt")
    images = []
    for i, rgb in enumerate(COLORS):
        p = d / "images" / f"im{i}.png"
        p.parent.mkdir(exist_ok=True)
        im = Image.new("RGB", (20 + 3 * i, 16 + 2 * i), rgb)
        im.paste((255 - rgb[0], 255 - rgb[1], 255 - rgb[2]), (2, 2, 9 + i, 8))  # some structure
        im.save(p)
        images.append(p)
    return SimpleNamespace(model=model, st=d / "tiny.safetensors", pt=d / "tiny.pt", dir=d, images=images)


def make(path: Path | str, **kw) -> OpenClipEncoder:
    kw.setdefault("device", "cpu")
    return OpenClipEncoder(f"tiny/{path}", model_config=copy.deepcopy(TINY_CFG), **kw)


def item(i: int, text: str | None = None, image: Path | None = None, instruction: str | None = None) -> EncodeInput:
    return EncodeInput(
        id=f"x{i}", text=text, image=load_rgb(image, f"x{i}") if image else None, image_path=image,
        instruction=instruction, content_hash=f"h{i}",
    )


def x_digest(cfg: dict, pp: dict | None = None) -> str:
    import hashlib

    blob = json.dumps({"model_cfg": cfg, "preprocess_cfg": pp or {}}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def reference(tiny, texts: list[str], images: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised embeddings straight from the in-memory open_clip model (its tokenizer and eval transform)."""
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=16)  # the same BPE tokenizer
    tf = open_clip.image_transform(32, is_train=False)
    with torch.inference_mode():
        t = tiny.model.encode_text(tok(texts)).numpy()
        x = torch.stack([tf(load_rgb(p, "ref")) for p in images])
        i = tiny.model.encode_image(x).numpy()
    return unit(t), unit(i)


TEXTS = ["a red square", "a blue circle on the left", "two green crosses", "", "a photo of a dog", "x"]


# ---------------------------------------------------------------------------------------------------
# loading, meta


def test_meta_registry_and_revision(tiny):
    enc = get_encoder(f"openclip:tiny/{tiny.st}", model_config=copy.deepcopy(TINY_CFG), device="cpu")
    assert isinstance(enc, OpenClipEncoder)
    m = enc.meta
    assert m.name == f"openclip:tiny/{tiny.st}"
    # the weights' hash plus the custom config's (a changed config must not reuse cached embeddings)
    assert m.revision == f"{file_revision(tiny.st)}+config:{x_digest(TINY_CFG)}" and m.revision.startswith("sha256:")
    assert m.dim == 32 and m.similarity == "cosine" and m.modalities == ("text", "image")
    assert m.needs_pixels is True and m.native_image_text is False and m.cacheable is True
    x = m.extra
    assert x["arch"] == "tiny" and x["source"] == "custom" and x["fusion"] == FUSION
    assert x["weights"] == str(tiny.st) and x["random_init"] is False
    assert x["image_transform"]["size"] == [32, 32] and x["image_transform"]["resize_mode"] == "shortest"
    assert x["context_length"] == 16 and x["tokenizer"] == "SimpleTokenizer"
    assert x["device"] == "cpu" and x["precision"] == "fp32" and x["truncated_texts"] == 0
    assert x["use_instruction"] is False and x["model_config"] == "dict" and len(x["model_config_sha256"]) == 12
    json.dumps(m.to_dict())  # recorded in results.json


def test_embeddings_equal_the_open_clip_model_for_both_checkpoint_formats(tiny):
    items = [item(i, text=t) for i, t in enumerate(TEXTS)] + [
        item(10 + i, image=p) for i, p in enumerate(tiny.images)
    ]
    ref_t, ref_i = reference(tiny, TEXTS, tiny.images)
    out = {}
    for path in (tiny.st, tiny.pt):
        enc = make(path)
        raw = enc.encode(items, role="query", task=TASK)
        assert raw.dtype == np.float32 and raw.shape == (len(items), 32)
        out[path.suffix] = raw
        np.testing.assert_allclose(raw[: len(TEXTS)], ref_t, atol=1e-5)
        np.testing.assert_allclose(raw[len(TEXTS):], ref_i, atol=1e-5)
    np.testing.assert_array_equal(out[".safetensors"], out[".pt"])
    # the weights really came from the file: a random init differs
    rnd = OpenClipEncoder("tiny", model_config=copy.deepcopy(TINY_CFG), random_init=True, device="cpu")
    assert not np.allclose(rnd.encode(items, role="query", task=TASK), out[".pt"], atol=1e-3)


def test_pretrained_kwarg_equals_path_in_spec(tiny):
    a = make(tiny.st)
    b = OpenClipEncoder("tiny", pretrained=str(tiny.st), model_config=copy.deepcopy(TINY_CFG), device="cpu")
    items = [item(i, text=t) for i, t in enumerate(TEXTS[:3])]
    np.testing.assert_array_equal(a.encode(items, role="query", task=TASK), b.encode(items, role="query", task=TASK))
    assert b.meta.revision == a.meta.revision and b.meta.extra["pretrained"] == str(tiny.st)


def test_harness_shapes_unit_norm_and_determinism(tiny, small_bench):
    bench = small_bench
    enc = make(tiny.st)
    for task in bench.tasks:
        for role, its in (("query", task.queries), ("candidate", task.candidates)):
            a = encode_items(enc, its, role=role, task=task, bench=bench)
            b = encode_items(enc, its, role=role, task=task, bench=bench, num_workers=0)
            assert a.dtype == np.float32 and a.shape == (len(its), 32)
            np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
            np.testing.assert_array_equal(a, b)
    # a fresh instance of the same checkpoint gives the same numbers
    t = bench.tasks[0]
    np.testing.assert_array_equal(
        encode_items(make(tiny.st), t.candidates, role="candidate", task=t, bench=bench),
        encode_items(enc, t.candidates, role="candidate", task=t, bench=bench),
    )


def test_batch_size_invariance(tiny):
    items = (
        [item(i, text=t or "empty") for i, t in enumerate(TEXTS)]
        + [item(20 + i, image=p) for i, p in enumerate(tiny.images)]
        + [item(40 + i, text=f"caption {i}", image=p) for i, p in enumerate(tiny.images[:4])]
    )
    one = make(tiny.st, batch_size=1).encode(items, role="candidate", task=TASK)
    seven = make(tiny.st, batch_size=7).encode(items, role="candidate", task=TASK)
    np.testing.assert_allclose(one, seven, atol=1e-5)


def test_image_text_items_are_the_sum_of_normalised_parts(tiny):
    enc = make(tiny.st)
    caps = ["a red square", "a blue circle", "two green crosses"]
    both = [item(i, text=c, image=p) for i, (c, p) in enumerate(zip(caps, tiny.images))]
    texts = [item(i, text=c) for i, c in enumerate(caps)]
    imgs = [item(i, image=p) for i, p in enumerate(tiny.images[:3])]
    fused = enc.encode(both, role="query", task=TASK)
    t = enc.encode(texts, role="query", task=TASK)
    i = enc.encode(imgs, role="query", task=TASK)
    np.testing.assert_allclose(fused, unit(t) + unit(i), atol=1e-5)
    # after the harness's normalisation: the normalised sum
    out = validate_embeddings(fused, ids=[it.id for it in both], encoder_name="e", task_name="t", role="query",
                              normalise=True)
    np.testing.assert_allclose(out, unit(unit(t) + unit(i)), atol=1e-5)


def test_instruction_only_when_asked(tiny):
    its = [item(0, text="a red square", instruction="Find the image.")]
    plain = make(tiny.st).encode(its, role="query", task=TASK)
    np.testing.assert_allclose(plain, make(tiny.st).encode([item(0, text="a red square")], role="query", task=TASK))
    enc = make(tiny.st, use_instruction=True)
    with_instr = enc.encode(its, role="query", task=TASK)
    np.testing.assert_allclose(
        with_instr, enc.encode([item(0, text="Find the image. a red square")], role="query", task=TASK), atol=1e-6
    )
    assert not np.allclose(plain, with_instr) and enc.meta.extra["use_instruction"] is True


def test_local_dir_form(tiny, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(tiny.st, d / "open_clip_model.safetensors")
    (d / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}})
    )
    enc = OpenClipEncoder(f"local-dir:{d}", device="cpu")
    assert enc.meta.name == f"openclip:local-dir:{d}" and enc.meta.extra["source"] == "local-dir"
    assert enc.meta.revision.startswith(file_revision(d / "open_clip_model.safetensors") + "+config:")
    assert enc.meta.extra["image_transform"]["mean"] == [0.5, 0.5, 0.5]  # the directory's preprocess_cfg
    texts = [item(i, text=t) for i, t in enumerate(TEXTS)]
    np.testing.assert_allclose(
        enc.encode(texts, role="query", task=TASK), make(tiny.st).encode(texts, role="query", task=TASK), atol=1e-6
    )
    # same weights through get_encoder
    assert get_encoder(f"openclip:local-dir:{d}", device="cpu").meta.revision == enc.meta.revision
    # no weights: refused unless random_init
    (d / "open_clip_model.safetensors").unlink()
    with pytest.raises(EncoderError, match="random_init"):
        OpenClipEncoder(f"local-dir:{d}", device="cpu")
    rnd = OpenClipEncoder(f"local-dir:{d}", device="cpu", random_init=True, seed=3)
    assert rnd.meta.revision.startswith("random-init:3+config:") and rnd.meta.extra["random_init"] is True
    # another preprocess_cfg, same weights: another revision
    rev = rnd.meta.revision
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}}))
    assert OpenClipEncoder(f"local-dir:{d}", device="cpu", random_init=True, seed=3).meta.revision != rev


def test_random_init_is_seeded_and_marked(tiny):
    def rnd(seed: int) -> OpenClipEncoder:
        return OpenClipEncoder("tiny", model_config=copy.deepcopy(TINY_CFG), random_init=True, seed=seed, device="cpu")

    its = [item(i, text=t) for i, t in enumerate(TEXTS[:3])] + [item(9, image=tiny.images[0])]
    a, b, c = rnd(0), rnd(0), rnd(1)
    assert a.meta.revision.startswith("random-init:0+config:") and c.meta.revision.startswith("random-init:1+")
    assert a.meta.extra["random_init"] is True and a.meta.extra["seed"] == 0
    np.testing.assert_array_equal(a.encode(its, role="query", task=TASK), b.encode(its, role="query", task=TASK))
    assert not np.allclose(a.encode(its, role="query", task=TASK), c.encode(its, role="query", task=TASK))
    # the global torch RNG is left alone
    torch.manual_seed(7)
    x = torch.rand(1)
    torch.manual_seed(7)
    rnd(5)
    assert torch.equal(torch.rand(1), x)


def test_real_architecture_random_init_meta():
    enc = OpenClipEncoder("ViT-B-32", random_init=True, device="cpu")
    assert enc.meta.dim == 512 and enc.meta.revision == "random-init:0"
    assert enc.meta.extra["image_transform"]["size"] == [224, 224] and enc.context_length == 77
    from PIL import Image

    assert enc.prepare_image(Image.new("RGB", (50, 30), (10, 200, 30))).shape == (3, 224, 224)


def test_truncation_is_counted(tiny):
    enc = make(tiny.st)
    long = "a very long caption " * 10  # 40 words, context 16
    fits = " ".join(["dog"] * 14)  # 14 tokens + start + end = 16: not truncated
    enc.encode([item(0, text=long), item(1, text=fits), item(2, text="short")], role="query", task=TASK)
    assert enc.meta.extra["truncated_texts"] == 1 and enc.truncated_texts == 1
    enc.encode([item(0, text=long + "!"), item(1, text=fits + " dog")], role="query", task=TASK)
    assert enc.meta.extra["truncated_texts"] == 3
    # the truncated text is encoded from its first 16 tokens (no error, unit norm after the harness)
    out = enc.encode([item(0, text=long)], role="query", task=TASK)
    assert np.isfinite(out).all()


def test_prepare_image_hook_runs_in_the_harness_decode_threads(tiny, small_bench):
    bench = small_bench
    task = bench.task("t2i")
    enc = make(tiny.st)
    calls: list[str] = []
    shapes: list[tuple[int, ...]] = []
    orig = enc.prepare_image

    def spy(image):
        calls.append(threading.current_thread().name)
        px = orig(image)
        shapes.append(tuple(px.shape))
        return px

    enc.prepare_image = spy  # type: ignore[method-assign]
    got = encode_items(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2)
    assert len(calls) == len(task.candidates)  # once per image: encode used the harness's pixels
    assert all(name != threading.main_thread().name for name in calls)
    assert set(shapes) == {(3, 32, 32)}  # 16x16 PNGs resized by the model's own transform
    plain = encode_items(make(tiny.st), task.candidates, role="candidate", task=task, bench=bench, num_workers=0)
    np.testing.assert_allclose(got, plain, atol=1e-6)


def test_oom_backoff_halves_the_batch_and_logs(tiny, caplog):
    items = [item(i, image=p) for i, p in enumerate(tiny.images[:6])]
    want = make(tiny.st).encode(items, role="candidate", task=TASK)
    enc = make(tiny.st, batch_size=8)
    real = enc.model.encode_image
    seen: list[int] = []

    def flaky(x, *a, **k):
        seen.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(x, *a, **k)

    enc.model.encode_image = flaky
    with caplog.at_level(logging.WARNING, logger="mrbench.encoders"):
        got = enc.encode(items, role="candidate", task=TASK)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert enc.batch_size == 2 and enc.meta.extra["batch_size_after_oom"] == 2
    assert seen[:3] == [6, 4, 2] and max(seen[3:]) <= 2
    assert any("out of memory" in r.getMessage() and "halved" in r.getMessage() for r in caplog.records)

    def always(x, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    enc.model.encode_image = always
    with pytest.raises(EncoderError, match="out of memory on a single item"):
        enc.encode(items[:2], role="candidate", task=TASK)


# ---------------------------------------------------------------------------------------------------
# bad input: one line each, at once


def _expect(exc: type[MrbenchError], spec: str, *needles: str, **kw) -> str:
    kw.setdefault("device", "cpu")
    t0 = time.perf_counter()
    with pytest.raises(exc) as ei:
        OpenClipEncoder(spec, **kw)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert time.perf_counter() - t0 < 10
    for n in needles:
        assert n in msg, msg
    return msg


def test_unknown_architecture_suggests_close_names():
    _expect(UnknownNameError, "ViT-B-33/laion2b_s34b_b79k", "unknown open_clip architecture 'ViT-B-33'", "'ViT-B-32'")
    _expect(UnknownNameError, "vit-b-32/openai", "did you mean 'ViT-B-32'")
    _expect(UnknownNameError, "ViT-B-32:openai", "'openclip:ViT-B-32/openai'")
    with pytest.raises(UnknownNameError, match="ViT-B-32"):  # through the registry, too
        get_encoder("openclip:ViT-B-33/openai")


def test_unknown_tag_lists_the_architectures_tags():
    msg = _expect(UnknownNameError, "ViT-B-32/laion2b_s34b_b78k", "unknown pretrained tag 'laion2b_s34b_b78k'")
    for tag in open_clip.list_pretrained_tags_by_model("ViT-B-32"):
        assert tag in msg
    _expect(UnknownNameError, "ViT-B-16-plus/openai", "no pretrained tags for 'ViT-B-16-plus'")


def test_missing_and_unreadable_checkpoints(tiny, tmp_path):
    _expect(EncoderError, f"ViT-B-32/{tmp_path}/nope.safetensors", "not found", "nope.safetensors")
    _expect(EncoderError, "ViT-B-32", "not found", pretrained=str(tmp_path / "nope.pt"))
    _expect(EncoderError, f"tiny/{tmp_path}", "is a directory", "local-dir:", model_config=TINY_CFG)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint at all")
    _expect(EncoderError, f"tiny/{junk}", "cannot be read as a state dict", model_config=TINY_CFG)


def test_shape_mismatch_names_the_first_tensor_and_both_shapes(tiny, tmp_path):
    small = copy.deepcopy(TINY_CFG)
    small["embed_dim"] = 16
    _expect(EncoderError, f"tiny/{tiny.st}", "'text_projection'", "(32, 32)", "(32, 16)", "does not match",
            model_config=small)
    # (a tiny checkpoint for the real ViT-B-32 architecture: test_cached_tag_weights_are_used_offline)
    # a checkpoint missing tensors
    sd = torch.load(tiny.pt, weights_only=True)
    sd.pop("visual.proj")
    partial = tmp_path / "partial.pt"
    torch.save(sd, partial)
    _expect(EncoderError, f"tiny/{partial}", "lacks 1 of the model's", "'visual.proj'", model_config=TINY_CFG)


def test_offline_without_cache_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = str(tmp_path / "hub")
    _expect(EncoderError, "ViT-B-32/laion2b_s34b_b79k", "offline", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            '"pretrained"', cache_dir=empty)
    _expect(EncoderError, "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "offline", "'openclip:local-dir:DIR'",
            cache_dir=empty)
    _expect(EncoderError, "hf-hub:not a hub id", "not a hub id")


def test_cached_tag_weights_are_used_offline(tiny, tmp_path, monkeypatch):
    """A tag whose weights sit in the hub cache is loaded from there (no network): here the cached file is
    the tiny checkpoint, so loading it into ViT-B-32 stops with the mismatch naming the cached file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(tiny.st, repo / "snapshots" / commit / "open_clip_model.safetensors")
    _expect(EncoderError, "ViT-B-32/openai", f"snapshots/{commit}/open_clip_model.safetensors",
            "does not match architecture 'ViT-B-32'", "'text_projection'", "(32, 32)", "(512, 512)",
            cache_dir=str(tmp_path / "hub"))


def test_hf_hub_form_loads_from_the_cache_offline(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "hub" / "models--someorg--tiny-clip"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(tiny.st, snap / "open_clip_model.safetensors")
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}}))
    enc = OpenClipEncoder("hf-hub:someorg/tiny-clip", cache_dir=str(tmp_path / "hub"), device="cpu")
    assert enc.meta.revision == commit and enc.meta.extra["source"] == "hf-hub"
    its = [item(i, text=t) for i, t in enumerate(TEXTS[:3])] + [item(5, image=tiny.images[1])]
    np.testing.assert_allclose(
        enc.encode(its, role="query", task=TASK), make(tiny.st).encode(its, role="query", task=TASK), atol=1e-6
    )


def test_weights_required_and_conflicting_kwargs(tiny, tmp_path):
    _expect(EncoderError, "ViT-B-32", "no weights given", "random_init=True", "'openclip:ViT-B-32/openai'")
    _expect(EncoderError, f"tiny/{tiny.st}", "random_init=True but weights", model_config=TINY_CFG, random_init=True)
    _expect(EncoderError, f"tiny/{tiny.st}", "weights given twice", model_config=TINY_CFG, pretrained=str(tiny.pt))
    _expect(EncoderError, "tiny/openai", "custom model_config has no tags", model_config=TINY_CFG)
    _expect(EncoderError, f"local-dir:{tmp_path}", "not used with a 'local-dir:' spec", pretrained=str(tiny.st))
    _expect(EncoderError, f"local-dir:{tmp_path}/missing", "not found")
    _expect(EncoderError, f"local-dir:{tmp_path}", "holds no open_clip_config.json")
    _expect(EncoderError, "tiny", "lacks vision_cfg, text_cfg", model_config={"embed_dim": 8}, random_init=True)
    _expect(EncoderError, "tiny", "not found", model_config=str(tmp_path / "cfg.json"), random_init=True)
    _expect(EncoderError, "tiny", "pretrained must be a string", pretrained=3)
    _expect(EncoderError, "tiny", "batch_size must be a positive integer", batch_size=0)
    _expect(EncoderError, "tiny", "cuda_graphs must be true or false", cuda_graphs="yes")
    _expect(EncoderError, "", "empty spec")


def test_model_config_from_a_json_file(tiny, tmp_path):
    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps(TINY_CFG))
    enc = OpenClipEncoder(f"tiny/{tiny.st}", model_config=str(cfg_file), device="cpu")
    assert enc.meta.extra["model_config"] == str(cfg_file)
    its = [item(0, text="a red square")]
    np.testing.assert_array_equal(enc.encode(its, role="query", task=TASK), make(tiny.st).encode(its, role="query", task=TASK))
    # an open_clip_config.json layout: model_cfg + preprocess_cfg (used for the eval transform)
    oc_file = tmp_path / "open_clip_config.json"
    oc_file.write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize_mode": "squash"}}))
    enc = OpenClipEncoder(f"tiny/{tiny.st}", model_config=str(oc_file), device="cpu")
    tf = enc.meta.extra["image_transform"]
    assert tf["mean"] == [0.5] * 3 and tf["std"] == [0.25] * 3 and tf["resize_mode"] == "squash"
    np.testing.assert_array_equal(enc.encode(its, role="query", task=TASK), make(tiny.st).encode(its, role="query", task=TASK))


def test_tag_plus_local_file_keeps_the_tags_preprocessing(tiny):
    """``ARCH/TAG`` + ``pretrained=FILE`` (the offline route): weights from the file; mean/std, resize mode and
    QuickGELU from the tag (resolution only: a full-size ViT-B-32 checkpoint is too big for a unit test)."""
    from mrbench.encoders.openclip import _resolve

    src = _resolve(open_clip, "ViT-B-32/openai", label="openclip:ViT-B-32/openai", pretrained=str(tiny.st),
                   model_config=None, random_init=False, seed=0, cache_dir=None)
    assert src.weights == tiny.st and src.tag == "openai" and src.revision == file_revision(tiny.st)
    assert src.force_quick_gelu is True  # the OpenAI weights were trained with QuickGELU
    pcfg = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    assert src.preprocess["mean"] == pcfg["mean"] and src.preprocess["resize_mode"] == pcfg["resize_mode"]
    assert src.info["hub_repo"] == "timm/vit_base_patch32_clip_224.openai"


def test_truncation_count_for_hugging_face_tokenizers(tmp_path):
    """open_clip's HFTokenizer (used by e.g. the xlm-roberta and SigLIP models): counted from the untruncated length."""
    pytest.importorskip("transformers")
    from open_clip.tokenizer import HFTokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from mrbench.encoders.openclip import _count_too_long

    words = "a red blue square circle dog cat on the left".split()
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(tmp_path / "tok")
    tok = HFTokenizer(str(tmp_path / "tok"), context_length=8)
    texts = ["a red square", " ".join(words[:6]), " ".join(words[:7]), " ".join(words)]  # 5, 8, 9, 12 tokens
    assert tuple(tok(texts).shape) == (4, 8)
    assert _count_too_long(tok, texts, 8) == 2
    assert _count_too_long(open_clip.get_tokenizer("ViT-B-32", context_length=8), texts, 8) == 2  # BPE: same words


# ---------------------------------------------------------------------------------------------------
# end to end


def test_evaluate_end_to_end_records_meta_and_caches(tiny, tmp_path):
    spec = f"openclip:tiny/{tiny.st}"
    kw = {"model_config": TINY_CFG, "device": "cpu", "batch_size": 16}
    res = mrbench.evaluate("mrbench-synth-tiny", spec, encoder_kwargs=kw, tasks=["t2i", "it2i"],
                           cache_dir=tmp_path / "cache", output=tmp_path / "out")
    enc = res.data["encoder"]
    assert enc["name"] == spec and enc["spec"] == spec and enc["revision"].startswith(file_revision(tiny.st))
    assert enc["extra"]["fusion"] == FUSION and enc["extra"]["arch"] == "tiny" and enc["dim"] == 32
    assert enc["extra"]["image_transform"]["size"] == [32, 32] and enc["kwargs"]["model_config"] == TINY_CFG
    assert set(res.scores["tasks"]) == {"t2i", "it2i"}
    for s in res.scores["tasks"].values():
        assert 0.0 <= s["hit@10"] <= 1.0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["encoder"]["extra"]["arch"] == "tiny"
    assert res.data["cache"]["encoded"] > 0
    again = mrbench.evaluate("mrbench-synth-tiny", spec, encoder_kwargs=kw, tasks=["t2i", "it2i"],
                             cache_dir=tmp_path / "cache")
    assert again.data["cache"]["encoded"] == 0 and again.data["cache"]["hits"] == again.data["cache"]["items"]
    assert again.scores["tasks"] == res.scores["tasks"]


# ---------------------------------------------------------------------------------------------------
# real weights (opt-in)


@pytest.mark.realweights
def test_real_checkpoint_zero_shot_sanity():
    ckpt = os.environ.get("MRBENCH_OPENCLIP_CHECKPOINT")
    if not ckpt:
        pytest.skip("set MRBENCH_OPENCLIP_CHECKPOINT to an open_clip weights file (with MRBENCH_OPENCLIP_ARCH) or model dir")
    path = Path(ckpt).expanduser()
    if path.is_dir():
        enc = OpenClipEncoder(f"local-dir:{path}")
    else:
        arch = os.environ.get("MRBENCH_OPENCLIP_ARCH", "ViT-B-32")
        tag = os.environ.get("MRBENCH_OPENCLIP_TAG")  # optional: the tag's preprocessing
        enc = OpenClipEncoder(f"{arch}/{tag}" if tag else arch, pretrained=str(path))
    from PIL import Image

    try:
        from skimage import data as skdata

        images = {"a photo of a cat": Image.fromarray(skdata.chelsea()),
                  "a photo of an astronaut": Image.fromarray(skdata.astronaut())}
    except ImportError:
        images = {"a plain red image": Image.new("RGB", (224, 224), (230, 20, 20)),
                  "a plain blue image": Image.new("RGB", (224, 224), (20, 20, 230))}
    caps = list(images)
    with_px = [EncodeInput(id=f"i{k}", text=None, image=im, image_path=Path(f"/virtual/{k}.png"), instruction=None,
                           content_hash=str(k), pixels=enc.prepare_image(im)) for k, im in enumerate(images.values())]
    img = unit(enc.encode(with_px, role="candidate", task=TASK))
    txt = unit(enc.encode([item(k, text=c) for k, c in enumerate(caps)], role="query", task=TASK))
    assert img.shape == (2, enc.meta.dim) and txt.shape == (2, enc.meta.dim)
    sims = img @ txt.T
    assert sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0], sims


def test_prepare_image_defers_normalisation_to_the_device(tmp_path) -> None:
    """The decode threads return uint8 (PIL stages only); encode_images finishes the transform with
    exactly the arithmetic of ToTensor + Normalize."""
    import torch
    from PIL import Image

    from mrbench.encoders.openclip import OpenClipEncoder

    enc = OpenClipEncoder("ViT-B-32", random_init=True, device="cpu")
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 60), (300, 200))]
    imgs.append(imgs[0].convert("L"))
    u8 = torch.stack([enc.prepare_image(im) for im in imgs])
    assert u8.dtype == torch.uint8 and u8.shape == (3, 3, 224, 224)
    ref = torch.stack([enc.preprocess(im) for im in imgs])
    mean, std = enc._norm
    assert torch.equal(u8.float().div(255.0).sub(mean).div(std), ref)
    with torch.inference_mode():
        np.testing.assert_allclose(enc.encode_images(u8).numpy(), enc.model.encode_image(ref).numpy(), atol=1e-5)


def test_process_decode_workers_equal_threads(tmp_path) -> None:
    """workers='process' decodes and transforms in forked worker processes (outside the GIL) and gives
    the same embeddings as the decode threads; a bad image in a worker is one line naming the item."""
    import mrbench
    from mrbench.encoders.harness import encode_items
    from mrbench.encoders.openclip import OpenClipEncoder
    from mrbench.errors import BenchmarkError

    bench = mrbench.load_benchmark("mrbench-synth-tiny")
    task = bench.task("t2i")
    enc = OpenClipEncoder("ViT-B-32", random_init=True, device="cpu", model_config=None, batch_size=16)
    items = task.candidates[:40]
    ref = encode_items(enc, items, role="candidate", task=task, bench=bench, num_workers=2, workers="thread")
    out = encode_items(enc, items, role="candidate", task=task, bench=bench, num_workers=2, workers="process")
    np.testing.assert_array_equal(out, ref)

    import shutil

    from mrbench.data.io import load_benchmark_dir

    root = tmp_path / "b"
    shutil.copytree(bench.root, root)
    broken = load_benchmark_dir(root, verify=False)
    btask = broken.task("t2i")
    (root / btask.candidates[3].image).write_bytes(b"not a png")
    with pytest.raises(BenchmarkError) as e:
        encode_items(enc, btask.candidates[:8], role="candidate", task=btask, bench=broken, num_workers=2,
                     workers="process")
    assert btask.candidates[3].id in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("procs", [False, True], ids=["thread", "processes"])
def test_texts_tokenised_ahead_give_the_same_embeddings(tiny, small_bench, monkeypatch, procs):
    """The harness tokenises the next batch (text_transform, in fork workers for many texts) and the
    tower reads EncodeInput.tokens; the embeddings equal the in-forward tokenisation bit for bit."""
    from mrbench.encoders import harness

    if procs:  # processes are used when feeding a GPU: pretend the encoder runs on one
        monkeypatch.setattr(harness, "TEXT_PROCESS_MIN", 1)
        monkeypatch.setattr(harness, "_gpu_decode_device", lambda enc: "cuda")
    bench = small_bench
    task = next(t for t in bench.tasks if all(q.text and q.image is None for q in t.queries))
    qs = task.queries * 8  # several batches
    enc = make(tiny.st, batch_size=8)
    used = []
    real = enc.encode_tokens
    monkeypatch.setattr(enc, "encode_tokens", lambda tok: used.append(tuple(tok.shape)) or real(tok))
    ahead = encode_items(enc, qs, role="query", task=task, bench=bench, num_workers=2)
    assert used and all(s[1] == 16 + 1 for s in used)  # context length of the tiny model + the cut flag
    monkeypatch.setattr(enc, "text_transform", lambda: None)
    inline = encode_items(enc, qs, role="query", task=task, bench=bench, num_workers=2)
    np.testing.assert_array_equal(ahead, inline)


def test_warm_batches_read_in_shard_order_give_the_same_embeddings(tiny, monkeypatch, tmp_path):
    """A warm batch read into the staging buffer is reordered by where its pixels lie in the shards
    and read in runs; a real tower still gives every item the embedding of an uncached run."""
    from fixtures.staging import image_bench, stage_on_host

    bench, task = image_bench(tmp_path / "b")
    items = task.candidates
    enc = make(tiny.st, batch_size=4)
    ref = encode_items(enc, items, role="candidate", task=task, bench=bench, num_workers=2)
    reads = stage_on_host(monkeypatch)
    for _ in range(3):  # fills the cache, learns the pixel layout, reads whole batches in runs
        reads.clear()
        out = encode_items(enc, items, role="candidate", task=task, bench=bench, num_workers=2,
                           pixel_cache=tmp_path / "px")
        np.testing.assert_array_equal(out, ref)
    assert sorted(reads) == [2, 4, 4]  # one read per batch (its shard's run), not one per image


def test_tokenising_processes_are_forked_once_per_transform(tiny, small_bench, monkeypatch):
    """The fork pool of tokenising workers outlives a call: a later call with the same transform
    (the same tokenizer) reuses it; another tokenizer gets a pool of its own."""
    import concurrent.futures

    from mrbench.encoders import harness

    monkeypatch.setattr(harness, "TEXT_PROCESS_MIN", 1)
    monkeypatch.setattr(harness, "_gpu_decode_device", lambda enc: "cuda")
    created = []

    class Counting(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *a, **k):
            created.append(k.get("initargs"))
            super().__init__(*a, **k)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Counting)
    harness._TEXT_POOL.shutdown()
    try:
        task = next(t for t in small_bench.tasks if all(q.text and q.image is None for q in t.queries))
        qs = task.queries * 4
        enc = make(tiny.st, batch_size=8)
        assert enc.text_transform() == enc.text_transform()
        first = encode_items(enc, qs, role="query", task=task, bench=small_bench, num_workers=2)
        again = encode_items(enc, qs, role="query", task=task, bench=small_bench, num_workers=2)
        np.testing.assert_array_equal(first, again)
        assert len(created) == 1
        other = make(tiny.st, batch_size=8)
        assert other.text_transform() != enc.text_transform()
        np.testing.assert_array_equal(encode_items(other, qs, role="query", task=task, bench=small_bench,
                                                   num_workers=2), first)
        assert len(created) == 2
    finally:
        harness._TEXT_POOL.shutdown()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pixels_staged_on_the_device_give_the_same_embeddings(tiny, small_bench, monkeypatch):
    bench = small_bench
    task = next(t for t in bench.tasks if any(c.image for c in t.candidates))
    enc = make(tiny.st, device="cuda", precision="fp32", batch_size=4)
    seen = []
    real = enc.encode_images
    monkeypatch.setattr(enc, "encode_images", lambda pix: seen.append(pix.device.type) or real(pix))
    staged = encode_items(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2)
    assert seen and set(seen) == {"cuda"}
    monkeypatch.setattr(enc, "pixels_on_device", False)
    plain = encode_items(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2)
    np.testing.assert_array_equal(staged, plain)


def test_truncation_counted_from_the_tokenised_rows(tiny):
    import dataclasses

    enc = make(tiny.st)
    texts = ["a short caption", "word " * 40, "ü" * 30]
    items = [item(i, text=t) for i, t in enumerate(texts)]
    a = enc.encode(items, role="query", task=TASK)
    n_inline = enc.truncated_texts
    rows = enc.text_transform()([enc.text_of(it) for it in items])
    assert rows.shape == (3, enc.context_length + 1) and rows[:, -1].tolist() == [0, 1, 1]
    b = enc.encode([dataclasses.replace(it, tokens=rows[k]) for k, it in enumerate(items)], role="query", task=TASK)
    assert n_inline == 2 and enc.truncated_texts == 2 * n_inline
    np.testing.assert_array_equal(a, b)


def test_async_encode_gives_what_encode_gives(tiny, small_bench):
    """The harness collects each batch one behind through ``encode_async``; forcing the plain
    ``encode`` (defined on the instance, so the harness must not bypass it) changes nothing."""
    from mrbench.encoders.harness import async_encode_of

    bench = small_bench
    task = next(t for t in bench.tasks if any(c.image for c in t.candidates))
    enc = make(tiny.st, batch_size=3)
    assert async_encode_of(enc) is not None
    ahead = encode_items(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2)
    enc.encode = enc.encode
    assert async_encode_of(enc) is None
    plain = encode_items(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2)
    np.testing.assert_array_equal(ahead, plain)
    assert enc.encode_async([], role="candidate", task=TASK)().shape == (0, enc.meta.dim)


def test_cuda_graphs_only_on_a_cuda_device(tiny):
    enc = make(tiny.st)
    assert enc.cuda_graphs is False and enc.meta.extra["cuda_graphs"] is False  # CPU: eager, recorded


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_give_what_the_eager_forward_gives(tiny, small_bench):
    bench = small_bench
    task = next(t for t in bench.tasks if any(c.image for c in t.candidates))
    t2i = next(t for t in bench.tasks if t.query_modality == "text")
    kw = dict(device="cuda", precision="bf16", batch_size=2)
    graphed, eager = make(tiny.st, **kw), make(tiny.st, **kw, cuda_graphs=False)
    assert graphed.cuda_graphs and not eager.cuda_graphs
    for role, items, t in (("candidate", task.candidates * 3, task), ("query", t2i.queries * 3, t2i)):
        a = encode_items(graphed, items, role=role, task=t, bench=bench, num_workers=2)
        b = encode_items(eager, items, role=role, task=t, bench=bench, num_workers=2)
        np.testing.assert_array_equal(a, b)
    assert set(graphed._graphed) == {"encode_images", "encode_tokens"}
    assert all(g.graphs and not g.failed for g in graphed._graphed.values())
