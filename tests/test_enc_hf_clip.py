"""The ``hf`` family (mrbench.encoders.hf_clip): CLIP / SigLIP / SigLIP 2 through transformers.

Tiny random-initialised models are built offline (tests/fixtures/tiny_hf.py) and saved like real
checkpoints. Real weights are opt-in: ``MRBENCH_HF_CLIP_DIR`` / ``MRBENCH_HF_SIGLIP_DIR`` + ``-m realweights``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

import mrbench  # noqa: E402
from mrbench.data.schema import TaskInfo  # noqa: E402
from mrbench.encoders.base import EncodeInput  # noqa: E402
from mrbench.encoders.hf_clip import HFClipEncoder  # noqa: E402
from mrbench.encoders.registry import get_encoder  # noqa: E402
from mrbench.errors import EncoderError  # noqa: E402

from fixtures import tiny_hf as th  # noqa: E402  (tests/ is on sys.path under pytest)
from fixtures.staging import image_bench, stage_on_host  # noqa: E402

TASK = TaskInfo(name="t", query_modality="text", candidate_modality="image", query_instruction="Find the picture.")
KINDS = ("clip", "siglip", "siglip2")
COLORS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (240, 240, 20), (10, 10, 10), (250, 250, 250), (120, 60, 200)]
TEXTS = ["a red square", "a blue circle on the left", "two dogs", "a photo of a cat", "", "green", "the big house"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_hf")
    return {
        "clip": th.clip_dir(root / "clip"),
        "siglip": th.siglip_dir(root / "siglip"),
        "siglip2": th.siglip2_dir(root / "siglip2"),
        "bert": th.bert_dir(root / "bert"),
    }


@pytest.fixture(scope="module")
def encoders(dirs) -> dict[str, HFClipEncoder]:
    return {k: HFClipEncoder(str(dirs[k]), device="cpu") for k in KINDS}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("imgs")
    out = []
    for i, c in enumerate(COLORS):
        p = root / f"im{i}.png"
        im = Image.new("RGB", (20 + 7 * i, 36 - 2 * i), c)  # varied sizes and aspect ratios
        im.putpixel((1, 1), (i * 30 % 256, 0, 0))
        im.save(p)
        out.append(p)
    return out


def _items(images: list[Path], kinds: str = "tiI") -> list[EncodeInput]:
    """Mixed items: text-only (t), image-only (i), image+text (I), cycling through ``kinds``."""
    out = []
    for n in range(len(TEXTS)):
        k = kinds[n % len(kinds)]
        path = images[n] if k in "iI" else None
        out.append(EncodeInput(
            id=f"x{n}", text=TEXTS[n] if k in "tI" else None,
            image=Image.open(path).convert("RGB") if path else None, image_path=path,
            instruction="Find the picture.", content_hash=f"h{n}",
        ))
    return out


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------------
# correctness against the model's own forward


def _reference(enc: HFClipEncoder, kind: str, texts: list[str], imgs: list[Image.Image]):
    """text_embeds / image_embeds of the model's own forward, from its own tokenizer and processor."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(enc.path)).eval()
    tok = AutoTokenizer.from_pretrained(str(enc.path))
    proc = AutoImageProcessor.from_pretrained(str(enc.path))
    if kind.startswith("siglip"):
        t_in = tok(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    else:
        t_in = tok(texts, padding=True, truncation=True, return_tensors="pt")
    i_in = proc(images=imgs, return_tensors="pt")
    with torch.no_grad():
        out = model(**t_in, **i_in)
    return out.text_embeds.numpy(), out.image_embeds.numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_embeddings_equal_model_forward(kind, encoders, images):
    enc = encoders[kind]
    texts = TEXTS[:4]
    imgs = [Image.open(p).convert("RGB") for p in images[:4]]
    t_ref, i_ref = _reference(enc, kind, texts, imgs)
    t_items = [EncodeInput(id=f"t{i}", text=t, image=None, image_path=None, instruction=None, content_hash=str(i))
               for i, t in enumerate(texts)]
    i_items = [EncodeInput(id=f"i{i}", text=None, image=im, image_path=p, instruction=None, content_hash=str(i))
               for i, (im, p) in enumerate(zip(imgs, images))]
    t = enc.encode(t_items, role="query", task=TASK)
    i = enc.encode(i_items, role="candidate", task=TASK)
    for got, ref in ((t, t_ref), (i, i_ref)):
        assert got.dtype == np.float32 and got.shape == (4, enc.meta.dim) == ref.shape
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got, ref, atol=1e-5)
    assert enc.meta.extra["features_match_forward"] is True


@pytest.mark.parametrize("kind", KINDS)
def test_meta(kind, encoders, dirs):
    m = encoders[kind].meta
    assert m.name == f"hf:{dirs[kind]}" and m.revision.startswith("sha256:")
    assert m.modalities == ("text", "image") and m.native_image_text is False and m.needs_pixels
    assert m.similarity == "cosine" and m.dim == (16 if kind == "clip" else 32)
    x = m.extra
    assert x["model_type"] == kind and "fusion" in x and x["device"] == "cpu" and x["precision"] == "fp32"
    assert x["use_instruction"] is False and "truncated_texts" in x and "logit_scale" in x
    assert "cos" in x["similarity_note"]


def test_siglip_similarity_note_and_logits(encoders):
    x = encoders["siglip"].meta.extra
    assert "sigmoid" in x["similarity_note"] and "ranking by cosine is exactly" in x["similarity_note"]
    assert x["logit_scale"] == pytest.approx(10.0, rel=1e-4) and x["logit_bias"] == pytest.approx(-10.0)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_and_batch_size_invariant(kind, dirs, encoders, images):
    items = _items(images)
    a = encoders[kind].encode(items, role="query", task=TASK)
    b = encoders[kind].encode(items, role="query", task=TASK)
    np.testing.assert_array_equal(a, b)
    one = HFClipEncoder(str(dirs[kind]), device="cpu", batch_size=1).encode(items, role="query", task=TASK)
    seven = HFClipEncoder(str(dirs[kind]), device="cpu", batch_size=7).encode(items, role="query", task=TASK)
    np.testing.assert_allclose(one, seven, atol=1e-5)
    np.testing.assert_allclose(one, a, atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_image_text_fusion(kind, encoders, images):
    enc = encoders[kind]
    both = _items(images, "I")[:3]
    t_only = [EncodeInput(id=it.id, text=it.text, image=None, image_path=None, instruction=None, content_hash="t")
              for it in both]
    i_only = [EncodeInput(id=it.id, text=None, image=it.image, image_path=it.image_path, instruction=None,
                          content_hash="i") for it in both]
    f = enc.encode(both, role="query", task=TASK)
    t = enc.encode(t_only, role="query", task=TASK)
    i = enc.encode(i_only, role="query", task=TASK)
    np.testing.assert_allclose(f, t + i, atol=1e-5)  # sum of unit vectors (the harness re-normalises)
    assert not np.allclose(t, i)


def test_prepare_image_is_used(encoders, images):
    enc = encoders["clip"]
    im = Image.open(images[2]).convert("RGB")
    pix = enc.prepare_image(im)
    assert tuple(pix.shape) == (3, 32, 32) and pix.dtype == torch.uint8  # normalised on the model's device
    with_pixels = EncodeInput(id="a", text=None, image=None, image_path=images[2], instruction=None,
                              content_hash="a", pixels=pix)
    from_path = EncodeInput(id="a", text=None, image=None, image_path=images[2], instruction=None, content_hash="a")
    np.testing.assert_allclose(enc.encode([with_pixels], role="candidate", task=TASK),
                               enc.encode([from_path], role="candidate", task=TASK), atol=1e-6)
    packed = encoders["siglip2"].prepare_image(im)  # NaFlex: patches + mask column + spatial-shape row
    assert packed.ndim == 2 and packed.shape[0] == 16 + 1 and packed.shape[1] == 3 * 8 * 8 + 1


def test_use_instruction(dirs, encoders, images):
    items = _items(images, "t")[:3]
    plain = encoders["clip"].encode(items, role="query", task=TASK)
    instr_enc = HFClipEncoder(str(dirs["clip"]), device="cpu", use_instruction=True)
    assert instr_enc.meta.extra["use_instruction"] is True
    instr = instr_enc.encode(items, role="query", task=TASK)
    prefixed = [EncodeInput(id=it.id, text=f"Find the picture. {it.text}", image=None, image_path=None,
                            instruction=None, content_hash="p") for it in items]
    np.testing.assert_allclose(instr, encoders["clip"].encode(prefixed, role="query", task=TASK), atol=1e-6)
    assert not np.allclose(plain, instr)


def test_save_load_roundtrip(dirs, encoders, images, tmp_path):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    src = dirs["clip"]
    dst = tmp_path / "resaved"
    AutoModel.from_pretrained(str(src)).save_pretrained(dst)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(dst)
    AutoImageProcessor.from_pretrained(str(src)).save_pretrained(dst)
    items = _items(images)
    again = HFClipEncoder(f"local-dir:{dst}", device="cpu")
    np.testing.assert_allclose(again.encode(items, role="query", task=TASK),
                               encoders["clip"].encode(items, role="query", task=TASK), atol=1e-6)
    assert again.meta.name == f"hf:local-dir:{dst}"


# ---------------------------------------------------------------------------------------------------
# text length: truncation (CLIP) and max_length padding (SigLIP)


def test_clip_truncation_counted(dirs):
    enc = HFClipEncoder(str(dirs["clip"]), device="cpu")  # context 24 tokens (char-level BPE here)
    short = EncodeInput(id="s", text="a dog", image=None, image_path=None, instruction=None, content_hash="s")
    long = EncodeInput(id="l", text="a photo of a dog " * 10, image=None, image_path=None, instruction=None,
                       content_hash="l")
    enc.encode([short], role="query", task=TASK)
    assert enc.meta.extra["truncated_texts"] == 0
    enc.encode([long, short, long], role="query", task=TASK)
    assert enc.truncated_texts == 2 and enc.meta.extra["truncated_texts"] == 2
    ids = enc._tokenize([long.text, short.text])[0]["input_ids"]
    assert ids.shape[1] == 24  # padded to the longest, which was cut at the context length
    cut = HFClipEncoder(str(dirs["clip"]), device="cpu", max_length=8)
    cut.encode([long, short], role="query", task=TASK)
    assert cut.meta.extra["truncated_texts"] == 1 and cut.meta.extra["text_max_length"] == 8
    with pytest.raises(EncoderError, match="exceeds the model's text context of 24") as e:
        HFClipEncoder(str(dirs["clip"]), device="cpu", max_length=100)
    _one_line(e)


@pytest.mark.parametrize("kind", ["siglip", "siglip2"])
def test_siglip_pads_to_max_length(kind, encoders, dirs):
    enc = encoders[kind]
    assert enc.meta.extra["text_padding"] == "max_length (64)"
    inputs, _ = enc._tokenize(["a dog", "a red square on the left of a blue circle"])
    assert inputs["input_ids"].shape == (2, 64)
    if kind == "siglip":
        assert set(inputs) == {"input_ids"}  # as SiglipTokenizer: no attention mask, like training
    # padding matters: the unpadded text gives another embedding, the padded one is the reference
    with torch.no_grad():
        padded = enc.model.get_text_features(**inputs).pooler_output[:1]
        raw = enc.tokenizer(["a dog"], return_tensors="pt")
        unpadded = enc.model.get_text_features(**raw).pooler_output
    assert not torch.allclose(F.normalize(padded, dim=-1), F.normalize(unpadded, dim=-1), atol=1e-3)
    # a shorter max_length truncates earlier but still pads to the trained 64
    cut = HFClipEncoder(str(dirs[kind]), device="cpu", max_length=4)
    ids = cut._tokenize(["a red square on the left of a blue circle"])[0]["input_ids"]
    assert ids.shape == (1, 64)
    cut.encode([EncodeInput(id="l", text="a red square on the left of a blue circle", image=None, image_path=None,
                            instruction=None, content_hash="l")], role="query", task=TASK)
    assert cut.meta.extra["truncated_texts"] == 1


def test_reduced_precision_close_to_fp32(dirs, encoders, images):
    bf = HFClipEncoder(str(dirs["clip"]), device="cpu", precision="bf16")
    assert bf.meta.extra["precision"] == "bf16"
    items = _items(images)
    a = bf.encode(items, role="query", task=TASK)
    b = encoders["clip"].encode(items, role="query", task=TASK)
    assert a.dtype == np.float32
    cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98


# ---------------------------------------------------------------------------------------------------
# bad input: one line each


def test_not_a_dual_encoder(dirs):
    with pytest.raises(EncoderError, match=r"'bert' model \(BertModel\) without get_text_features") as e:
        HFClipEncoder(str(dirs["bert"]), device="cpu")
    assert "clip, siglip" in _one_line(e)


def test_empty_tokenizer(dirs, tmp_path):
    d = tmp_path / "clip-empty-tok"
    shutil.copytree(dirs["clip"], d)
    th.empty_tokenizer(d)
    with pytest.raises(EncoderError, match="tokenizer loaded from .* is empty or broken") as e:
        HFClipEncoder(str(d), device="cpu")
    _one_line(e)


def test_missing_tokenizer_files(dirs, tmp_path):
    d = tmp_path / "clip-no-tok"
    shutil.copytree(dirs["clip"], d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).unlink()
    with pytest.raises(EncoderError, match="tokenizer") as e:
        HFClipEncoder(str(d), device="cpu")
    _one_line(e)


def test_missing_image_processor(dirs, tmp_path):
    d = tmp_path / "clip-no-proc"
    shutil.copytree(dirs["clip"], d)
    (d / "preprocessor_config.json").unlink()
    with pytest.raises(EncoderError, match=r"cannot load the image processor .*\(no preprocessor_config.json there\)") as e:
        HFClipEncoder(str(d), device="cpu")
    _one_line(e)


def test_mismatched_checkpoint_names_tensor(dirs, tmp_path):
    d = tmp_path / "clip-bad-shape"
    shutil.copytree(dirs["clip"], d)
    name = th.mismatch_shapes(d)
    assert name == "text_projection.weight"
    with pytest.raises(EncoderError, match=r"tensor 'text_projection.weight' has shape \[17, 32\] in the checkpoint "
                                           r"but \[16, 32\] in config.json") as e:
        HFClipEncoder(str(d), device="cpu")
    _one_line(e)


def test_missing_tensor_named(dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "clip-missing"
    shutil.copytree(dirs["clip"], d)
    sd = load_file(str(d / "model.safetensors"))
    del sd["visual_projection.weight"]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(EncoderError, match="lacks tensor 'visual_projection.weight'") as e:
        HFClipEncoder(str(d), device="cpu")
    _one_line(e)


def test_wrong_feature_extraction_is_refused(dirs, monkeypatch):
    """The load-time probe guards the transformers-5 trap: features that are not the model's embeddings."""
    import mrbench.encoders.hf_clip as hf

    monkeypatch.setattr(hf, "_features", lambda out, kind: out.last_hidden_state.mean(dim=1))  # unprojected
    with pytest.raises(EncoderError, match="does not reproduce the model's own text_embeds") as e:
        HFClipEncoder(str(dirs["clip"]), device="cpu")
    _one_line(e)


def test_not_a_model_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="no config.json") as e:
        HFClipEncoder(str(tmp_path / "empty"), device="cpu")
    _one_line(e)
    with pytest.raises(EncoderError, match="neither a local directory nor a hub id"):
        HFClipEncoder(str(tmp_path / "nope" / "deeper"), device="cpu")


def test_offline_uncached_hub_id_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    t0 = time.perf_counter()
    with pytest.raises(EncoderError, match=r"not on disk and the hub is offline") as e:
        get_encoder("hf:no-such-org/no-such-clip-model", device="cpu")
    assert time.perf_counter() - t0 < 5
    assert "hf download no-such-org/no-such-clip-model" in _one_line(e)


# ---------------------------------------------------------------------------------------------------
# end to end


def test_evaluate_end_to_end(dirs):
    spec = f"hf:{dirs['clip']}"
    res = mrbench.evaluate("mrbench-synth-tiny", spec, encoder_kwargs={"device": "cpu", "batch_size": 16},
                           tasks=["t2i", "it2i"], cache=False)
    enc = res.data["encoder"]
    assert enc["name"] == spec and enc["modalities"] == ["text", "image"] and enc["dim"] == 16
    assert enc["extra"]["model_type"] == "clip" and enc["extra"]["device"] == "cpu"
    assert set(res.per_query["task"]) == {"t2i", "it2i"}
    assert np.isfinite(res.per_query["hit@10"]).all()
    # random weights: rankings are not all ties (images are actually read)
    assert (res.per_query["ties"] < 40).any()


def test_siglip_evaluate_end_to_end(dirs):
    res = mrbench.evaluate("mrbench-synth-tiny", f"hf:{dirs['siglip2']}", encoder_kwargs={"device": "cpu"},
                           tasks=["i2t"], cache=False, grain_sensitivity=False)
    assert res.data["encoder"]["extra"]["model_type"] == "siglip2" and len(res.per_query) > 0


# ---------------------------------------------------------------------------------------------------
# real weights (opt-in)


def _real_dir(var: str) -> str:
    d = os.environ.get(var)
    if not d:
        pytest.skip(f"{var} not set")
    return d


@pytest.mark.realweights
@pytest.mark.parametrize("var", ["MRBENCH_HF_CLIP_DIR", "MRBENCH_HF_SIGLIP_DIR"])
def test_real_checkpoint_zero_shot_colours(var, tmp_path):
    enc = HFClipEncoder(_real_dir(var))
    assert enc.meta.extra["features_match_forward"] is True
    names = ["red", "green", "blue", "yellow"]
    rgb = [(230, 20, 20), (20, 200, 20), (20, 20, 230), (240, 230, 20)]
    texts = [EncodeInput(id=n, text=f"a photo of a plain {n} square", image=None, image_path=None, instruction=None,
                         content_hash=n) for n in names]
    imgs = []
    for n, c in zip(names, rgb):
        p = tmp_path / f"{n}.png"
        Image.new("RGB", (224, 224), c).save(p)
        imgs.append(EncodeInput(id=n, text=None, image=Image.open(p).convert("RGB"), image_path=p, instruction=None,
                                content_hash=n))
    t = enc.encode(texts, role="query", task=TASK)
    i = enc.encode(imgs, role="candidate", task=TASK)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    i /= np.linalg.norm(i, axis=1, keepdims=True)
    assert (np.argmax(t @ i.T, axis=1) == np.arange(len(names))).all()


# ---------------------------------------------------------------------------------------------------
# CUDA (runs only where a GPU is present)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind, dirs, encoders, images):
    items = _items(images)
    ref = encoders[kind].encode(items, role="query", task=TASK)
    auto = HFClipEncoder(str(dirs[kind]))  # device auto → cuda, precision auto → bf16/fp16
    assert auto.meta.extra["device"] == "cuda" and auto.meta.extra["precision"] in ("bf16", "fp16")
    got = auto.encode(items, role="query", task=TASK)
    assert got.dtype == np.float32 and got.shape == ref.shape
    cos = np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.98, cos
    fp32 = HFClipEncoder(str(dirs[kind]), device="cuda", precision="fp32").encode(items, role="query", task=TASK)
    np.testing.assert_allclose(fp32, ref, atol=3e-3)  # TF32 convolutions allowed by default


@cuda
def test_cuda_evaluate_end_to_end(dirs):
    res = mrbench.evaluate("mrbench-synth-tiny", f"hf:{dirs['siglip']}", tasks=["t2i", "it2i"], cache=False,
                           grain_sensitivity=False)
    assert res.data["encoder"]["extra"]["device"] == "cuda" and len(res.per_query) > 0


# ---------------------------------------------------------------------------------------------------
# texts tokenised ahead by the harness (text_transform + encode_tokens)


def _text_task(texts: list[str]):
    from mrbench.data.schema import Benchmark, Candidate, Query, Task

    qs = [Query(id=f"q{i}", text=t) for i, t in enumerate(texts)]
    task = Task(name="t2i", query_modality="text", candidate_modality="text", queries=qs,
                candidates=[Candidate(id="c0", text="x")], qrels={q.id: {"c0": 1} for q in qs})
    return Benchmark(name="txt", version="1", tasks=[task]), task


LONG = "a photo of a dog on the left of a red square " * 8  # over every tiny context (CLIP 24, SigLIP 64)


@pytest.mark.parametrize("procs", [False, True], ids=["thread", "processes"])
@pytest.mark.parametrize("kind,max_length", [("clip", None), ("clip", 8), ("siglip", None), ("siglip", 4),
                                             ("siglip2", None)])
def test_texts_tokenised_ahead_give_the_same_embeddings(kind, max_length, procs, dirs, monkeypatch, capfd):
    """The harness tokenises the next batch with text_transform() (in fork workers for many texts)
    and the tower reads EncodeInput.tokens: the embeddings and the truncation count equal the
    in-forward tokenisation's bit for bit, CLIP still padded to each batch's longest text."""
    from mrbench.encoders import harness
    from mrbench.encoders.harness import encode_items

    if procs:  # processes are used when feeding a GPU: pretend the encoder runs on one
        monkeypatch.setattr(harness, "TEXT_PROCESS_MIN", 1)
        monkeypatch.setattr(harness, "_gpu_decode_device", lambda enc: "cuda")
    texts = [t or "x" for t in TEXTS] * 3 + [LONG, "a dog", LONG[:40]]
    bench, task = _text_task(texts)
    enc = HFClipEncoder(str(dirs[kind]), device="cpu", batch_size=4, max_length=max_length)
    shapes = []
    real = enc.encode_tokens
    monkeypatch.setattr(enc, "encode_tokens", lambda tok: shapes.append(tuple(tok.shape)) or real(tok))
    before = enc.truncated_texts
    ahead = encode_items(enc, task.queries, role="query", task=task, bench=bench, num_workers=2)
    n_cut = enc.truncated_texts - before
    assert len(shapes) == -(-len(texts) // 4)
    keys = enc.token_rows.keys
    if kind == "clip":  # input ids + attention mask, each cut to the batch's longest text
        assert keys == ("input_ids", "attention_mask")
        assert all(s[1] % 2 == 0 and s[1] <= 2 * enc.max_length for s in shapes)
        if max_length is None:  # some batches hold only short texts
            assert min(s[1] for s in shapes) < 2 * enc.max_length
    else:  # SigLIP: input ids padded to the trained context whatever the cut
        assert all(s[1] == len(keys) * 64 for s in shapes)
    monkeypatch.setattr(enc, "text_transform", lambda: None)
    inline = encode_items(enc, task.queries, role="query", task=task, bench=bench, num_workers=2)
    np.testing.assert_array_equal(ahead, inline)
    assert enc.truncated_texts - before - n_cut == n_cut > 0
    if procs:  # forked after the parent tokenised: no "huggingface/tokenizers ... forked" warning
        assert "huggingface/tokenizers" not in capfd.readouterr().err
        harness._TEXT_POOL.shutdown()


@pytest.mark.parametrize("side", ["right", "left"])
def test_token_rows_batch_is_what_padding_to_the_longest_gives(side, dirs):
    """HFTokenRows pads every text to max_length; a batch cut to its longest text equals the
    tokenizer's own padding=True output, on either padding side."""
    from transformers import AutoTokenizer

    from mrbench.encoders.hf_clip import HFTokenRows

    tok = AutoTokenizer.from_pretrained(str(dirs["clip"]))
    tok.padding_side = side
    rows_fn = HFTokenRows(tok, max_length=12, width=12, trim=True)
    texts = ["a dog", "the cat", LONG, "red"]
    rows = rows_fn(texts)
    assert rows.shape == (4, 2 * 12 + 2) and list(rows[:, -1]) == [0, 0, 1, 0]
    ref = tok(texts, padding=True, max_length=12, truncation=True, return_tensors="np")
    got = rows_fn.inputs(torch.from_numpy(rows_fn.batch(rows)))
    assert set(got) == {"input_ids", "attention_mask"}
    for k in got:
        np.testing.assert_array_equal(got[k].numpy(), ref[k])
    assert rows_fn == HFTokenRows(tok, max_length=12, width=12, trim=True) != HFTokenRows(tok, max_length=8, width=8,
                                                                                         trim=True)
    assert rows_fn([]).shape == (0, 26)


# ---------------------------------------------------------------------------------------------------
# images prepared in decode worker processes and kept in the pixel cache (pixel_transform)


@pytest.mark.parametrize("kind", KINDS)
def test_pixel_transform_is_prepare_image(kind, encoders, images):
    """pixel_transform() gives, as numpy, exactly what prepare_image gives (the processor's own output;
    SigLIP 2: its patches packed with mask and shape), and keys the pixel cache by the processor's config."""
    enc = encoders[kind]
    fn = enc.pixel_transform()
    assert fn is not None and fn.transform_id.startswith(f"hf-image-processor:{type(enc.image_processor).__name__}:")
    split = kind != "siglip2"  # CLIP / SigLIP: uint8, rescaled and normalised on the device; NaFlex: float32
    assert (fn.split is not None) == split and fn.transform_id.endswith(":uint8" if split else ":float32")
    for p in images:
        im = Image.open(p).convert("RGB")
        got = fn(im)
        assert isinstance(got, np.ndarray) and got.dtype == (np.uint8 if split else np.float32)
        np.testing.assert_array_equal(got, enc.prepare_image(im).numpy())
        ref = enc.image_processor(images=[im], return_tensors="pt")["pixel_values"][0].float().numpy()
        if split:  # the processor's own float32 output, bit for bit
            np.testing.assert_array_equal(fn.normalise(torch.from_numpy(got)[None])[0].numpy(), ref)
        else:
            np.testing.assert_array_equal(got[: ref.shape[0], : ref.shape[1]], ref)
    import copy

    other = copy.deepcopy(enc.image_processor)
    other.image_mean = [0.25, 0.5, 0.75]  # no model here uses this mean
    from mrbench.encoders.hf_clip import HFImagePrep

    assert HFImagePrep(other, naflex=kind == "siglip2").transform_id != fn.transform_id


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_uint8_batch_normalised_equals_processor_batch(kind, encoders, images):
    """A batch of uint8 images, stacked and normalised at once (as on the model's device), is the
    processor's own float32 output for the same images, bit for bit; the embeddings equal those of
    the processor's output fed to the tower."""
    enc = encoders[kind]
    ims = [Image.open(p).convert("RGB") for p in images]
    batch = torch.stack([enc.prepare_image(im) for im in ims])
    assert batch.dtype == torch.uint8
    ref = enc.image_processor(images=ims, return_tensors="pt")["pixel_values"]
    assert torch.equal(enc.image_prep.normalise(batch), ref)
    with torch.inference_mode():
        assert torch.equal(enc.encode_images(batch), enc.encode_images(ref))


def test_processors_without_a_bitwise_split_keep_float32(dirs, images):
    """The Pillow backend, and a processor that changes its output after rescale_and_normalize, keep
    the processor's float32 output (the probe finds no bit-for-bit split); their cache keys differ."""
    from transformers import AutoImageProcessor

    from mrbench.encoders.hf_clip import HFImagePrep

    pil = AutoImageProcessor.from_pretrained(str(dirs["clip"]), backend="pil")
    fast = AutoImageProcessor.from_pretrained(str(dirs["clip"]))

    class Shifted(type(fast)):  # one more elementwise step after the processor's normalisation
        def _preprocess(self, *args, **kwargs):
            out = super()._preprocess(*args, **kwargs)
            out["pixel_values"] = out["pixel_values"] + 0.5
            return out

    shifted = Shifted.from_pretrained(str(dirs["clip"]))
    im = Image.open(images[3]).convert("RGB")
    for proc in (pil, shifted):
        prep = HFImagePrep(proc, naflex=False)
        assert prep.split is None and prep.transform_id.endswith(":float32")
        got = prep(im)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, np.asarray(proc(images=[im], return_tensors="np")["pixel_values"][0]))
    assert HFImagePrep(fast, naflex=False).split is not None
    off = HFImagePrep(fast, naflex=False, uint8=False)  # asked for the float32 output (bench_hf_images.py)
    assert off.split is None and off(im).dtype == np.float32 and off.transform_id.endswith(":float32")


@pytest.mark.parametrize("kind", KINDS)
def test_process_decode_and_pixel_cache_give_the_same_embeddings(kind, dirs, tmp_path):
    """Images prepared in worker processes, and read back from the pixel cache, give the embeddings
    of images prepared in threads, bit for bit."""
    from mrbench.encoders.harness import EncodeStats, encode_items

    bench, task = image_bench(tmp_path / "b", n=9)
    enc = HFClipEncoder(str(dirs[kind]), device="cpu", batch_size=4)
    kw = dict(role="candidate", task=task, bench=bench, num_workers=2)
    ref = encode_items(enc, task.candidates, workers="thread", **kw)
    np.testing.assert_array_equal(encode_items(enc, task.candidates, workers="process", **kw), ref)
    for n_hits in (0, len(task.candidates)):  # fills the cache, then reads every image from it
        st = EncodeStats()
        out = encode_items(enc, task.candidates, workers="process", pixel_cache=tmp_path / "px", stats=st, **kw)
        np.testing.assert_array_equal(out, ref)
        assert st.pixel_cache_hits == n_hits


@pytest.mark.parametrize("kind", ["clip", "siglip2"])
def test_warm_batches_read_into_staging_buffers_give_the_same_embeddings(kind, dirs, tmp_path, monkeypatch):
    """As for an encoder on a GPU: warm batches of the processor's float32 pixels (SigLIP 2: packed
    patches) are read from the pixel cache into reused staging buffers, one read per run of the
    shards; the embeddings equal an uncached run's (the device side stood in for on the CPU)."""
    from mrbench.encoders.harness import encode_items

    bench, task = image_bench(tmp_path / "b", n=10)
    enc = HFClipEncoder(str(dirs[kind]), device="cpu", batch_size=4)
    kw = dict(role="candidate", task=task, bench=bench, num_workers=2)
    ref = encode_items(enc, task.candidates, workers="thread", **kw)
    reads = stage_on_host(monkeypatch)
    for _ in range(3):  # fills the cache, learns the pixel layout, reads whole batches into the buffers
        reads.clear()
        out = encode_items(enc, task.candidates, pixel_cache=tmp_path / "px", **kw)
        np.testing.assert_array_equal(out, ref)
    assert sorted(reads) == [2, 4, 4]  # one read per batch (its shard's run), not one per image
