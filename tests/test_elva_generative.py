"""ELVA's generative [RET] regime (elva_baseline.generative_policy) on a tiny random Qwen2-VL built offline.

Rollouts (shapes, masks, seeds), old / current / reference log-probabilities, GRPO and InfoNCE
updates (only the LoRA and the [RET] row move), a known-answer reward that GRPO must raise, and the
save → ``RetEncoder(base, adapter=saved)`` round trip.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from fixtures.tiny_qwen2vl import RET_TOKEN, build_tiny_qwen2vl
from PIL import Image

from elva_baseline.generative_policy import (
    CONFIG_NAME,
    GenerativePolicy,
    GenerativeRLConfig,
    InfoNCEStepConfig,
    LoraSettings,
    RetItem,
)
from elva_baseline.rewards import ElvaInputError, RewardConfig

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
N_SUM = 3


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("elva-gen-tiny"), with_ret=True)


@pytest.fixture(scope="session")
def tiny_noret_dir(tmp_path_factory):
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("elva-gen-noret"), with_ret=False)


def _policy(path, **kw):
    kw.setdefault("lora", LORA)
    kw.setdefault("max_summary_tokens", N_SUM)
    return GenerativePolicy(str(path), device="cpu", **kw)


def _image(i: int) -> Image.Image:
    im = Image.new("RGB", (30 + 4 * i, 40), (50 * i % 256, 120, 255 - 40 * i % 256))
    im.putpixel((i, 2), (255, 255, 255))
    return im


def _items(n: int = 3, inst: str = "Find an image that matches the description.") -> list[RetItem]:
    out = []
    for i in range(n):
        kind = i % 3
        text = None if kind == 1 else f"a red circle left of a blue square {i}"
        out.append(RetItem(text, None if kind == 0 else _image(i), inst))
    return out


def _cands(n: int = 4) -> list[RetItem]:
    return [RetItem(f"a {c} square", None, "Represent the caption for retrieval.") for c in ("red", "blue", "green", "big")[:n]]


def _perturb_lora(policy, seed: int = 0, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if p.requires_grad and ("lora_B" in name or "trainable_tokens" in name):
                p.add_(torch.randn(p.shape, generator=g) * scale)


def _frozen(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.model.named_parameters() if not p.requires_grad}


# ---------------------------------------------------------------------------------------------------
# construction


def test_ret_added_lora_on_language_attention_only_base_frozen(tiny_noret_dir):
    pol = _policy(tiny_noret_dir)
    tok = pol.processor.tokenizer
    assert pol.ret_token_added and tok.convert_tokens_to_ids(RET_TOKEN) == pol.ret_token_id
    assert pol.model.get_input_embeddings().weight.shape[0] > pol.ret_token_id
    names = [n for n, p in pol.model.named_parameters() if p.requires_grad]
    lora = [n for n in names if "lora_" in n]
    assert lora and all("language_model" in n and "visual" not in n for n in lora)
    assert {n.split(".self_attn.")[1].split(".")[0] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert all("lora_" in n or "trainable_tokens" in n for n in names)
    # [RET] was added by resizing (untied): its input and output rows are trained and saved
    assert sum("embed_tokens" in n for n in names) == 1 and sum("lm_head" in n for n in names) == 1
    assert all(float(p.detach().abs().max()) == 0 for n, p in pol.model.named_parameters() if "lora_B" in n)
    assert len(pol.trainable_parameters()) == len(names)
    assert all(t not in pol.stop_ids for t in pol.suppress_ids)


# ---------------------------------------------------------------------------------------------------
# rollouts and log-probabilities


def test_rollouts_shapes_masks_and_seeds(tiny_dir):
    pol = _policy(tiny_dir)
    items = _items(3)
    state = torch.get_rng_state()
    ro = pol.rollouts(items, 4, temperature=1.0, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # a seed forks the generator, leaves the global one alone
    b, g, t = ro.tokens.shape
    assert (b, g) == (3, 4) and 1 <= t <= N_SUM and ro.mask.shape == ro.old_logp.shape == (3, 4, t)
    assert len(ro.summary_ids) == len(ro.texts) == len(ro.finished) == 12
    for i, s in enumerate(ro.summary_ids):
        row = ro.tokens[i // 4, i % 4]
        assert ro.mask[i // 4, i % 4].sum() == len(s) and row[:len(s)].tolist() == s
        assert (row[len(s):] == pol.pad_token_id).all()
        assert not set(s) & set(pol.suppress_ids) and not set(s) & set(pol.stop_ids)
    assert (ro.old_logp[~ro.mask] == 0).all() and (ro.old_logp[ro.mask] <= 0).all()
    assert ro.lengths.tolist() == [[len(s) for s in ro.summary_ids[k * 4:(k + 1) * 4]] for k in range(3)]
    # item b's prompt is repeated G times, consecutively
    assert all(ro.batch.rows[k] == ro.batch.rows[(k // 4) * 4] for k in range(12))
    assert len({tuple(r) for r in ro.batch.rows}) == 3
    again = pol.rollouts(items, 4, temperature=1.0, seed=7)
    assert again.summary_ids == ro.summary_ids and torch.equal(again.old_logp, ro.old_logp)
    other = pol.rollouts(items, 4, temperature=1.0, seed=8)
    assert other.summary_ids != ro.summary_ids
    assert len(set(map(tuple, ro.summary_ids[:4]))) > 1  # the G rollouts of an item differ


def test_old_current_and_reference_logprobs(tiny_dir):
    pol = _policy(tiny_dir)
    ro = pol.rollouts(_items(2), 3, temperature=0.8, seed=0)
    lp, mask = pol.logprobs(ro)
    assert lp.requires_grad and torch.equal(mask, ro.mask)
    assert float((lp.detach() - ro.old_logp).abs().max()) < 1e-5  # ratio 1 before any update
    ref = pol.ref_logprobs(ro)
    assert not ref.requires_grad
    assert float((ref - ro.old_logp).abs().max()) < 1e-6  # LoRA init: B = 0, policy == reference
    _perturb_lora(pol)
    lp2, _ = pol.logprobs(ro)
    ref2 = pol.ref_logprobs(ro)
    assert float((lp2.detach() - ro.old_logp)[ro.mask].abs().max()) > 1e-3  # the adapter moved the policy
    assert float((ref2 - ref).abs().max()) < 1e-6  # the reference is the adapter-free model
    (lp2 * mask).sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in pol.trainable_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pol.trainable_parameters())


def test_query_and_candidate_embeddings(tiny_dir):
    pol = _policy(tiny_dir)
    items = _items(3)
    ro = pol.rollouts(items, 2, temperature=1.0, seed=1)
    q = pol.query_embeddings(ro)
    assert q.shape == (3, 2, 64) and not q.requires_grad
    assert torch.allclose(q.norm(dim=-1), torch.ones(3, 2), atol=1e-5)
    assert pol.query_embeddings(ro, grad=True).requires_grad
    c = pol.candidate_embeddings(items)
    assert c.shape == (3, 64) and torch.allclose(c.norm(dim=-1), torch.ones(3), atol=1e-5)
    pol.batch_size = 1
    assert float((pol.candidate_embeddings(items) - c).abs().max()) < 1e-5  # chunking does not matter
    # a rollout whose summary is the greedy one has the candidate's embedding
    greedy = pol.greedy_summaries(items)
    ro.summary_ids[0] = greedy[0]
    assert float((pol.query_embeddings(ro)[0, 0] - c[0]).abs().max()) < 1e-5


# ---------------------------------------------------------------------------------------------------
# updates


def test_grpo_steps_train_the_adapter_only(tiny_dir):
    pol = _policy(tiny_dir)
    frozen = _frozen(pol)
    before = pol.trainable_state()
    opt = torch.optim.AdamW(pol.trainable_parameters(), lr=1e-2)
    queries, cands = _items(2), _cands(4)
    positives = [cands[0], cands[1]]
    negatives = [cands[1:], cands[2:]]  # ragged: padded and masked
    stats = []
    for step in range(2):
        cfg = GenerativeRLConfig(group_size=3, temperature=1.0, beta=0.2, seed=step)
        stats.append(pol.grpo_step(queries, positives, negatives, RewardConfig(), opt, cfg))
    cfg = GenerativeRLConfig(group_size=3, temperature=1.0, seed=5, epochs_per_batch=2, embedding_loss_weight=0.5,
                             embedding_loss="infonce")
    stats.append(pol.grpo_step(queries, positives, negatives, None, opt, cfg))
    cfg = GenerativeRLConfig(group_size=3, temperature=1.0, seed=6, embedding_loss_weight=0.5, embedding_loss="reward")
    emb = pol.candidate_embeddings(cands)  # cached candidate embeddings as tensors
    stats.append(pol.grpo_step(queries, emb[:2], torch.stack([emb[1:], emb[1:]]), None, opt, cfg))
    for s in stats:
        for k in ("reward_mean", "reward_std", "loss", "summary_len", "grad_norm", "hit1", "distinct_per_group"):
            assert k in s and s[k] == s[k] and abs(s[k]) < 1e6, (k, s)
        assert 0 <= s["summary_len"] <= N_SUM and s["skipped"] == 0.0
    assert stats[0]["ratio_mean"] == pytest.approx(1.0) and stats[0]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert stats[1]["kl"] > 0  # the first update moved the policy away from the reference
    assert stats[2]["embedding_loss"] > 0 and stats[3]["embedding_loss"] == stats[3]["embedding_loss"]
    after = pol.trainable_state()
    assert any(float((after[n] - before[n]).abs().max()) > 0 for n in before if "lora_B" in n)
    assert all(torch.equal(p, frozen[n]) for n, p in pol.model.named_parameters() if not p.requires_grad)


def test_grpo_raises_a_reward_that_prefers_some_tokens(tiny_dir):
    """Known answer: the reward is the fraction of a summary's tokens with an even id (the scores are
    ignored); ten GRPO steps must raise it on fresh rollouts."""
    pol = _policy(tiny_dir, max_summary_tokens=3)
    items = [RetItem("a red circle", None, "Find it."), RetItem("a blue square left", _image(1))]

    def even_fraction(ro):
        return ((ro.tokens % 2 == 0) & ro.mask).sum(-1).float() / ro.mask.sum(-1).clamp_min(1)

    def no_score(s_pos, s_neg, neg_mask=None):
        return torch.zeros_like(s_pos)

    def measure():
        return float(even_fraction(pol.rollouts(items, 32, temperature=1.0, seed=1234)).mean())

    pos, neg = torch.randn(2, 64), torch.randn(2, 1, 64)
    opt = torch.optim.Adam(pol.trainable_parameters(), lr=5e-2)
    start = measure()
    for step in range(10):
        cfg = GenerativeRLConfig(group_size=8, temperature=1.0, beta=0.0, seed=step)
        pol.grpo_step(items, pos, neg, no_score, opt, cfg, extra_reward_fn=even_fraction)
    assert measure() > start + 0.1


def test_info_nce_warmup(tiny_dir):
    pol = _policy(tiny_dir)
    _perturb_lora(pol, seed=3, scale=0.05)
    frozen = _frozen(pol)
    queries, cands = _items(3), _cands(4)
    opt = torch.optim.Adam(pol.trainable_parameters(), lr=2e-2)
    cfg = InfoNCEStepConfig(tau=0.1)
    first = pol.info_nce_step(queries, cands[:3], opt, cfg, hard_negatives=[[cands[3]], [], [cands[3], cands[0]]],
                              positive_ids=["a", "b", "c"])
    for _ in range(3):
        last = pol.info_nce_step(queries, cands[:3], opt, cfg, hard_negatives=[[cands[3]], [], [cands[3], cands[0]]])
    assert last["loss"] < first["loss"] and 0 <= last["acc"] <= 1
    assert all(torch.equal(p, frozen[n]) for n, p in pol.model.named_parameters() if not p.requires_grad)


def test_accelerate_single_process(tiny_dir):
    accelerate = pytest.importorskip("accelerate")
    acc = accelerate.Accelerator(cpu=True)
    pol = _policy(tiny_dir)
    before = pol.trainable_state()
    opt = pol.prepare(acc, torch.optim.AdamW(pol.trainable_parameters(), lr=1e-2))
    cands = _cands(3)
    s = pol.grpo_step(_items(2), cands[:2], [cands[1:], cands[:1]], None, opt,
                      GenerativeRLConfig(group_size=2, temperature=1.0, seed=0), accelerator=acc)
    assert s["loss"] == s["loss"] and s["grad_norm"] > 0
    after = pol.trainable_state()
    assert any(float((after[n] - before[n]).abs().max()) > 0 for n in before)


# ---------------------------------------------------------------------------------------------------
# save → RetEncoder


@pytest.mark.parametrize("which", ["with_ret", "ret_added"])
def test_save_loads_in_ret_encoder_with_the_same_greedy_embeddings(which, tiny_dir, tiny_noret_dir, tmp_path):
    from mrbench.data.schema import TaskInfo
    from mrbench.encoders.base import EncodeInput
    from mrbench.encoders.generative import RetEncoder

    base = tiny_dir if which == "with_ret" else tiny_noret_dir
    pol = _policy(base)
    _perturb_lora(pol, seed=11)
    items = _items(3) + _cands(2)
    mine = pol.candidate_embeddings(items)
    out = pol.save(tmp_path / "policy", extra={"stage": "rl", "step": 3})

    rec = json.loads((out / CONFIG_NAME).read_text())
    assert rec["ret_token"] == RET_TOKEN and rec["ret_token_id"] == pol.ret_token_id
    assert rec["base_model"] == str(base) and rec["extra"] == {"stage": "rl", "step": 3}
    assert rec["ret_token_added"] == (which == "ret_added") and rec["lora"]["r"] == 4
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out)).convert_tokens_to_ids(RET_TOKEN) == pol.ret_token_id

    kwargs = {k: v for k, v in rec["encoder_kwargs"].items() if k != "adapter"}
    enc = RetEncoder(str(base), adapter=rec["encoder_kwargs"]["adapter"], device="cpu", **kwargs)
    assert enc.ret_token_id == pol.ret_token_id and enc.meta.extra["tokenizer_source"] == str(out)
    task = TaskInfo("probe", "text", "text", None, None)
    inputs = [EncodeInput(id=f"x{i}", text=it.text, image=it.image, image_path=None, instruction=it.instruction,
                          content_hash=f"h{i}") for i, it in enumerate(items)]
    theirs = torch.nn.functional.normalize(torch.as_tensor(enc.encode(inputs, role="query", task=task)), dim=-1)
    assert float((theirs - mine).abs().max()) < 1e-4

    plain = RetEncoder(str(base), device="cpu", **kwargs)  # the adapter matters
    base_emb = torch.nn.functional.normalize(torch.as_tensor(plain.encode(inputs, role="query", task=task)), dim=-1)
    assert float((base_emb - mine).abs().max()) > 1e-3

    resumed = _policy(base, adapter=out)  # resuming from the saved adapter gives the same (trainable) policy
    assert resumed.trainable_parameters() and float((resumed.candidate_embeddings(items) - mine).abs().max()) < 1e-5


# ---------------------------------------------------------------------------------------------------
# errors


def test_bad_configuration_and_inputs(tiny_dir):
    with pytest.raises(ElvaInputError, match="group_size"):
        GenerativeRLConfig(group_size=1)
    with pytest.raises(ElvaInputError, match="temperature"):
        GenerativeRLConfig(temperature=0)
    with pytest.raises(ElvaInputError, match="embedding_loss"):
        GenerativeRLConfig(embedding_loss="hinge")
    with pytest.raises(ElvaInputError, match="LoraSettings.r"):
        LoraSettings(r=0)
    from elva_baseline.config import RLConfig, WarmupConfig

    rl = GenerativeRLConfig.from_rl_config(RLConfig(group_size=4, beta=0.1), temperature=0.5)
    assert (rl.group_size, rl.beta, rl.temperature) == (4, 0.1, 0.5)
    assert InfoNCEStepConfig.from_warmup_config(WarmupConfig(tau=0.07)).tau == 0.07
    with pytest.raises(ElvaInputError, match="not a saved policy"):
        _policy(tiny_dir, adapter=tiny_dir)
    pol = _policy(tiny_dir)
    opt = torch.optim.SGD(pol.trainable_parameters(), lr=0.1)
    with pytest.raises(ElvaInputError, match="positives"):
        pol.grpo_step(_items(2), _cands(1), [_cands(2), _cands(2)], None, opt, GenerativeRLConfig(group_size=2))
    with pytest.raises(ElvaInputError, match="neither text nor image"):
        pol.rollouts([RetItem()], 2)
