"""Built-in sanity encoders. None of them reads pixels (``EncoderMeta.needs_pixels=False``).

* :class:`RandomEncoder` — chance baseline: a deterministic, hash-seeded Gaussian vector per item.
* :class:`ConstantEncoder` — the same unit vector for every item: every candidate ties, which
  exposes the metrics' tie policy (pessimistic ranks) end to end.
* :class:`OracleEncoder` — reads the synthetic scene graph from the items' metadata; retrieval is
  perfect by construction (a candidate matching every asserted fact scores exactly ``1.0``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mrbench.encoders.base import EncodeInput, EncoderMeta, Role
from mrbench.errors import EncoderError

if TYPE_CHECKING:
    from mrbench.data.schema import TaskInfo


def _positive_int(name: str, value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EncoderError(f"encoder {name!r}: {what} must be a positive integer, got {value!r}")
    return value


class RandomEncoder:
    """Hash-seeded random vectors: ``N(0, I_dim)`` seeded by ``sha256(seed, content_hash, instruction)``.

    Conventions: the role does *not* enter the seed, so the same content (and instruction) gets the
    same vector whether it is a query or a candidate — an image retrieved by itself ranks first,
    anything else is chance. The instruction does enter (``""`` when none), so instructed queries
    differ from uninstructed ones. Vectors depend only on content, never on item ids or batch
    composition. Similarity is cosine (the harness normalises).
    """

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        self.dim = _positive_int("random", dim, "dim")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise EncoderError(f"encoder 'random': seed must be an integer, got {seed!r}")
        self.seed = seed
        self.meta = EncoderMeta(
            name="random",
            revision="sha256-normal-v1",
            modalities=("text", "image"),
            similarity="cosine",
            dim=self.dim,
            native_image_text=True,
            needs_pixels=False,
            batch_size=1024,
            extra={"seed": seed},
        )

    def encode(self, items: Sequence[EncodeInput], *, role: Role, task: "TaskInfo") -> np.ndarray:
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for i, it in enumerate(items):
            h = hashlib.sha256(f"{self.seed}\x00{it.content_hash}\x00{it.instruction or ''}".encode()).digest()
            rng = np.random.Generator(np.random.PCG64(int.from_bytes(h[:16], "little")))
            out[i] = rng.standard_normal(self.dim, dtype=np.float32)
        return out


class ConstantEncoder:
    """Every item gets the same unit vector ``(1, …, 1)/sqrt(dim)``: every candidate ties."""

    def __init__(self, dim: int = 8) -> None:
        self.dim = _positive_int("constant", dim, "dim")
        self.meta = EncoderMeta(
            name="constant",
            revision="v1",
            modalities=("text", "image"),
            similarity="cosine",
            dim=self.dim,
            native_image_text=True,
            needs_pixels=False,
            batch_size=1024,
        )

    def encode(self, items: Sequence[EncodeInput], *, role: Role, task: "TaskInfo") -> np.ndarray:
        return np.full((len(items), self.dim), 1.0 / np.sqrt(self.dim), dtype=np.float32)


ORACLE_WEIGHT_BITS = 23
"""Assertion weights are multiples of ``2**-23`` so every dot product is exact in float32."""


class OracleEncoder:
    """Perfect retrieval from the scene graph carried in item metadata.

    Inputs (filled by the synthetic builder):

    * the fact vocabulary ``F`` from ``task.metadata["fact_vocabulary"]`` (the harness copies the
      benchmark's ``metadata["fact_vocabulary"]`` there; a task's own entry wins);
    * ``item.meta["facts"]`` — a *scene* (an image): every fact true in it, closed world;
    * ``item.meta["asserts"]`` — *assertions* (a text or composed query): the facts it requires.
      When an assertion-side item has no ``"asserts"`` but has ``"facts"`` (an image query in an
      image→image task), its facts are its assertions.

    Sides: candidates are scenes unless the task's candidate modality is ``"text"`` (then they are
    assertions); queries are assertions unless the candidate modality is ``"text"`` (then the query
    is the scene).

    Vectors over ``F`` (``D = |F|``, similarity ``"dot"``, no normalisation): a scene is
    ``s_f = +1`` if ``f`` is true else ``-1``; assertions ``A`` put weight ``w_f`` on each
    ``f ∈ A`` and 0 elsewhere, with ``w_f ≈ 1/|A|`` and ``Σ w_f = 1`` exactly. The score is therefore
    ``Σ_{f∈A} ± w_f ≈ (matched − unmatched)/|A| = 2·fraction − 1``: a full match scores exactly
    ``1.0`` for every item and a partial match strictly less. Exactness: ``1/|A|`` is not a binary
    fraction for most ``|A|``, so the weights are the nearest multiples of ``2**-23`` (they differ
    by at most one unit, ≈1.2e-7, and are exactly equal when ``|A|`` is a power of two); every
    partial sum is then exactly representable in float32 and the scores do not depend on the
    order of summation (BLAS, GPU). Facts outside ``F`` raise :class:`EncoderError`.
    """

    def __init__(self) -> None:
        self.meta = EncoderMeta(
            name="oracle",
            revision="scene-graph-v1",
            modalities=("text", "image"),
            similarity="dot",
            dim=None,
            native_image_text=True,
            needs_pixels=False,
            batch_size=4096,
            # The output depends on item metadata and the task's vocabulary, not only on content:
            # the harness must not cache it.
            cacheable=False,
            # Recorded in results.json: it reads the ground truth, so the leaderboard refuses its results
            # (mrbench.leaderboard.store.reads_ground_truth).
            extra={"reads_ground_truth": True},
        )

    @staticmethod
    def side(role: str, task: "TaskInfo") -> str:
        """``"scene"`` or ``"assertions"`` for this role in this task (see the class docstring)."""
        text_pool = task.candidate_modality == "text"
        if role == "candidate":
            return "assertions" if text_pool else "scene"
        return "scene" if text_pool else "assertions"

    @staticmethod
    def _vocabulary(task: "TaskInfo") -> dict[str, int]:
        vocab = (task.metadata or {}).get("fact_vocabulary")
        if not vocab or isinstance(vocab, (str, bytes, Mapping)):
            raise EncoderError(
                f"encoder 'oracle': task {task.name!r} has no metadata['fact_vocabulary'] (a list of facts); "
                "the oracle only works on benchmarks whose builder records the scene graph (e.g. mrbench-synth)"
            )
        index: dict[str, int] = {}
        for f in vocab:
            index.setdefault(str(f), len(index))
        return index

    def encode(self, items: Sequence[EncodeInput], *, role: Role, task: "TaskInfo") -> np.ndarray:
        vocab = self._vocabulary(task)
        side = self.side(role, task)
        out = np.zeros((len(items), len(vocab)), dtype=np.float32)
        unit = 2.0**-ORACLE_WEIGHT_BITS
        for i, it in enumerate(items):
            if side == "scene":
                facts = self._facts(it, "facts", task, role, side)
                row = np.full(len(vocab), -1.0, dtype=np.float32)
                row[[self._index(vocab, f, it, task) for f in facts]] = 1.0
                out[i] = row
            else:
                key = "asserts" if "asserts" in it.meta else "facts"
                facts = sorted(set(self._facts(it, key, task, role, side)))
                if not facts:
                    raise EncoderError(
                        f"encoder 'oracle': item {it.id!r} in task {task.name!r} asserts no facts (meta[{key!r}] is empty)"
                    )
                k = len(facts)
                base, rem = divmod(1 << ORACLE_WEIGHT_BITS, k)
                for j, f in enumerate(facts):
                    out[i, self._index(vocab, f, it, task)] = (base + (1 if j < rem else 0)) * unit
        return out

    @staticmethod
    def _facts(it: EncodeInput, key: str, task: "TaskInfo", role: str, side: str) -> list[str]:
        value = it.meta.get(key) if it.meta else None
        if value is None:
            need = "meta['facts']" if side == "scene" else "meta['asserts'] (or meta['facts'])"
            raise EncoderError(
                f"encoder 'oracle': item {it.id!r} ({role} in task {task.name!r}) has no {need}; "
                "the oracle needs the scene graph the synthetic builder records"
            )
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
            raise EncoderError(f"encoder 'oracle': item {it.id!r}: meta[{key!r}] must be a list of facts, got {value!r}")
        return [str(f) for f in value]

    @staticmethod
    def _index(vocab: dict[str, int], fact: str, it: EncodeInput, task: "TaskInfo") -> int:
        try:
            return vocab[fact]
        except KeyError:
            raise EncoderError(
                f"encoder 'oracle': item {it.id!r} in task {task.name!r} uses fact {fact!r}, "
                f"which is not in the task's fact_vocabulary ({len(vocab)} facts)"
            ) from None
