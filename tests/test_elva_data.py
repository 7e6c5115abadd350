"""elva_baseline.data: the train split as in-memory model inputs, InfoNCE batches, holdout; a training smoke."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

import torch.nn.functional as F  # noqa: E402

import mrbench  # noqa: E402
from elva_baseline.data import NotTrainSplitError, TrainData  # noqa: E402
from elva_baseline.model import DualTowerModel  # noqa: E402
from mrbench.encoders.harness import load_rgb  # noqa: E402
from mrbench.errors import MrbenchError  # noqa: E402

TRAIN = "mrbench-synth-tiny-train"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench():
    return mrbench.load_benchmark(TRAIN)


@pytest.fixture(scope="module")
def model() -> DualTowerModel:
    return DualTowerModel(seed=0)


@pytest.fixture(scope="module")
def data(bench, model) -> TrainData:
    return TrainData.from_benchmark(bench, model=model)


def test_counts_inputs_and_memory(bench, data: TrainData) -> None:
    assert data.task_names == bench.task_names == ["t2i", "i2t", "i2i", "it2i"]
    s = data.summary()
    for t in bench.tasks:
        td = data.tasks[t.name]
        with_rel = [q for q in t.queries if any(g > 0 for g in t.qrels.get(q.id, {}).values())]
        assert td.query_ids == [q.id for q in with_rel]
        assert data.skipped[t.name] == len(t.queries) - len(with_rel)
        assert td.candidates.ids == [c.id for c in t.candidates]
        assert data.pool(t.name) is td.candidates
        assert s["tasks"][t.name]["queries"] == len(td) and s["tasks"][t.name]["candidates"] == len(t.candidates)
        q_text, q_img = t.query_modality in ("text", "image+text"), t.query_modality in ("image", "image+text")
        assert bool(td.queries.has_text.all()) == q_text and bool(td.queries.has_image.all()) == q_img
        assert (td.queries.tokens is not None) == q_text and (td.queries.pixels is not None) == q_img
        if td.candidates.pixels is not None:
            assert td.candidates.pixels.dtype == torch.uint8 and tuple(td.candidates.pixels.shape[1:]) == (3, 64, 64)
    assert s["n_queries"] == data.n_queries == sum(len(t) for t in data.tasks.values()) > 0
    assert 0 < data.nbytes == s["bytes"] < 20 * 2**20


def test_inputs_match_the_model(bench, data: TrainData, model: DualTowerModel) -> None:
    """Pixels and tokens are exactly what the model's own preprocess/tokenize give (decoded once);
    the default transform (no model) equals the tiny model's."""
    t = bench.task("it2i")
    td = data.tasks["it2i"]
    q = next(q for q in t.queries if q.id == td.query_ids[0])
    assert torch.equal(td.queries.pixels[0], model.preprocess(load_rgb(bench.image_path(q.image), q.id)))
    assert torch.equal(td.queries.tokens[0], model.tokenize([q.text])[0])
    plain = TrainData.from_benchmark(bench, tasks=["it2i"], max_items=3)
    assert plain.task_names == ["it2i"] and len(plain.tasks["it2i"]) <= 3
    p = plain.tasks["it2i"]
    assert torch.equal(p.candidates.pixels, td.candidates.pixels)
    assert torch.equal(p.queries.tokens, td.queries.tokens[: len(p)])
    with pytest.raises(ValueError, match="image_size"):
        TrainData.from_benchmark(bench, tasks=["t2i"], model=model, image_size=96)


def test_relevance_and_positives(bench, data: TrainData) -> None:
    for t in bench.tasks:
        td = data.tasks[t.name]
        gm = td.grade_matrix()
        pm = td.positive_mask()
        for i, qid in enumerate(td.query_ids):
            qrels = {d: g for d, g in t.qrels[qid].items() if g > 0}
            assert sorted(td.candidates.ids[j] for j in td.relevant[i].tolist()) == sorted(qrels)
            assert {td.candidates.ids[j]: int(g) for j, g in zip(td.relevant[i].tolist(), td.grades[i])} == qrels
            pos = {td.candidates.ids[j] for j in td.positives[i].tolist()}
            top = max(qrels.values())
            assert pos == {d for d, g in qrels.items() if g == top}
            assert pos <= set(t.relevant(qid))  # the max-grade ones are the full matches: relevant for the metrics
            assert int(gm[i].sum()) == sum(qrels.values()) and int(pm[i].sum()) == len(pos)


def _check_batch(data: TrainData, b) -> None:
    td = data.tasks[b.task]
    q, p, fn = b  # unpacks as (queries, positives, false_negatives)
    n = len(b)
    assert 2 <= n and len(q) == len(p) == n and tuple(fn.shape) == (n, n) and fn.dtype == torch.bool
    assert q.ids == [td.query_ids[i] for i in b.query_index.tolist()]
    assert p.ids == [td.candidates.ids[j] for j in b.positive_index.tolist()]
    for i, (qi, pj) in enumerate(zip(b.query_index.tolist(), b.positive_index.tolist())):
        assert pj in td.positives[qi].tolist()
        for j in range(n):
            want = i != j and b.positive_index[j].item() in td.positives[qi].tolist()
            assert bool(fn[i, j]) == want
    assert not bool(fn.diagonal().any())


def test_batches_cover_each_query_once_and_mask_false_negatives(data: TrainData) -> None:
    seen: dict[str, list[str]] = {n: [] for n in data.task_names}
    batches = list(data.batches(3, seed=7))
    for b in batches:
        _check_batch(data, b)
        seen[b.task].extend(b.queries.ids)
    for n, t in data.tasks.items():
        short = len(t) % 3 == 1  # a one-query remainder is never yielded
        assert sorted(seen[n]) == sorted(t.query_ids) or (short and len(seen[n]) == len(t) - 1)
        assert len(set(seen[n])) == len(seen[n])
    again = list(data.batches(3, seed=7))
    assert [(b.task, b.queries.ids, b.positives.ids) for b in again] == [(b.task, b.queries.ids, b.positives.ids) for b in batches]
    other = list(data.batches(3, seed=8))
    assert [(b.task, b.queries.ids) for b in other] != [(b.task, b.queries.ids) for b in batches]
    assert all(len(b) == 3 for b in data.batches(3, seed=0, drop_last=True))
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(0))


def test_batches_start_skips_into_the_same_epoch(data: TrainData) -> None:
    """``start`` (resume inside an epoch) yields the rest of the very epoch; ``n_batches`` is its length."""
    def key(bs):
        return [(b.task, b.queries.ids, b.positives.ids) for b in bs]

    for size in (2, 3):
        full = list(data.batches(size, seed=7))
        assert data.n_batches(size) == len(full) == len(list(data.batches(size, seed=8)))
        for k in (1, len(full) // 2, len(full)):
            assert key(data.batches(size, seed=7, start=k)) == key(full[k:])
    assert data.n_batches(3, drop_last=True) == len(list(data.batches(3, seed=0, drop_last=True)))


def test_false_negative_mask_on_shared_positives(data: TrainData) -> None:
    """Two copies of a query share every positive: each marks the other's positive as a false negative."""
    t = data.tasks["t2i"]
    dup = TrainData([t.subset([0, 0, 1])], benchmark="dup")
    b = next(dup.batches(8, seed=0))
    _check_batch(dup, b)
    i0, i1 = [k for k, qid in enumerate(b.queries.ids) if qid == t.query_ids[0]]
    assert bool(b.false_negatives[i0, i1]) and bool(b.false_negatives[i1, i0])


def test_holdout_deterministic_disjoint(data: TrainData) -> None:
    tr, va = data.holdout(0.25, seed=3)
    tr2, va2 = data.holdout(0.25, seed=3)
    for n, t in data.tasks.items():
        a, b = set(tr.tasks[n].query_ids), set(va.tasks[n].query_ids)
        assert not a & b and a | b == set(t.query_ids)
        assert len(b) == max(1, round(0.25 * len(t)))
        assert va2.tasks[n].query_ids == va.tasks[n].query_ids and tr2.tasks[n].query_ids == tr.tasks[n].query_ids
        assert tr.pool(n) is t.candidates and va.pool(n) is t.candidates  # pools shared, not copied
        k = t.query_ids.index(va.tasks[n].query_ids[0])
        assert torch.equal(va.tasks[n].positives[0], t.positives[k])
    others = [data.holdout(0.25, seed=s)[1] for s in range(4, 8)]
    assert any(o.tasks["t2i"].query_ids != va.tasks["t2i"].query_ids for o in others)
    assert sum(len(t) for t in data.holdout(0.0)[1].tasks.values()) == 0
    with pytest.raises(ValueError, match="fraction"):
        data.holdout(1.0)


def test_non_train_benchmark_refused() -> None:
    with pytest.raises(ValueError) as e:
        TrainData.from_benchmark("mrbench-synth-tiny")
    msg = str(e.value)
    assert isinstance(e.value, (NotTrainSplitError, MrbenchError))
    assert "\n" not in msg and "'test'" in msg and "mrbench-synth-train" in msg and "mrbench-synth" in msg


def test_infonce_smoke_lowers_the_loss(data: TrainData) -> None:
    """20 AdamW steps of InfoNCE (in-batch negatives, false negatives masked) lower the loss below
    both its start and the chance level (every unmasked candidate equally likely)."""
    torch.manual_seed(0)
    model = DualTowerModel(seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    fixed = list(data.batches(16, seed=0))
    chance = sum(
        torch.log((~b.false_negatives).sum(1).float()).mean().item() for b in fixed
    ) / len(fixed)

    def loss_of(b) -> torch.Tensor:
        q, p, fn = b
        logits = (model.embed(q) @ model.embed(p).T / 0.1).masked_fill(fn, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(q)))

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(loss_of(b).item() for b in fixed) / len(fixed)

    before = mean_loss()
    step, epoch = 0, 0
    while step < 20:
        for b in data.batches(16, seed=epoch):
            loss = loss_of(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == 20:
                break
        epoch += 1
    after = mean_loss()
    assert after < before - 0.2 and after < chance - 0.05, (before, after, chance)
