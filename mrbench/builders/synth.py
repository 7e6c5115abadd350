"""MRBench-Synth: a procedural multi-grain retrieval benchmark with exact relevance.

Scenes come from :mod:`mrbench.builders.scene` (shapes with colour, size, pattern and state on a
3×3 grid, a background, closed-world fact strings). Four tasks mirror MRBench:

=======  ====================  ===========================================================================
task     modalities            query / pool
=======  ====================  ===========================================================================
``t2i``  text → image          description of a target scene / rendered scenes
``i2t``  image → text          rendered scene / captions (each asserts a set of facts)
``i2i``  image → image         rendered scene / the same scene re-rendered with nuisance changes (jitter,
                               shade, pixel noise) — NIGHTS-like
``it2i`` image+text → image    reference scene + edit text ("make the circle blue") / edited scenes — CIRR-like
=======  ====================  ===========================================================================

Grains and facts
----------------
Every grain's ``key`` is one fact string (see :mod:`mrbench.builders.scene`), its ``type`` the fact's
grain type, its ``text`` the words expressing it: the span in the query text for text queries (``"red"``,
``"circle"``, ``"to the left of"``, ``"gray background"``), a short standalone phrase
(``"red circle"``, ``"circle to the left of square"``) for grains no text expresses (image queries and
the kept facts of ``it2i``). ``query.meta["asserts"]`` lists the grain keys in grain order.

Relevance (exact, for every query–candidate pair of a task)
-----------------------------------------------------------
* image candidates (t2i, i2i, it2i): fraction = share of the query's asserted facts true in the
  candidate's scene (``candidate.meta["facts"]``);
* text candidates (i2t): fraction = share of the caption's asserted facts
  (``candidate.meta["asserts"]``) true in the query image's scene (``query.meta["facts"]``).

``grade = floor(100 * fraction + 0.5)``; qrels store a grade only when ``fraction >= 0.5`` (partial
matches below one half are left out, i.e. grade 0); ``Task.relevance_level = 100``, so only full
matches (grade 100) are relevant for binary metrics while nDCG sees the partial grades.

Pools
-----
Per query: its target, and one *grain-contrast distractor* per grain where one exists — the target
with exactly that grain made false and the query's other grains kept (an entity contrast swaps the
shape, which also voids that object's other grains). Then fillers: random scenes (random captions for
i2t). Pools are shared by all queries of a task and shuffled; candidate ``meta["role"]`` is
``target`` / ``contrast`` / ``filler``, with ``source_query`` (and ``contrast_grain``) where relevant.

Splits
------
A query's *target scene* (t2i and i2i: the target's scene; i2t: the query image's scene; it2i: the
edited scene) is identified by :func:`scene_signature` (sha256 of its sorted facts, i.e. the scene up to
jitter); ``split_of_signature`` sends 30% of that space to ``train`` and the rest to ``test``, and the
generator rejects target scenes of the other split. Train and test targets never coincide, whatever the
seeds.

Determinism
-----------
All randomness flows from ``random.Random`` streams seeded with strings built from
``(seed, split, task)`` (never from set iteration order, so ``PYTHONHASHSEED`` does not matter); PNGs
are written with fixed options and no metadata; JSON is key-sorted. Same arguments and the same
Python / NumPy / Pillow (zlib) versions → byte-identical files → same fingerprint.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrbench.builders.scene import (
    ATTRIBUTES,
    BACKGROUNDS,
    CONVERSE,
    SHAPES,
    Nuisance,
    Scene,
    attr_fact,
    background_fact,
    converse_fact,
    entity_fact,
    fact_index,
    fact_shapes,
    fact_type,
    fact_vocabulary,
    parse_fact,
    random_scene,
    relation_fact,
    render_scene,
    save_png,
    scene_signature,
    split_of_signature,
)
from mrbench.data.schema import Benchmark, Candidate, Grain, Query, Task
from mrbench.errors import BenchmarkError, UnknownNameError, did_you_mean

GENERATOR_VERSION = "1"
BENCHMARK_NAME = "mrbench-synth"
BENCHMARK_VERSION = "1.0"
SIZE_PRESETS: dict[str, int] = {"tiny": 8, "default": 250}
"""Named sizes → queries per task."""
SPLITS: tuple[str, ...] = ("test", "train")
TASK_NAMES: tuple[str, ...] = ("t2i", "i2t", "i2i", "it2i")
RELEVANCE_LEVEL = 100
MIN_FRACTION = 0.5
"""Qrels keep partial matches whose fraction of satisfied grains is at least this."""
FILLERS_PER_QUERY = 1.0
"""Random filler candidates added to each pool, per query (at least ``MIN_FILLERS``)."""
MIN_FILLERS = 4
IMAGE_SIZE_RANGE: tuple[int, int] = (32, 1024)
"""Allowed rendered image sides in pixels (drawn at 2×: a 1024 image is a 2048² canvas, ~12 MB)."""
MAX_QUERIES_PER_TASK = 5_000
"""Largest ``size``: planning keeps every task in memory and grows faster than linearly (~1 GB at 2000, ~4 GB at 5000)."""

ProgressFn = Callable[[str, int, int], None]

REL_PHRASE: dict[str, str] = {"left_of": "to the left of", "right_of": "to the right of", "above": "above", "below": "below"}
ADJ_ORDER: tuple[str, ...] = ("size", "state", "pattern", "color")
"""Order of adjectives in a noun phrase: "a large cracked striped red circle"."""

_TASK_TEXT: dict[str, dict[str, str]] = {
    "t2i": {
        "query_modality": "text",
        "candidate_modality": "image",
        "query_instruction": "Find an image that matches the description.",
        "candidate_instruction": "Represent the image for retrieval.",
        "description": "Text to image (COCO-like): a description of shapes, their attributes, states and relations "
        "retrieves every rendered scene in which all its grains hold.",
    },
    "i2t": {
        "query_modality": "image",
        "candidate_modality": "text",
        "query_instruction": "Find a caption that correctly describes the image.",
        "candidate_instruction": "Represent the caption for retrieval.",
        "description": "Image to text (COCO-like): a rendered scene retrieves every caption whose asserted facts all "
        "hold in it; one-grain-wrong captions are in the pool.",
    },
    "i2i": {
        "query_modality": "image",
        "candidate_modality": "image",
        "query_instruction": "Find the same scene rendered differently.",
        "candidate_instruction": "Represent the image for retrieval.",
        "description": "Image to image (NIGHTS-like): the same scene re-rendered with jitter, shade changes and pixel "
        "noise must beat look-alikes that differ in one grain.",
    },
    "it2i": {
        "query_modality": "image+text",
        "candidate_modality": "image",
        "query_instruction": "Apply the edit to the image and find the result.",
        "candidate_instruction": "Represent the image for retrieval.",
        "description": "Composed image retrieval (CIRR-like): a reference scene and an edit text retrieve the edited "
        "scene; grains are the edited facts plus kept facts of the target.",
    },
}


# --------------------------------------------------------------------------- phrasing
def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def grain_span(fact: str) -> str:
    """Words of a description that express ``fact`` (``"red"``, ``"circle"``, ``"above"``, ``"gray background"``)."""
    p = parse_fact(fact)
    if p[0] == "entity":
        return p[1]
    if p[0] == "attr":
        return p[3]
    if p[0] == "relation":
        return REL_PHRASE[p[2]]
    return f"{p[2]} background"


def fact_phrase(fact: str) -> str:
    """A standalone phrase for ``fact`` (``"red circle"``, ``"circle to the left of square"``)."""
    p = parse_fact(fact)
    if p[0] == "entity":
        return p[1]
    if p[0] == "attr":
        return f"{p[3]} {p[1]}"
    if p[0] == "relation":
        return f"{p[1]} {REL_PHRASE[p[2]]} {p[3]}"
    return f"{p[2]} background"


def make_grain(fact: str, text: str | None = None) -> Grain:
    return Grain(text=text if text is not None else fact_phrase(fact), type=fact_type(fact), key=fact)


def realize(order: Sequence[str], facts: Iterable[str]) -> tuple[str, list[str]]:
    """Describe a fact set in English; return ``(text, facts in text order)``.

    ``order[0]`` is the anchor object; relation facts must have the anchor as subject. An object
    whose entity fact is absent is called "shape" ("a red shape"); an object no fact mentions is
    left out; a non-anchor object without a relation fact is joined with "and". Examples::

        a large striped red circle to the left of a blue square on a gray background
        a red shape to the left of a square
        a cracked star and a small heart
    """
    fs = set(facts)
    anchor = order[0]
    rels: dict[str, str] = {}
    for f in fs:
        p = parse_fact(f)
        if p[0] == "relation":
            if p[1] != anchor:
                raise ValueError(f"relation {f!r} does not start at the anchor {anchor!r}")
            if p[3] in rels:
                raise ValueError(f"two relations between {anchor!r} and {p[3]!r}")
            rels[p[3]] = p[2]
    mentioned = {s for f in fs for s in fact_shapes(f)}
    extra = mentioned - set(order)
    if extra:
        raise ValueError(f"facts mention {sorted(extra)} missing from the object order {list(order)}")
    grain_order: list[str] = []

    def noun_phrase(shape: str) -> str:
        words = []
        for attr in ADJ_ORDER:
            for v in ATTRIBUTES[attr]:
                f = attr_fact(shape, attr, v)
                if f in fs:
                    words.append(v)
                    grain_order.append(f)
        if shape in fs:
            words.append(shape)
            grain_order.append(shape)
        else:
            words.append("shape")
        return f"{_article(words[0])} {' '.join(words)}"

    text = ""
    if anchor in mentioned:
        text = noun_phrase(anchor)
    related, unrelated = [], []
    for o in order[1:]:
        if o not in mentioned:
            continue
        if o in rels:
            f = relation_fact(anchor, rels[o], o)
            grain_order.append(f)
            related.append(f"{REL_PHRASE[rels[o]]} {noun_phrase(o)}")
        else:
            unrelated.append(noun_phrase(o))
    if related:
        text += " " + " and ".join(related)
    if unrelated:
        joined = " and ".join(unrelated)
        text = f"{text}, and {joined}" if related else (f"{text} and {joined}" if text else joined)
    for bg in BACKGROUNDS:
        f = background_fact(bg)
        if f in fs:
            grain_order.append(f)
            text = f"{text} on {_article(bg)} {bg} background" if text else f"{_article(bg)} {bg} background"
    assert set(grain_order) == fs, (grain_order, fs)
    return text, grain_order


# --------------------------------------------------------------------------- sampling
def _weighted_sample(rng: random.Random, items: Sequence[str], weights: Sequence[float], k: int) -> list[str]:
    """``k`` distinct items, without replacement, proportional to weight (Efraimidis–Spirakis)."""
    keyed = sorted(((rng.random() ** (1.0 / w), i) for i, w in enumerate(weights)), reverse=True)
    return [items[i] for _, i in keyed[:k]]


_ATTR_WEIGHT = {"color": 1.3, "size": 1.0, "pattern": 1.0, "state": 1.1}
_BACKGROUND_WEIGHT = 0.6


def sample_description(scene: Scene, k: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """Pick ``k`` true facts of ``scene`` that read as one description; return ``(order, facts)``.

    The description mentions ``m`` objects (1–3), each with its entity fact; every non-anchor object
    is tied to the anchor by one true relation; the rest are attributes/states of mentioned objects
    or the background. Facts come back in text order.
    """
    n = len(scene.objects)
    options = []
    for m in (1, 2, 3):
        base = 2 * m - 1
        if m <= n and max(base, 2) <= k <= base + 4 * m + 1:
            options.append(m)
    if not options:
        raise ValueError(f"cannot describe a {n}-object scene with {k} grains")
    weights = [{1: 1.0, 2: 1.6, 3: 0.8 if k >= 6 else 0.4}[m] for m in options]
    m = rng.choices(options, weights)[0]
    chosen = rng.sample(scene.shapes, m)
    anchor = chosen[0]
    facts = [entity_fact(s) for s in chosen]
    for o in chosen[1:]:
        true_rels = sorted(f for f in scene.facts if f.startswith(f"{anchor}|") and f.endswith(f"|{o}"))
        facts.append(rng.choice(true_rels))
    optional, w = [], []
    for s in chosen:
        obj = scene.obj(s)
        for attr in ATTRIBUTES:
            optional.append(attr_fact(s, attr, obj.attr(attr)))
            w.append(_ATTR_WEIGHT[attr])
    optional.append(background_fact(scene.background))
    w.append(_BACKGROUND_WEIGHT)
    facts += _weighted_sample(rng, optional, w, k - len(facts))
    _, ordered = realize(chosen, facts)
    return chosen, ordered


def _other(rng: random.Random, values: Iterable[str], avoid: Iterable[str]) -> str | None:
    avoid = set(avoid)
    pool = [v for v in values if v not in avoid]
    return rng.choice(pool) if pool else None


def contrast_scene(
    scene: Scene, fact: str, asserted: Iterable[str], rng: random.Random, avoid: Iterable[str] = ()
) -> Scene | None:
    """``scene`` with ``fact`` made false and the other ``asserted`` facts kept; ``None`` if impossible.

    Attributes, states and the background take another value (not in ``avoid`` when one is left);
    an entity is swapped for a shape absent from the scene (not in ``avoid``), which also voids the
    facts about that object; a relation is broken by moving one of its objects to a free cell, or by
    swapping the two, whichever keeps every other asserted fact.
    """
    keep = set(asserted) - {fact}
    p = parse_fact(fact)
    avoid = set(avoid)
    if p[0] == "entity":
        new = _other(rng, SHAPES, set(scene.shapes) | avoid) or _other(rng, SHAPES, scene.shapes)
        if new is None:
            return None
        out = scene.with_object(p[1], shape=new)
        keep = {f for f in keep if p[1] not in fact_shapes(f)}
    elif p[0] == "attr":
        shape, attr, value = p[1], p[2], p[3]
        new = _other(rng, ATTRIBUTES[attr], {value} | avoid) or _other(rng, ATTRIBUTES[attr], {value})
        out = scene.with_object(shape, **{attr: new})
    elif p[0] == "scene":
        new = _other(rng, BACKGROUNDS, {p[2]} | avoid) or _other(rng, BACKGROUNDS, {p[2]})
        out = scene.with_background(str(new))
    else:
        a, b = p[1], p[3]
        options: list[Scene] = []
        for mover in (a, b):
            for cell in scene.free_cells():
                options.append(scene.with_object(mover, cell=cell))
        ca, cb = scene.obj(a).cell, scene.obj(b).cell
        options.append(scene.with_object(a, cell=(-1, -1)).with_object(b, cell=ca).with_object(a, cell=cb))
        rng.shuffle(options)
        avoid_cells = {str(c) for c in avoid}
        options.sort(key=lambda s: str(s.obj(a).cell) in avoid_cells)  # stable: avoided cells last
        for cand in options:
            if fact not in cand.facts and keep <= cand.facts:
                return cand
        return None
    if fact in out.facts or not keep <= out.facts:
        return None
    return out


def contrast_caption(order: Sequence[str], facts: Sequence[str], fact: str, scene: Scene, rng: random.Random) -> tuple[list[str], list[str]]:
    """The caption ``facts`` with ``fact`` replaced by one false in ``scene``; ``(order, facts)``.

    Attributes/background take a value the scene does not have; a relation flips to its opposite
    direction; an entity is renamed to a shape absent from the scene (in all of its facts).
    """
    p = parse_fact(fact)
    if p[0] == "entity":
        new = _other(rng, SHAPES, scene.shapes)
        assert new is not None

        def rename(f: str) -> str:
            q = parse_fact(f)
            if q[0] == "entity":
                return new if q[1] == p[1] else f
            if q[0] == "attr":
                return attr_fact(new, q[2], q[3]) if q[1] == p[1] else f
            if q[0] == "relation":
                return relation_fact(new if q[1] == p[1] else q[1], q[2], new if q[3] == p[1] else q[3])
            return f

        return [new if s == p[1] else s for s in order], [rename(f) for f in facts]
    if p[0] == "attr":
        repl = attr_fact(p[1], p[2], str(_other(rng, ATTRIBUTES[p[2]], {scene.obj(p[1]).attr(p[2])})))
    elif p[0] == "scene":
        repl = background_fact(str(_other(rng, BACKGROUNDS, {scene.background})))
    else:
        repl = relation_fact(p[1], CONVERSE[p[2]], p[3])
    return list(order), [repl if f == fact else f for f in facts]


@dataclass(frozen=True)
class Edit:
    """One edit of an it2i query. ``fact`` is the edited fact as it holds in the target."""

    kind: str  # "attr" | "background" | "entity" | "relation"
    fact: str
    shape: str = ""
    attr: str = ""
    old: str = ""
    new: str = ""
    other: str = ""  # relation: the reference object

    @property
    def span(self) -> str:
        if self.kind == "relation":
            return REL_PHRASE[self.attr]
        return self.new


def edit_text(edits: Sequence[Edit]) -> str:
    """Edit instruction: "make the circle small and striped", "replace the star with a heart", ..."""
    clauses: list[str] = []
    by_shape: dict[str, list[str]] = {}
    for e in edits:
        if e.kind == "attr":
            by_shape.setdefault(e.shape, []).append(e.new)
    if by_shape:
        parts = [f"the {s} {' and '.join(vs)}" for s, vs in by_shape.items()]
        clauses.append("make " + " and ".join(parts))
    for e in edits:
        if e.kind == "background":
            clauses.append(f"change the background to {e.new}")
        elif e.kind == "entity":
            clauses.append(f"replace the {e.old} with {_article(e.new)} {e.new}")
        elif e.kind == "relation":
            clauses.append(f"move the {e.shape} {REL_PHRASE[e.attr]} the {e.other}")
    return " and ".join(clauses)


_EDIT_KINDS = ("color", "size", "pattern", "state", "background", "entity", "relation")
_EDIT_WEIGHTS = (2.0, 1.0, 1.2, 1.2, 0.8, 1.0, 1.0)


def sample_edits(ref: Scene, n: int, rng: random.Random) -> tuple[Scene, list[Edit]] | None:
    """Apply ``n`` compatible random edits to ``ref``; ``(target, edits)`` or ``None`` on a dead end.

    Rules: each (object, attribute) edited once; one background, one relation edit at most; an entity
    swap only touches an object no other edit touches, and no later edit touches the new shape.
    """
    scene = ref
    edits: list[Edit] = []
    touched: set[str] = set()
    swapped: set[str] = set()
    done_kinds: set[tuple[str, str]] = set()
    for _ in range(n):
        for _attempt in range(20):
            kind = rng.choices(_EDIT_KINDS, _EDIT_WEIGHTS)[0]
            if kind in ATTRIBUTES:
                shapes = [s for s in scene.shapes if s not in swapped and (s, kind) not in done_kinds]
                if not shapes:
                    continue
                s = rng.choice(shapes)
                old = scene.obj(s).attr(kind)
                new = str(_other(rng, ATTRIBUTES[kind], {old}))
                scene = scene.with_object(s, **{kind: new})
                edits.append(Edit("attr", attr_fact(s, kind, new), shape=s, attr=kind, old=old, new=new))
                touched.add(s)
                done_kinds.add((s, kind))
                break
            if kind == "background":
                if ("", "background") in done_kinds:
                    continue
                new = str(_other(rng, BACKGROUNDS, {scene.background}))
                edits.append(Edit("background", background_fact(new), old=scene.background, new=new))
                scene = scene.with_background(new)
                done_kinds.add(("", "background"))
                break
            if kind == "entity":
                shapes = [s for s in scene.shapes if s not in touched]
                new = _other(rng, SHAPES, set(scene.shapes) | set(ref.shapes))
                if not shapes or new is None:
                    continue
                s = rng.choice(shapes)
                scene = scene.with_object(s, shape=new)
                edits.append(Edit("entity", entity_fact(new), shape=new, old=s, new=new))
                touched |= {s, new}
                swapped.add(new)
                break
            if kind == "relation":
                if ("", "relation") in done_kinds:
                    continue
                movable = [s for s in scene.shapes if s not in swapped]
                if len(movable) < 2:
                    continue
                a, b = rng.sample(movable, 2)
                rel = rng.choice(tuple(CONVERSE))
                f = relation_fact(a, rel, b)
                if f in scene.facts:
                    continue
                cells = [c for c in scene.free_cells() if f in scene.with_object(a, cell=c).facts]
                if not cells:
                    continue
                scene = scene.with_object(a, cell=rng.choice(cells))
                edits.append(Edit("relation", f, shape=a, attr=rel, other=b))
                touched |= {a, b}
                done_kinds.add(("", "relation"))
                break
        else:
            return None
    if not all(e.fact in scene.facts and e.fact not in ref.facts for e in edits):
        return None
    return scene, edits


def _kept_facts(target: Scene, exclude: set[str], k: int, rng: random.Random) -> list[str]:
    """``k`` facts of ``target`` outside ``exclude``, no relation together with its converse."""
    pool = sorted(f for f in target.facts if f not in exclude)
    weights = [0.5 if fact_type(f) == "scene" else 1.0 for f in pool]
    out: list[str] = []
    banned = set(exclude) | {c for f in exclude if (c := converse_fact(f))}
    for f in _weighted_sample(rng, pool, weights, len(pool)):
        if len(out) == k:
            break
        if f in banned:
            continue
        out.append(f)
        c = converse_fact(f)
        if c:
            banned.add(c)
    return out


# --------------------------------------------------------------------------- task assembly
@dataclass
class _ImageJob:
    rel: str
    scene: Scene
    nuisance: Nuisance | None = None


@dataclass
class _Pool:
    """Candidate specs of one task, before shuffling and id assignment."""

    items: list[dict[str, Any]] = field(default_factory=list)
    text_index: dict[str, int] = field(default_factory=dict)

    def add_image(self, scene: Scene, nuisance: Nuisance | None, role: str, source: str | None = None, grain: str | None = None) -> int:
        self.items.append({"scene": scene, "nuisance": nuisance, "role": role, "source": source, "grain": grain})
        return len(self.items) - 1

    def add_text(self, text: str, asserts: list[str], role: str, source: str | None = None, grain: str | None = None) -> int:
        """Add a caption; identical texts (which assert identical facts) are stored once.

        A caption that is some query's target keeps ``role="target"`` (first such query); two queries
        may share one target caption.
        """
        if text in self.text_index:
            i = self.text_index[text]
            item = self.items[i]
            if sorted(item["asserts"]) != sorted(asserts):
                raise AssertionError(f"caption {text!r} realised from two different fact sets")
            if role == "target" and item["role"] != "target":  # a query's own caption wins the label
                item.update(role=role, source=source, grain=None)
            return i
        self.items.append({"text": text, "asserts": asserts, "role": role, "source": source, "grain": grain})
        self.text_index[text] = len(self.items) - 1
        return len(self.items) - 1


def _plan_counts(n: int, rng: random.Random) -> list[int]:
    """Grain counts balanced over 2, 3, 4 and 5+ (5: 60%, 6: 30%, 7: 10% of the 5+ bucket)."""
    out = []
    for i in range(n):
        b = i % 4
        out.append(2 + b if b < 3 else rng.choices((5, 6, 7), (6, 3, 1))[0])
    rng.shuffle(out)
    return out


def _scene_in_split(rng: random.Random, split: str) -> Scene:
    while True:
        s = random_scene(rng)
        if split_of_signature(s.signature) == split:
            return s


def _facts_mask(facts: Iterable[str]) -> np.ndarray:
    idx = fact_index()
    v = np.zeros(len(idx), dtype=np.float32)
    for f in facts:
        v[idx[f]] = 1.0
    return v


def grade_of(n_true: int, n_asserted: int) -> int:
    """``floor(100 * n_true / n_asserted + 0.5)`` (round half up)."""
    return int(math.floor(100.0 * n_true / n_asserted + 0.5))


def compute_qrels(
    required: Sequence[Sequence[str]], holding: Sequence[Sequence[str]], ids_req: Sequence[str], ids_hold: Sequence[str], *, required_are_queries: bool = True
) -> dict[str, dict[str, int]]:
    """Graded qrels from fact sets: for each pair, fraction of ``required`` facts in ``holding``.

    ``required[i]`` are the facts side ``i`` asserts (query grains, or an i2t caption's asserts) and
    ``holding[j]`` the facts true on the other side. With ``required_are_queries`` the rows are the
    queries; otherwise (i2t) the rows are candidates and ``holding`` are the query images.
    """
    R = np.stack([_facts_mask(r) for r in required])
    H = np.stack([_facts_mask(h) for h in holding])
    sizes = R.sum(axis=1).round().astype(np.int64)
    qrels: dict[str, dict[str, int]] = {}
    for start in range(0, len(R), 1024):  # row blocks bound the memory of the hit matrix
        hits = (R[start : start + 1024] @ H.T).round().astype(np.int64)
        for bi, bj in zip(*np.nonzero(hits >= MIN_FRACTION * sizes[start : start + 1024, None])):
            i, j = start + int(bi), int(bj)
            grade = grade_of(int(hits[bi, bj]), int(sizes[i]))
            if required_are_queries:
                qrels.setdefault(ids_req[i], {})[ids_hold[j]] = grade
            else:
                qrels.setdefault(ids_hold[j], {})[ids_req[i]] = grade
    return qrels


class _TaskBuilder:
    """Builds one task: queries, pool specs, image jobs; ids are assigned in :meth:`finish`."""

    def __init__(self, name: str, n: int, split: str, seed: int, image_size: int) -> None:
        self.name = name
        self.n = n
        self.split = split
        self.image_size = image_size
        self.rng = random.Random(f"mrbench-synth/{GENERATOR_VERSION}/{seed}/{split}/{name}")
        self.counts = _plan_counts(n, self.rng)
        self.width = max(4, len(str(n - 1)))
        self.pool = _Pool()
        self.queries: list[dict[str, Any]] = []
        self.jobs: list[_ImageJob] = []

    def qid(self, i: int) -> str:
        return f"{self.name}-q{i:0{self.width}d}"

    def image_meta(self, scene: Scene) -> dict[str, Any]:
        return {"facts": sorted(scene.facts), "scene": scene.to_dict(self.image_size)}

    # ------------------------------------------------------------- per task
    def build(self) -> None:
        getattr(self, f"_build_{self.name}")()
        n_fill = max(MIN_FILLERS, round(FILLERS_PER_QUERY * self.n))
        for _ in range(n_fill):
            scene = random_scene(self.rng)
            if self.name == "i2t":
                # fillers of 3-6 grains: 2-grain captions hold in ~10% of all scenes and would swamp qrels
                order, facts = sample_description(scene, self.rng.choice((3, 4, 5, 6)), self.rng)
                self.pool.add_text(realize(order, facts)[0], facts, "filler")
            else:
                nz = Nuisance.random(self.rng) if self.name == "i2i" else None
                self.pool.add_image(scene, nz, "filler")

    def _image_query_contrasts(self, qid: str, target: Scene, nz: Nuisance | None, asserts: list[str], avoid: dict[str, set[str]] | None = None) -> int:
        """Add the target and its one-grain contrasts to the pool; return the target's pool index."""
        t = self.pool.add_image(target, nz, "target", qid)
        for g in asserts:
            c = contrast_scene(target, g, asserts, self.rng, avoid=(avoid or {}).get(g, ()))
            if c is not None:
                self.pool.add_image(c, nz, "contrast", qid, g)
        return t

    def _build_t2i(self) -> None:
        for i, k in enumerate(self.counts):
            qid = self.qid(i)
            scene = _scene_in_split(self.rng, self.split)
            order, facts = sample_description(scene, k, self.rng)
            text, _ = realize(order, facts)
            t = self._image_query_contrasts(qid, scene, None, facts)
            self.queries.append(
                {
                    "id": qid,
                    "text": text,
                    "grains": [make_grain(f, grain_span(f)) for f in facts],
                    "meta": {
                        "asserts": facts,
                        "drop_one_text": [realize(order, [x for x in facts if x != f])[0] for f in facts],
                        "target_signature": scene.signature,
                    },
                    "target": t,
                }
            )

    def _build_i2t(self) -> None:
        for i, k in enumerate(self.counts):
            qid = self.qid(i)
            scene = _scene_in_split(self.rng, self.split)
            order, facts = sample_description(scene, k, self.rng)
            text, _ = realize(order, facts)
            t = self.pool.add_text(text, facts, "target", qid)
            for g in facts:
                c_order, c_facts = contrast_caption(order, facts, g, scene, self.rng)
                c_text, c_facts = realize(c_order, c_facts)
                self.pool.add_text(c_text, c_facts, "contrast", qid, g)
            rel = f"images/{self.name}/q{i:0{self.width}d}.png"
            self.jobs.append(_ImageJob(rel, scene))
            self.queries.append(
                {
                    "id": qid,
                    "image": rel,
                    "grains": [make_grain(f, grain_span(f)) for f in facts],
                    "meta": {"asserts": facts, "target_signature": scene.signature, **self.image_meta(scene)},
                    "target": t,
                }
            )

    def _build_i2i(self) -> None:
        for i, k in enumerate(self.counts):
            qid = self.qid(i)
            scene = _scene_in_split(self.rng, self.split)
            order, facts = sample_description(scene, k, self.rng)
            target = scene.rejittered(self.rng)
            nz = Nuisance.random(self.rng, len(scene.objects))
            t = self._image_query_contrasts(qid, target, nz, facts)
            rel = f"images/{self.name}/q{i:0{self.width}d}.png"
            self.jobs.append(_ImageJob(rel, scene))
            self.queries.append(
                {
                    "id": qid,
                    "image": rel,
                    "grains": [make_grain(f) for f in facts],
                    "meta": {
                        "asserts": facts,
                        "description": realize(order, facts)[0],
                        "target_signature": target.signature,
                        **self.image_meta(scene),
                    },
                    "target": t,
                }
            )

    def _build_it2i(self) -> None:
        for i, k in enumerate(self.counts):
            qid = self.qid(i)
            n_edits = 1 if k == 2 else self.rng.choice((1, 2))
            while True:
                ref = random_scene(self.rng)
                res = sample_edits(ref, n_edits, self.rng)
                if res is None:
                    continue
                target, edits = res
                if split_of_signature(target.signature) == self.split:
                    break
            target = target.rejittered(self.rng)
            edit_facts = [e.fact for e in edits]
            kept = _kept_facts(target, set(edit_facts), k - n_edits, self.rng)
            asserts = edit_facts + kept
            # contrasts of edited grains avoid the reference's value (that would re-create the reference)
            avoid: dict[str, set[str]] = {}
            for e in edits:
                if e.kind == "relation":
                    avoid[e.fact] = {str(ref.obj(e.shape).cell)}
                elif e.old:
                    avoid[e.fact] = {e.old}
            t = self._image_query_contrasts(qid, target, None, asserts, avoid)
            text = edit_text(edits)
            drop: list[str | None] = []
            for e in edits:
                rest = [x for x in edits if x is not e]
                drop.append(edit_text(rest) if rest else None)
            drop += [None] * len(kept)
            rel = f"images/{self.name}/q{i:0{self.width}d}.png"
            self.jobs.append(_ImageJob(rel, ref))
            self.queries.append(
                {
                    "id": qid,
                    "text": text,
                    "image": rel,
                    "grains": [make_grain(e.fact, e.span) for e in edits] + [make_grain(f) for f in kept],
                    "meta": {
                        "asserts": asserts,
                        "edit_grains": edit_facts,
                        "kept_grains": kept,
                        "drop_one_text": drop,
                        "target_signature": target.signature,
                        **self.image_meta(ref),
                    },
                    "target": t,
                }
            )

    # ------------------------------------------------------------- finish
    def finish(self) -> Task:
        """Shuffle the pool, assign ids, compute qrels, return the task (image jobs in ``self.jobs``)."""
        perm = list(range(len(self.pool.items)))
        self.rng.shuffle(perm)
        cw = max(4, len(str(len(perm) - 1)))
        pos = {old: new for new, old in enumerate(perm)}
        candidates: list[Candidate] = []
        holding: list[list[str]] = []
        for new, old in enumerate(perm):
            it = self.pool.items[old]
            cid = f"{self.name}-c{new:0{cw}d}"
            meta: dict[str, Any] = {"role": it["role"]}
            if it["source"]:
                meta["source_query"] = it["source"]
            if it["grain"]:
                meta["contrast_grain"] = it["grain"]
            if "text" in it:
                meta["asserts"] = it["asserts"]
                candidates.append(Candidate(id=cid, text=it["text"], meta=meta))
                holding.append(it["asserts"])
            else:
                rel = f"images/{self.name}/c{new:0{cw}d}.png"
                meta.update(self.image_meta(it["scene"]))
                self.jobs.append(_ImageJob(rel, it["scene"], it["nuisance"]))
                candidates.append(Candidate(id=cid, image=rel, meta=meta))
                holding.append(sorted(it["scene"].facts))
        queries: list[Query] = []
        for q in self.queries:
            meta = dict(q["meta"])
            meta["target"] = f"{self.name}-c{pos[q['target']]:0{cw}d}"
            queries.append(Query(id=q["id"], text=q.get("text"), image=q.get("image"), grains=q["grains"], meta=meta))
        cids = [c.id for c in candidates]
        qids = [q.id for q in queries]
        if self.name == "i2t":
            qrels = compute_qrels(holding, [q.meta["facts"] for q in queries], cids, qids, required_are_queries=False)
        else:
            qrels = compute_qrels([q.meta["asserts"] for q in queries], holding, qids, cids)
        spec = _TASK_TEXT[self.name]
        roles = Counter(c.meta["role"] for c in candidates)
        counts = Counter(q.n_grains for q in queries)
        return Task(
            name=self.name,
            query_modality=spec["query_modality"],
            candidate_modality=spec["candidate_modality"],
            queries=queries,
            candidates=candidates,
            qrels=qrels,
            query_instruction=spec["query_instruction"],
            candidate_instruction=spec["candidate_instruction"],
            relevance_level=RELEVANCE_LEVEL,
            description=spec["description"],
            metadata={
                "pool_roles": {r: roles[r] for r in sorted(roles)},
                "grain_counts": {str(c): counts[c] for c in sorted(counts)},
            },
        )


def resolve_size(size: str | int) -> int:
    """Queries per task for a size name (``"tiny"``, ``"default"``), a digit string or a positive int."""
    if isinstance(size, bool):
        raise BenchmarkError(f"size {size!r} is not a size; pass 'tiny', 'default' or a number of queries per task")
    if isinstance(size, int):
        n = size
    elif isinstance(size, str) and size.strip().isdigit():
        n = int(size.strip())
    elif isinstance(size, str) and size in SIZE_PRESETS:
        return SIZE_PRESETS[size]
    else:
        raise UnknownNameError(
            f"unknown synth size {size!r}{did_you_mean(str(size), list(SIZE_PRESETS))}; "
            f"pass one of {', '.join(SIZE_PRESETS)} or a number of queries per task"
        )
    if n < 1:
        raise BenchmarkError(f"size {n} is not positive; pass at least 1 query per task")
    if n > MAX_QUERIES_PER_TASK:
        raise BenchmarkError(f"size {n} is too large; pass 1 to {MAX_QUERIES_PER_TASK} queries per task")
    return n


def check_image_size(image_size: int, option: str = "image_size") -> int:
    """``image_size`` if it is an int in :data:`IMAGE_SIZE_RANGE`, else a one-line error naming ``option``."""
    lo, hi = IMAGE_SIZE_RANGE
    if not isinstance(image_size, int) or isinstance(image_size, bool) or not lo <= image_size <= hi:
        raise BenchmarkError(f"{option} {image_size!r} is out of range; pass an integer from {lo} to {hi} pixels")
    return image_size


def build_synth_tasks(
    *, size: str | int = "default", seed: int = 0, split: str = "test", image_size: int = 128
) -> tuple[list[Task], list[tuple[str, list[_ImageJob]]]]:
    """Plan the benchmark in memory: the tasks and, per task, the images still to render."""
    n = resolve_size(size)
    if split not in SPLITS:
        raise UnknownNameError(f"unknown split {split!r}{did_you_mean(split, list(SPLITS))}; pass 'test' or 'train'")
    check_image_size(image_size)
    tasks, jobs = [], []
    for name in TASK_NAMES:
        tb = _TaskBuilder(name, n, split, int(seed), image_size)
        tb.build()
        tasks.append(tb.finish())
        jobs.append((name, tb.jobs))
    return tasks, jobs


def synth_name(size: str | int = "default", split: str = "test") -> str:
    """The name :func:`build_synth` records by default: ``mrbench-synth``, plus ``-tiny`` when ``size``
    comes to the tiny preset's queries per task, plus ``-train`` for the train split. These are the
    names of the built-in benchmarks (:data:`mrbench.data.registry.BUILTIN_BENCHMARKS`) of that size
    and split, so a directory built with ``mrbench build synth --size tiny`` is labelled like
    ``mrbench-synth-tiny``. The name is a label: it is not part of the fingerprint."""
    name = BENCHMARK_NAME
    if resolve_size(size) == SIZE_PRESETS["tiny"]:
        name += "-tiny"
    if split == "train":
        name += "-train"
    return name


def build_synth(
    output: Path,
    *,
    size: str | int = "default",
    seed: int = 0,
    split: str = "test",
    image_size: int = 128,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    name: str | None = None,
) -> Benchmark:
    """Generate MRBench-Synth into the directory ``output`` and return it (root and fingerprint set).

    ``size``: ``"tiny"`` (8 queries per task), ``"default"`` (250 per task, ≈1k queries, near MRBench)
    or a number of queries per task. ``split``: ``"test"`` or ``"train"`` (disjoint target scenes).
    ``name``: the benchmark name written into the manifest (and so into results and leaderboard
    entries); by default :func:`synth_name` of ``size`` and ``split``. It does not enter the fingerprint.
    ``progress(stage, done, total)`` is called while rendering (stage ``"render <task>"``) and once
    for ``"write"``. Writing is atomic (:func:`mrbench.data.io.atomic_dir`); an existing non-empty
    ``output`` is refused unless ``overwrite``.
    """
    from mrbench.data.fingerprint import image_sha256, png_pixels_sha256
    from mrbench.data.io import MANIFEST, atomic_dir, record_verified, write_benchmark_files

    output = Path(output)
    n = resolve_size(size)
    if name is None:
        name = synth_name(n, split)
    elif not isinstance(name, str) or not name.strip() or name != name.strip():
        raise BenchmarkError(f"benchmark name {name!r} is not usable; pass a non-empty name without surrounding spaces")
    tasks, jobs = build_synth_tasks(size=n, seed=seed, split=split, image_size=image_size)
    bench = Benchmark(
        name=name,
        version=BENCHMARK_VERSION,
        tasks=tasks,
        split=split,
        description="MRBench-Synth: procedurally rendered multi-grain retrieval (t2i, i2t, i2i, it2i) with exact, "
        "scene-graph relevance and one-grain contrast distractors.",
        metadata={
            "generator": "mrbench.builders.synth",
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "size": size if isinstance(size, str) else int(size),
            "queries_per_task": n,
            "image_size": image_size,
            "split_rule": "target scene signature sha256(sorted facts): int(hex[:8], 16) % 100 < 30 -> train, else test",
            "qrels": "grade = floor(100 * fraction of asserted facts that hold + 0.5), stored when fraction >= 0.5; "
            "relevance_level 100 (full matches only)",
            "fact_vocabulary": list(fact_vocabulary()),
        },
    )
    digests: dict[str, str] = {}  # the fingerprint's hash of each PNG, from the image as rendered
    with atomic_dir(output, overwrite=overwrite, marker=MANIFEST, what="a benchmark") as staging:
        for name, task_jobs in jobs:
            total = len(task_jobs)
            stage = f"render {name}"
            if progress:
                progress(stage, 0, total)
            for j, job in enumerate(task_jobs, 1):
                img = render_scene(job.scene, image_size, job.nuisance)
                save_png(img, staging / job.rel)
                digests[job.rel] = png_pixels_sha256(img)  # PNG is lossless: the pixels read back are these
                if progress and (j % 50 == 0 or j == total):
                    progress(stage, j, total)
        if progress:
            progress("write", 0, 1)
        fp = write_benchmark_files(bench, staging, image_hash=lambda rel: digests.get(rel) or image_sha256(staging / rel))
        if progress:
            progress("write", 1, 1)
    bench.root = output
    bench.fingerprint = fp
    record_verified(bench)  # its files were just fingerprinted: the first load need not hash them again
    return bench


__all__ = [
    "BENCHMARK_NAME",
    "GENERATOR_VERSION",
    "SIZE_PRESETS",
    "TASK_NAMES",
    "Edit",
    "build_synth",
    "build_synth_tasks",
    "check_image_size",
    "compute_qrels",
    "contrast_caption",
    "contrast_scene",
    "edit_text",
    "fact_phrase",
    "grade_of",
    "grain_span",
    "realize",
    "resolve_size",
    "sample_description",
    "sample_edits",
    "scene_signature",
    "split_of_signature",
    "synth_name",
]
