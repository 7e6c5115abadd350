"""The ``ret`` family (generative [RET] encoder) on a tiny random Qwen2-VL checkpoint built offline.

Also pins the public functions the ELVA trainer reuses: prompts, batched summaries (greedy and
sampled), summary log-probabilities and the [RET] embedding. Real-weight checks are opt-in
(``-m realweights`` with ``MRBENCH_RET_DIR``).
"""

from __future__ import annotations

import logging
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
pytest.importorskip("peft")

from fixtures.tiny_qwen2vl import (
    RET_TOKEN,
    build_tiny_qwen2vl,
    make_lora_adapter,
    not_qwen_dir,
)

from mrbench.encoders.generative import (
    DEFAULT_RET_TEMPLATE,
    RetEncoder,
    build_ret_prompts,
    generate_summaries,
    prepare_ret_batch,
    ret_embeddings,
    ret_sequences,
    summary_logprobs,
)

TASK = TaskInfo("probe", "image+text", "image", query_instruction="Find an image that matches the description.",
                candidate_instruction="Represent the image for retrieval.")
N_SUM = 6


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny-qwen2vl-ret"), with_ret=True)


@pytest.fixture(scope="session")
def encoder(tiny_dir):
    return RetEncoder(str(tiny_dir), device="cpu", batch_size=8, max_summary_tokens=N_SUM)


@pytest.fixture(scope="session")
def adapter_dir(tiny_dir, tmp_path_factory) -> Path:
    return make_lora_adapter(tiny_dir, tmp_path_factory.mktemp("ret-lora") / "adapter")


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


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------------
# the encoder


def test_shapes_dtype_deterministic_and_harness_normalises(encoder):
    items = _mixed()
    a = encoder.encode(items, role="query", task=TASK)
    b = encoder.encode(items, role="query", task=TASK)
    assert a.shape == (7, 64) and a.dtype == np.float32 and encoder.meta.dim == 64
    assert np.array_equal(a, b)
    assert np.abs(_unit(a)[:, None] - _unit(a)[None]).sum(-1)[~np.eye(7, dtype=bool)].min() > 1e-3

    from mrbench.data.schema import Benchmark, Candidate, Query, Task
    from mrbench.encoders.harness import encode_items

    t = Task(name="t2t", query_modality="text", candidate_modality="text",
             queries=[Query("q0", text="a red circle")], candidates=[Candidate(f"c{i}", text=f"cand {i}") for i in range(3)],
             qrels={"q0": {"c0": 1}}, query_instruction="Find the caption.")
    emb = encode_items(encoder, t.candidates, role="candidate", task=t, bench=Benchmark("b", "1", [t]))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_batch_size_invariance(encoder):
    items = _mixed()
    encoder.batch_size = 7
    full = encoder.encode(items, role="candidate", task=TASK)
    encoder.batch_size = 1
    singles = encoder.encode(items, role="candidate", task=TASK)
    encoder.batch_size = 8
    assert np.abs(_unit(full) - _unit(singles)).max() < 1e-5


def test_ret_embedding_is_the_hidden_state_at_ret(encoder, tiny_dir):
    """Manual: processor on the chat prompt → HF greedy generate → append [RET] → hidden_states[-1] there."""
    from transformers import (
        AutoProcessor,
        GenerationConfig,
        Qwen2VLForConditionalGeneration,
    )

    proc = AutoProcessor.from_pretrained(str(tiny_dir))
    model = Qwen2VLForConditionalGeneration.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    tok = proc.tokenizer
    im = _image(2)
    prompt = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
              "<|vision_start|><|image_pad|><|vision_end|>Find it. a blue square\n"
              "Summarize above image and sentence in a few words: <|im_end|>\n<|im_start|>assistant\n")
    inputs = proc(text=[prompt], images=[im], return_tensors="pt")
    stops = [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", RET_TOKEN)]
    cfg = GenerationConfig(max_new_tokens=N_SUM, do_sample=False, eos_token_id=stops, pad_token_id=stops[0])
    with torch.no_grad():
        out = model.generate(**inputs, generation_config=cfg)[0].tolist()
    n = inputs["input_ids"].shape[1]
    summary = [t for t in out[n:]]
    summary = summary[: next((j for j, t in enumerate(summary) if t in stops), len(summary))]
    ret_id = tok.convert_tokens_to_ids(RET_TOKEN)
    ids = torch.tensor([out[:n] + summary + [ret_id]])
    full = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": inputs["pixel_values"],
            "image_grid_thw": inputs["image_grid_thw"],
            "mm_token_type_ids": (ids == model.config.image_token_id).long()}
    with torch.no_grad():
        h = model(**full, output_hidden_states=True).hidden_states[-1][0, -1].numpy()
    got = encoder.encode([_item(0, "a blue square", im, "Find it.")], role="query", task=TASK)[0]
    assert np.abs(got - h).max() < 1e-4
    assert encoder.summary_examples and all(isinstance(s["summary"], str) for s in encoder.summary_examples)


def test_image_text_and_instruction_matter(encoder):
    im = _image(3)
    both, img, txt = encoder.encode([_item(0, "a blue square", im), _item(1, None, im), _item(2, "a blue square", None)],
                                    role="query", task=TASK)
    assert np.abs(both - img).max() > 1e-3 and np.abs(both - txt).max() > 1e-3
    other = encoder.encode([_item(0, "a blue square", im, "Find the image.")], role="query", task=TASK)[0]
    assert np.abs(other - both).max() > 1e-3


def test_save_and_load_by_path_gives_same_embeddings(encoder, tiny_dir, tmp_path):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    Qwen2VLForConditionalGeneration.from_pretrained(str(tiny_dir), dtype=torch.float32).save_pretrained(tmp_path / "copy")
    AutoProcessor.from_pretrained(str(tiny_dir)).save_pretrained(tmp_path / "copy")
    again = RetEncoder(str(tmp_path / "copy"), device="cpu", max_summary_tokens=N_SUM)
    items = _mixed(4)
    assert np.abs(encoder.encode(items, role="query", task=TASK) - again.encode(items, role="query", task=TASK)).max() < 1e-5


def test_meta_records_template_decoding_and_revision(encoder):
    ex = encoder.meta.extra
    assert ex["prompt_template"] == DEFAULT_RET_TEMPLATE and ex["decoding"] == "greedy"
    assert ex["max_summary_tokens"] == N_SUM and ex["ret_token"] == RET_TOKEN and ex["ret_token_added"] is False
    assert ex["adapter"] is None and ex["adapter_revision"] is None and ex["device"] == "cpu"
    assert ex["prompts"]["image+text"].endswith("<|im_start|>assistant\n{summary}[RET]")
    assert encoder.meta.revision == ex["base_revision"]
    assert encoder.meta.native_image_text and encoder.meta.similarity == "cosine"


def test_truncation_is_counted(tiny_dir):
    enc = RetEncoder(str(tiny_dir), device="cpu", max_summary_tokens=4, max_length=90)
    long_text = " ".join(["a red circle left of a blue square"] * 30)
    out = enc.encode([_item(0, long_text, None, "Find it."), _item(1, "short", _image(1), "Find it.")],
                     role="query", task=TASK)
    assert np.isfinite(out).all() and enc.meta.extra["truncated_texts"] == 1


# ---------------------------------------------------------------------------------------------------
# the public functions (shared with the ELVA trainer)


def _batch(encoder, n=5, max_summary_tokens=N_SUM):
    items = _mixed(n)
    prompts = build_ret_prompts([it.text for it in items], [it.image for it in items],
                                [it.instruction for it in items])
    return prepare_ret_batch(encoder.processor, prompts, max_length=512, max_summary_tokens=max_summary_tokens)


def test_greedy_summaries_are_deterministic_and_capped(encoder):
    b = _batch(encoder)
    with torch.no_grad():
        s1 = generate_summaries(encoder.model, encoder.processor, b, 3)
        s2 = generate_summaries(encoder.model, encoder.processor, b, 3)
        s0 = generate_summaries(encoder.model, encoder.processor, b, 0)
    assert s1.summary_ids == s2.summary_ids and s1.texts == s2.texts
    assert all(len(s) <= 3 for s in s1.summary_ids) and any(len(s) == 3 for s in s1.summary_ids)
    assert all(f == (len(s) < 3) for s, f in zip(s1.summary_ids, s1.finished))
    assert s0.summary_ids == [[]] * 5
    assert b.padding_side == "left" and b.inputs["attention_mask"][:, -1].all()


def test_sampled_summaries_and_logprobs_for_policy_gradients(encoder):
    b = _batch(encoder)
    torch.manual_seed(0)
    with torch.no_grad():
        a = generate_summaries(encoder.model, encoder.processor, b, 5, do_sample=True, temperature=1.3)
    torch.manual_seed(0)
    with torch.no_grad():
        again = generate_summaries(encoder.model, encoder.processor, b, 5, do_sample=True, temperature=1.3)
    assert a.summary_ids == again.summary_ids and all(len(s) <= 5 for s in a.summary_ids)

    # log-probs recomputed in one forward equal the ones generate() saw
    from transformers import GenerationConfig

    stops = encoder.stop_ids
    cfg = GenerationConfig(max_new_tokens=4, do_sample=False, eos_token_id=stops, pad_token_id=encoder.pad_token_id,
                           output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        out = encoder.model.generate(**b.inputs, generation_config=cfg)
        greedy = generate_summaries(encoder.model, encoder.processor, b, 4, stop_ids=stops)
        lp, mask = summary_logprobs(encoder.model, b, greedy.summary_ids, pad_token_id=encoder.pad_token_id)
    ref = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)  # [B, T, V]
    for i, s in enumerate(greedy.summary_ids):
        assert mask[i].sum().item() == len(s)
        for j, t in enumerate(s):
            assert abs(lp[i, j].item() - ref[i, j, t].item()) < 1e-4

    # differentiable (the trainer calls it outside no_grad)
    encoder.model.zero_grad(set_to_none=True)
    lp, mask = summary_logprobs(encoder.model, b, greedy.summary_ids, pad_token_id=encoder.pad_token_id)
    (lp * mask).sum().backward()
    grads = [p.grad for p in encoder.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    encoder.model.zero_grad(set_to_none=True)


def test_ret_embeddings_positions(encoder):
    b = _batch(encoder, n=3)
    with torch.no_grad():
        s = generate_summaries(encoder.model, encoder.processor, b, 4)
        at = ret_embeddings(encoder.model, b, s.summary_ids, ret_token_id=encoder.ret_token_id,
                            pad_token_id=encoder.pad_token_id)
        before = ret_embeddings(encoder.model, b, s.summary_ids, ret_token_id=encoder.ret_token_id,
                                pad_token_id=encoder.pad_token_id, position="before")
    assert at.shape == before.shape == (3, 64) and (at - before).abs().max() > 1e-3
    seqs = ret_sequences(b, s.summary_ids, encoder.ret_token_id)
    assert all(r[-1] == encoder.ret_token_id and len(r) == len(p) + len(x) + 1
               for r, p, x in zip(seqs, b.rows, s.summary_ids))


# ---------------------------------------------------------------------------------------------------
# adapters and the [RET] token


def test_lora_adapter_differs_from_base_and_equals_a_manual_merge(encoder, tiny_dir, adapter_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    enc = RetEncoder(str(tiny_dir), adapter=str(adapter_dir), device="cpu", max_summary_tokens=N_SUM)
    items = _mixed(4)
    lora = enc.encode(items, role="query", task=TASK)
    base = encoder.encode(items, role="query", task=TASK)
    assert np.abs(_unit(lora) - _unit(base)).max() > 1e-3
    assert enc.meta.revision.startswith(encoder.meta.revision + "+sha256:")
    assert enc.meta.extra["adapter"] == str(adapter_dir) and enc.meta.extra["adapter_revision"].startswith("sha256:")

    model = Qwen2VLForConditionalGeneration.from_pretrained(str(tiny_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    AutoProcessor.from_pretrained(str(tiny_dir)).save_pretrained(tmp_path / "merged")
    manual = RetEncoder(str(tmp_path / "merged"), device="cpu", max_summary_tokens=N_SUM)
    assert np.abs(manual.encode(items, role="query", task=TASK) - lora).max() < 1e-4


def test_adapter_tokenizer_is_preferred(tiny_dir, tmp_path):
    adapter = make_lora_adapter(tiny_dir, tmp_path / "with-tok", save_tokenizer=True)
    enc = RetEncoder(str(tiny_dir), adapter=str(adapter), device="cpu", max_summary_tokens=2)
    assert enc.meta.extra["tokenizer_source"] == str(adapter)
    assert enc.encode(_mixed(2), role="query", task=TASK).shape == (2, 64)


def test_missing_ret_token_is_added_with_a_warning(tmp_path, caplog):
    d = build_tiny_qwen2vl(tmp_path / "no-ret", with_ret=False)
    with caplog.at_level(logging.WARNING, logger="mrbench.encoders"):
        enc = RetEncoder(str(d), device="cpu", max_summary_tokens=2)
    assert any("[RET]" in r.getMessage() and "untrained" in r.getMessage() for r in caplog.records)
    assert enc.meta.extra["ret_token_added"] is True
    assert enc.model.get_input_embeddings().weight.shape[0] == len(enc.processor.tokenizer) > enc.ret_token_id
    assert enc.encode(_mixed(3), role="query", task=TASK).shape == (3, 64)


def test_qwen2_5_vl_checkpoint(tmp_path):
    d = build_tiny_qwen2vl(tmp_path / "q25", variant="qwen2_5_vl")
    enc = RetEncoder(str(d), device="cpu", batch_size=7, max_summary_tokens=3)
    assert enc.meta.extra["model_type"] == "qwen2_5_vl"
    items = _mixed()
    full = enc.encode(items, role="query", task=TASK)
    enc.batch_size = 1
    assert np.abs(_unit(full) - _unit(enc.encode(items, role="query", task=TASK))).max() < 1e-5


# ---------------------------------------------------------------------------------------------------
# errors


def test_offline_hub_id_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(EncoderError, match="not on disk and the hub is offline") as e:
        RetEncoder("no-such-org/no-such-lamra-model", device="cpu")
    assert time.perf_counter() - t0 < 5
    assert "ret:no-such-org/no-such-lamra-model" in _one_line(e)


def test_non_qwen_model_dir_names_the_model_type(tmp_path):
    d = not_qwen_dir(tmp_path / "llava", "llava")
    with pytest.raises(EncoderError, match="'llava' model, not a Qwen2-VL") as e:
        RetEncoder(str(d), device="cpu")
    _one_line(e)


def test_bad_kwargs(tiny_dir):
    with pytest.raises(EncoderError, match="prompt_template"):
        RetEncoder(str(tiny_dir), device="cpu", prompt_template="no text field")
    with pytest.raises(EncoderError, match="ret_position"):
        RetEncoder(str(tiny_dir), device="cpu", ret_position="after")
    with pytest.raises(EncoderError, match="adapter directory"):
        RetEncoder(str(tiny_dir), device="cpu", adapter="/no/such/adapter")


# ---------------------------------------------------------------------------------------------------
# end to end


def test_evaluate_end_to_end(tiny_dir):
    res = mrbench.evaluate("mrbench-synth-tiny", f"ret:{tiny_dir}", encoder_kwargs={"device": "cpu", "max_summary_tokens": 4},
                           tasks=["t2i"], cache=False)
    enc = res.data["encoder"]
    assert enc["name"] == f"ret:{tiny_dir}" and enc["dim"] == 64 and enc["extra"]["decoding"] == "greedy"
    assert enc["extra"]["summary_examples"][0]["task"] == "t2i"
    assert np.isfinite(res.per_query["hit@10"]).all() and len(res.per_query) == 8


# ---------------------------------------------------------------------------------------------------
# real weights (opt-in)


@pytest.mark.realweights
def test_real_ret_model_ranks_the_matching_caption_first():
    d = os.environ.get("MRBENCH_RET_DIR")
    if not d:
        pytest.skip("MRBENCH_RET_DIR not set")
    kwargs = {}
    if os.environ.get("MRBENCH_RET_ADAPTER"):
        kwargs["adapter"] = os.environ["MRBENCH_RET_ADAPTER"]
    enc = RetEncoder(d, device="auto", batch_size=2, **kwargs)
    task = TaskInfo("i2t", "image", "text", "Find an image caption describing the given image.", None)
    red = Image.new("RGB", (224, 224), (220, 20, 20))
    q = _unit(enc.encode([_item(0, None, red, task.query_instruction)], role="query", task=task))
    c = _unit(enc.encode([_item(1, "A plain red square.", None), _item(2, "A plain blue square.", None)],
                         role="candidate", task=task))
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


def test_checkpoint_shape_mismatch_names_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    d = build_tiny_qwen2vl(tmp_path / "m")
    sd = load_file(str(d / "model.safetensors"))
    key = sorted(k for k in sd if k.endswith("q_proj.weight"))[0]
    sd[key] = sd[key][:, :32].contiguous()
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(EncoderError) as e:
        RetEncoder(str(d), device="cpu")
    msg = _one_line(e)
    assert "q_proj.weight" in msg and "[64, 32]" in msg and "[64, 64]" in msg


def test_greedy_summaries_never_write_image_placeholders(encoder):
    from mrbench.encoders.generative import placeholder_token_ids

    tok = encoder.processor.tokenizer
    ids = placeholder_token_ids(tok)
    assert tok.convert_tokens_to_ids("<|image_pad|>") in ids
    encoder.summary_examples.clear()
    encoder.encode(_mixed(7), role="query", task=TASK)
    bad = {tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")}
    for ex in encoder.summary_examples:
        assert not bad & set(tok(ex["summary"], add_special_tokens=False)["input_ids"])
