"""The ``vlm2vec`` family on a tiny random Qwen2-VL checkpoint built offline (tests/fixtures/tiny_qwen2vl.py).

The Phi-3.5-V backbone needs its remote modelling code and real weights: only its prompt format is
tested offline. Real-weight checks are opt-in (``-m realweights`` with ``MRBENCH_VLM2VEC_DIR``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mrbench
from mrbench.data.schema import TaskInfo
from mrbench.encoders.base import EncodeInput
from mrbench.errors import EncoderError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fixtures.tiny_qwen2vl import build_tiny_qwen2vl, make_lora_adapter, not_qwen_dir

from mrbench.encoders.vlm2vec import VLM2VecEncoder, vlm2vec_prompt

TASK = TaskInfo("probe", "image+text", "image", query_instruction="Find an image that matches the description.",
                candidate_instruction="Represent the image for retrieval.")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny-qwen2vl-v2v"))


@pytest.fixture(scope="session")
def encoder(tiny_dir):
    return VLM2VecEncoder(str(tiny_dir), device="cpu", batch_size=8)


def _image(i: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    im = Image.new("RGB", size, (40 * i % 256, 120, 255 - 30 * i % 256))
    im.putpixel((i % size[0], 3), (255, 255, 255))
    return im


def _item(i: int, text: str | None, image: Image.Image | None, instruction: str | None = None) -> EncodeInput:
    return EncodeInput(id=f"x{i}", text=text, image=image, image_path=Path(f"img{i}.png") if image is not None else None,
                       instruction=instruction, content_hash=f"h{i}")


def _mixed(n: int = 7, instruction: str | None = TASK.query_instruction) -> list[EncodeInput]:
    out = []
    for i in range(n):
        kind = i % 3
        text = None if kind == 1 else f"a red circle left of a blue square number {i}" + " big" * i
        image = None if kind == 0 else _image(i, (20 + 9 * i, 30 + 5 * (i % 2)))
        out.append(_item(i, text, image, instruction))
    return out


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------------
# prompt format (both backbones; Phi-3.5-V is tested only here, offline)


@pytest.mark.parametrize("backbone,img", [("qwen2_vl", "<|image_pad|>"), ("phi3_v", "<|image_1|>")])
def test_prompt_format_matches_vlm2vec_eval(backbone, img):
    inst = "Find me an everyday image that matches the given caption:"
    assert vlm2vec_prompt(inst, "A man riding a bike.", False, backbone) == f"{inst} A man riding a bike.\n"
    assert vlm2vec_prompt("Represent the given image.", None, True, backbone) == f"{img}\nRepresent the given image.\n"
    assert vlm2vec_prompt("Given an image, find a similar image with the changes:", "Show three bottles.", True,
                          backbone) == f"{img}\nGiven an image, find a similar image with the changes: Show three bottles.\n"
    assert vlm2vec_prompt(None, "A raw caption.", False, backbone) == "A raw caption."  # i2t candidates
    assert vlm2vec_prompt(None, None, True, backbone) == f"{img}\n"
    assert vlm2vec_prompt("", "cap", True, backbone) == f"{img}\ncap\n"


# ---------------------------------------------------------------------------------------------------
# encoding


def test_shapes_dtype_normalised_deterministic(encoder):
    items = _mixed()
    a = encoder.encode(items, role="query", task=TASK)
    b = encoder.encode(items, role="query", task=TASK)
    assert a.shape == (7, 64) and a.dtype == np.float32 and encoder.meta.dim == 64
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a, b)
    # distinct items, distinct embeddings
    assert np.abs(a[:, None] - a[None]).sum(-1)[~np.eye(7, dtype=bool)].min() > 1e-3


def test_batch_size_invariance(encoder):
    items = _mixed()
    encoder.batch_size = 7
    full = encoder.encode(items, role="candidate", task=TASK)
    encoder.batch_size = 1
    singles = encoder.encode(items, role="candidate", task=TASK)
    encoder.batch_size = 8
    assert np.abs(full - singles).max() < 1e-5


def test_image_text_fusion_and_instruction(encoder):
    im = _image(3)
    both, img, txt = encoder.encode([_item(0, "a blue square", im), _item(1, None, im), _item(2, "a blue square", None)],
                                    role="query", task=TASK)
    assert np.abs(both - img).max() > 1e-3 and np.abs(both - txt).max() > 1e-3
    with_inst = encoder.encode([_item(0, "a blue square", im, "Find the image.")], role="query", task=TASK)
    assert np.abs(with_inst[0] - both).max() > 1e-3


def test_matches_a_manual_processor_forward(encoder, tiny_dir):
    """The embedding is HF's hidden_states[-1] at the last token of VLM2Vec's prompt, normalised."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    proc = AutoProcessor.from_pretrained(str(tiny_dir))
    model = Qwen2VLForConditionalGeneration.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    im = _image(5)
    prompt = "<|image_pad|>\nFind the image. a red circle\n"
    inputs = proc(text=[prompt], images=[im], return_tensors="pt")
    with torch.no_grad():
        h = model(**inputs, output_hidden_states=True).hidden_states[-1][0, -1]
    ref = torch.nn.functional.normalize(h, dim=-1).numpy()
    got = encoder.encode([_item(0, "a red circle", im, "Find the image.")], role="query", task=TASK)[0]
    assert np.abs(got - ref).max() < 1e-5


def test_save_and_load_by_path_gives_same_embeddings(encoder, tiny_dir, tmp_path):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(str(tiny_dir), dtype=torch.float32)
    model.save_pretrained(tmp_path / "copy")
    AutoProcessor.from_pretrained(str(tiny_dir)).save_pretrained(tmp_path / "copy")
    again = VLM2VecEncoder(f"local-dir:{tmp_path / 'copy'}", device="cpu")
    items = _mixed(4)
    assert np.abs(encoder.encode(items, role="query", task=TASK) - again.encode(items, role="query", task=TASK)).max() < 1e-6
    assert again.meta.revision.startswith("sha256:")


def test_truncation_is_counted(tiny_dir):
    enc = VLM2VecEncoder(str(tiny_dir), device="cpu", max_length=24)
    long_text = " ".join(["a red circle left of a blue square"] * 20)
    out = enc.encode([_item(0, long_text, None, "Find it."), _item(1, "short", _image(1), "Find it.")],
                     role="query", task=TASK)
    assert np.isfinite(out).all()
    assert enc.meta.extra["truncated_texts"] == 1
    cut = enc.encode([_item(2, long_text + " more words", None, "Find it.")], role="query", task=TASK)
    assert enc.meta.extra["truncated_texts"] == 2
    assert np.abs(cut - out[:1]).max() < 1e-6  # both cut to the same first tokens


def test_meta_records_prompts_and_runtime(encoder):
    ex = encoder.meta.extra
    assert ex["backbone"] == "qwen2_vl" and ex["pooling"] == "last" and ex["normalize"] is True
    assert ex["prompts"]["query"]["image+text"] == "<|image_pad|>\n{instruction} {text}\n"
    assert ex["device"] == "cpu" and ex["precision"] == "fp32"
    assert encoder.meta.native_image_text and encoder.meta.needs_pixels and encoder.meta.similarity == "cosine"


def test_lora_adapter_is_merged(encoder, tiny_dir, tmp_path):
    adapter = make_lora_adapter(tiny_dir, tmp_path / "lora")
    enc = VLM2VecEncoder(str(tiny_dir), device="cpu", adapter=str(adapter))
    items = _mixed(3)
    assert np.abs(enc.encode(items, role="query", task=TASK) - encoder.encode(items, role="query", task=TASK)).max() > 1e-3
    assert "+sha256:" in enc.meta.revision and enc.meta.extra["adapter"] == str(adapter)


def test_qwen2_5_vl_checkpoint(tmp_path):
    d = build_tiny_qwen2vl(tmp_path / "q25", variant="qwen2_5_vl")
    enc = VLM2VecEncoder(str(d), device="cpu", batch_size=7)
    assert enc.backbone == "qwen2_vl" and enc.meta.extra["model_type"] == "qwen2_5_vl"
    items = _mixed()
    full = enc.encode(items, role="query", task=TASK)
    enc.batch_size = 1
    assert np.abs(full - enc.encode(items, role="query", task=TASK)).max() < 1e-5


# ---------------------------------------------------------------------------------------------------
# errors


def test_offline_hub_id_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(EncoderError, match="not on disk and the hub is offline") as e:
        VLM2VecEncoder("no-such-org/no-such-vlm2vec-model", device="cpu")
    assert time.perf_counter() - t0 < 5
    assert "vlm2vec:no-such-org/no-such-vlm2vec-model" in _one_line(e)


def test_non_qwen_model_dir_names_the_model_type(tmp_path):
    d = not_qwen_dir(tmp_path / "bert", "bert")
    with pytest.raises(EncoderError, match="'bert'") as e:
        VLM2VecEncoder(str(d), device="cpu")
    _one_line(e)
    with pytest.raises(EncoderError, match="'bert' model, not a Qwen2-VL") as e:
        VLM2VecEncoder(str(d), device="cpu", backbone="qwen2_vl")
    _one_line(e)
    with pytest.raises(EncoderError, match="no config.json"):
        VLM2VecEncoder(str(tmp_path), device="cpu")


def test_bad_kwargs_are_one_line(tiny_dir):
    with pytest.raises(EncoderError, match="backbone"):
        VLM2VecEncoder(str(tiny_dir), device="cpu", backbone="llava")
    with pytest.raises(EncoderError, match="image_resolution"):
        VLM2VecEncoder(str(tiny_dir), device="cpu", image_resolution="huge")


# ---------------------------------------------------------------------------------------------------
# registry, conformance and end to end


def test_registry_and_check_encoder(tiny_dir, tmp_path):
    from mrbench.encoders.check import check_encoder, passed
    from mrbench.encoders.registry import get_encoder

    enc = get_encoder(f"vlm2vec:{tiny_dir}", device="cpu")
    assert isinstance(enc, VLM2VecEncoder) and enc.meta.name == f"vlm2vec:{tiny_dir}"
    res = check_encoder(enc, n_items=4, tmp_dir=tmp_path)
    assert passed(res), [r for r in res if not r.ok]


def test_evaluate_end_to_end_records_instructions(tiny_dir):
    res = mrbench.evaluate("mrbench-synth-tiny", f"vlm2vec:{tiny_dir}", encoder_kwargs={"device": "cpu"},
                           tasks=["it2i"], cache=False)
    enc = res.data["encoder"]
    assert enc["name"] == f"vlm2vec:{tiny_dir}" and enc["dim"] == 64
    inst = enc["extra"]["instructions"]["it2i"]
    assert inst["query"] == ["Apply the edit to the image and find the result."]
    assert inst["candidate"] == ["Represent the image for retrieval."]
    assert enc["extra"]["prompts"]["query"]["image+text"].startswith("<|image_pad|>\n")
    assert np.isfinite(res.per_query["hit@10"]).all() and len(res.per_query) == 8


# ---------------------------------------------------------------------------------------------------
# real weights (opt-in)


@pytest.mark.realweights
def test_real_vlm2vec_ranks_the_matching_caption_first():
    d = os.environ.get("MRBENCH_VLM2VEC_DIR")
    if not d:
        pytest.skip("MRBENCH_VLM2VEC_DIR not set")
    enc = VLM2VecEncoder(d, device="auto", batch_size=4)
    red = Image.new("RGB", (224, 224), (220, 20, 20))
    blue = Image.new("RGB", (224, 224), (20, 20, 220))
    task = TaskInfo("t2i", "text", "image", "Find me an everyday image that matches the given caption:",
                    "Represent the given image.")
    q = enc.encode([_item(0, "a plain red square", None, task.query_instruction)], role="query", task=task)
    c = enc.encode([_item(1, None, red, task.candidate_instruction), _item(2, None, blue, task.candidate_instruction)],
                   role="candidate", task=task)
    assert c.shape[1] == enc.meta.dim and np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-3)
    s = (q @ c.T)[0]
    assert s[0] > s[1]


def test_prepared_images_equal_the_processor_path(encoder):
    """The harness runs prepare_image in its decode threads; a batch built from those prepared
    images gives the embeddings of a batch built by the processor from the PIL images."""
    from dataclasses import replace

    from mrbench.encoders.qwen2vl import PreparedImage

    items = _mixed(7)
    prepared = [replace(it, pixels=encoder.prepare_image(it.image)) if it.image is not None else it for it in items]
    assert any(isinstance(it.pixels, PreparedImage) for it in prepared)
    ref = encoder.encode(items, role="query", task=TASK)
    out = encoder.encode(prepared, role="query", task=TASK)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    mixed = [p if i % 2 else it for i, (p, it) in enumerate(zip(prepared, items))]  # some prepared, some not
    np.testing.assert_allclose(encoder.encode(mixed, role="query", task=TASK), ref, atol=1e-5)


def test_process_decode_workers_equal_threads(encoder):
    """Image processing in forked decode worker processes (pixel_transform) gives the embeddings of
    the thread path (prepare_image) and of the plain processor path."""
    from mrbench.encoders.harness import encode_items

    bench = mrbench.load_benchmark("mrbench-synth-tiny")
    task = bench.task("it2i")
    items = task.queries[:6]
    ref = encode_items(encoder, items, role="query", task=task, bench=bench, num_workers=0, batch_size=3)
    thr = encode_items(encoder, items, role="query", task=task, bench=bench, num_workers=2, workers="thread", batch_size=3)
    pro = encode_items(encoder, items, role="query", task=task, bench=bench, num_workers=2, workers="process", batch_size=3)
    np.testing.assert_allclose(thr, ref, atol=1e-5)
    np.testing.assert_allclose(pro, ref, atol=1e-5)
