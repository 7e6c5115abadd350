"""Per-query ``{candidate row: value}`` mappings stored as three arrays (CSR).

Judged candidates, their grades, ranks and scores are one small mapping per query. At MRBench
scale a list of dicts is fine, but a benchmark with graded partial matches holds thousands of
judged candidates per query (15M pairs for MRBench-Synth built with ``--size 2000``), and building,
validating and reading those dicts cost more than the search itself. :class:`CsrMappings` keeps
them as arrays and still behaves as the read-only list of dicts the public API documents, so code
written against ``list[dict]`` keeps working, while :func:`~mrbench.retrieval.search.exact_search`
and :func:`~mrbench.metrics.ranking.judged_matrix` read the arrays directly.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np


class CsrMappings(Sequence):
    """One ``{key: value}`` dict per query, stored as ``ptr`` / ``keys`` / ``values`` arrays.

    Query ``q`` maps ``keys[ptr[q]:ptr[q+1]]`` to ``values[ptr[q]:ptr[q+1]]``. ``ptr`` is int64
    ``[Q+1]`` (``ptr[0] == 0``, non-decreasing), ``keys`` int64 ``[P]`` (unique within a query; the
    producers in mrbench keep them ascending), ``values`` any 1-d numeric array ``[P]``.

    As a sequence it is a read-only list of dicts: ``len``, ``m[q]`` (a new ``dict`` built on
    access, Python ints / floats; a slice gives a list of dicts), iteration, and ``==`` against any
    sequence of mappings with the same contents. The arrays are not copied; do not modify them.
    """

    __slots__ = ("ptr", "keys", "values")

    def __init__(self, ptr: np.ndarray, keys: np.ndarray, values: np.ndarray) -> None:
        ptr, keys, values = np.asarray(ptr), np.asarray(keys), np.asarray(values)
        if (ptr.size and ptr.dtype.kind not in "iu") or (keys.size and keys.dtype.kind not in "iu"):
            raise ValueError(f"CsrMappings needs integer ptr and keys, got {ptr.dtype} and {keys.dtype}")
        ptr, keys = ptr.astype(np.int64, copy=False), keys.astype(np.int64, copy=False)
        if ptr.ndim != 1 or ptr.size < 1 or ptr[0] != 0 or keys.ndim != 1 or values.shape != keys.shape:
            raise ValueError("CsrMappings needs ptr [Q+1] starting at 0 and keys / values of one length [P]")
        if int(ptr[-1]) != keys.size or (ptr.size > 1 and bool((np.diff(ptr) < 0).any())):
            raise ValueError("CsrMappings: ptr must be non-decreasing and end at len(keys)")
        self.ptr, self.keys, self.values = ptr, keys, values

    # -- the list-of-dicts view --------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.ptr.size) - 1

    def __getitem__(self, q: Any) -> Any:
        if isinstance(q, slice):
            return [self[i] for i in range(*q.indices(len(self)))]
        i = operator.index(q)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"query {q} out of range for {n} queries")
        a, b = int(self.ptr[i]), int(self.ptr[i + 1])
        return dict(zip(self.keys[a:b].tolist(), self.values[a:b].tolist()))

    def __iter__(self) -> Iterator[dict[int, Any]]:
        keys, values, ptr = self.keys.tolist(), self.values.tolist(), self.ptr.tolist()
        for a, b in zip(ptr[:-1], ptr[1:]):
            yield dict(zip(keys[a:b], values[a:b]))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CsrMappings):
            if self.same_layout(other):
                return bool(np.array_equal(self.values, other.values))
        elif not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CsrMappings({len(self)} queries, {self.keys.size} pairs, values {self.values.dtype})"

    # -- array helpers -----------------------------------------------------------------------
    @property
    def lengths(self) -> np.ndarray:
        """int64 ``[Q]``: entries per query."""
        return np.diff(self.ptr)

    def query_of(self) -> np.ndarray:
        """int64 ``[P]``: the query of every entry."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def reduce(self, ufunc: np.ufunc, values: np.ndarray | None = None, empty: Any = 0, dtype: Any = None) -> np.ndarray:
        """``[Q]``: per query, ``ufunc`` reduced over its entries of ``values`` (``[P]``, default: the
        mapped values), ``empty`` for a query without entries; dtype ``dtype`` (default: the values')."""
        return reduce_segments(ufunc, self.values if values is None else values, self.ptr, empty, dtype)

    def max_values(self) -> np.ndarray:
        """float64 ``[Q]``: each query's largest value (``-inf`` for a query without entries)."""
        return self.reduce(np.maximum, empty=-np.inf, dtype=np.float64)

    def same_layout(self, other: "CsrMappings") -> bool:
        """Whether ``other`` has the same queries and keys in the same order (values may differ)."""
        return self.ptr.shape == other.ptr.shape and bool(np.array_equal(self.ptr, other.ptr)) and bool(
            np.array_equal(self.keys, other.keys))

    def with_values(self, values: np.ndarray) -> "CsrMappings":
        """The same queries and keys mapped to ``values`` (``[P]``)."""
        return CsrMappings(self.ptr, self.keys, values)

    def select(self, mask: np.ndarray) -> "CsrMappings":
        """The entries where the bool ``[P]`` ``mask`` is true (every query kept, maybe empty)."""
        mask = np.asarray(mask, dtype=bool)
        return CsrMappings(segment_ptr(self.query_of()[mask], len(self)), self.keys[mask], self.values[mask])

    def take(self, queries: np.ndarray) -> "CsrMappings":
        """The mappings of ``queries`` (int ``[R]``, repeats allowed), in that order."""
        queries = np.asarray(queries, dtype=np.int64).reshape(-1)
        lens = self.lengths[queries]
        ptr = np.zeros(queries.size + 1, dtype=np.int64)
        np.cumsum(lens, out=ptr[1:])
        idx = np.arange(int(ptr[-1]), dtype=np.int64) + np.repeat(self.ptr[queries] - ptr[:-1], lens)
        return CsrMappings(ptr, self.keys[idx], self.values[idx])

    @classmethod
    def from_mappings(cls, mappings: Sequence[Mapping[int, Any]], dtype: Any = None) -> "CsrMappings":
        """A CSR copy of a sequence of mappings (keys in each mapping's own order)."""
        from itertools import chain

        lens = np.fromiter(map(len, mappings), dtype=np.int64, count=len(mappings))
        ptr = np.zeros(lens.size + 1, dtype=np.int64)
        np.cumsum(lens, out=ptr[1:])
        total = int(ptr[-1])
        keys = np.fromiter(chain.from_iterable(m.keys() for m in mappings), dtype=np.int64, count=total)
        values = np.array(list(chain.from_iterable(m.values() for m in mappings)), dtype=dtype)
        return cls(ptr, keys, values.reshape(total))


def reduce_segments(ufunc: np.ufunc, values: np.ndarray, ptr: np.ndarray, empty: Any = 0, dtype: Any = None) -> np.ndarray:
    """``[len(ptr) - 1]``: ``ufunc`` reduced over each segment ``values[ptr[s]:ptr[s+1]]``
    (``ptr`` non-decreasing, from 0 to ``len(values)``), ``empty`` for an empty segment; dtype
    ``dtype`` (default: the values')."""
    v = np.asarray(values)
    ptr = np.asarray(ptr)
    out = np.full(ptr.size - 1, empty, dtype=v.dtype if dtype is None else dtype)
    nonempty = ptr[1:] > ptr[:-1]
    if v.size:
        out[nonempty] = ufunc.reduceat(v, ptr[:-1][nonempty])
    return out


def segment_ptr(group: np.ndarray, n_groups: int) -> np.ndarray:
    """int64 ``[n_groups + 1]``: the segment bounds of non-decreasing group numbers ``group``."""
    ptr = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(group, minlength=n_groups), out=ptr[1:])
    return ptr
