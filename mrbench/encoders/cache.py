"""On-disk embedding cache: append-only ``.npz`` shards per encoder namespace.

Layout: ``<root>/<namespace dir>/shard-<time>-<pid>-<random>.npz``, each holding two arrays,
``keys`` (fixed-width unicode, sha256 hex) and ``emb`` (float32 ``[n, D]``). Shards are written to a
temporary file and moved into place with :func:`os.replace`, so a reader never sees half a shard;
an interrupted run loses at most the batch in flight and a re-run resumes from the shards on disk.
Files are read with ``np.load(..., allow_pickle=False)`` (no pickle anywhere); the ``emb`` arrays
are memory-mapped for each lookup, one shard at a time, rather than loaded, and an instance keeps
only its key index (a shard is checked in full, CRC-32 and finite values, the first time an instance
reads from it and again when its file changes), so a pool larger than memory can pass through the
cache (``evaluate --stream-pool``).

Keys: ``sha256(namespace, role, instruction or "", content_hash)`` (see :func:`cache_key`) — the
same content encoded in another role, with another instruction, or by another encoder revision
or kwargs (both part of the namespace) is a different entry. What is stored is the harness's
*validated* output (L2-normalised for cosine encoders).

Several processes may write the same namespace at once (shard names are unique); each reads the
shards present when it first uses the cache plus the ones it writes itself.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import functools
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, TypeVar

import numpy as np

from mrbench.errors import EncoderError

log = logging.getLogger(__name__)

CACHE_ENV = "MRBENCH_CACHE"
"""Environment variable overriding the default cache root."""

_SLUG_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_KEY_DTYPE = "<U64"
_ROW_BITS = 32  # an index entry packs (shard number, row) into one int
_ROW_MASK = (1 << _ROW_BITS) - 1
_BATCH_BEING_WRITTEN = "the batch being written"


def default_cache_root() -> Path:
    """``$MRBENCH_CACHE`` if set, else ``$MRBENCH_HOME/embeddings`` (``~/.cache/mrbench/embeddings``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from mrbench.data.registry import mrbench_home

    return mrbench_home() / "embeddings"


def slug(text: str, max_len: int = 80) -> str:
    """Filesystem-safe form of ``text``: runs of characters outside ``[A-Za-z0-9._-]`` become ``_``."""
    s = _SLUG_BAD.sub("_", text).strip("._") or "x"
    return s[:max_len]


def kwargs_digest(kwargs: Mapping[str, Any] | None) -> str:
    """Short (10 hex) sha256 of the canonical JSON of ``kwargs``; ``""`` when there are none.

    Values JSON cannot express are hashed through ``str()``.
    """
    if not kwargs:
        return ""
    blob = json.dumps(dict(kwargs), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def cache_namespace(name: str, revision: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """The cache namespace of an encoder: ``"<name>@<revision>"`` plus ``"#<kwargs digest>"``.

    ``name`` should identify the encoder unambiguously — prefer the spec the user passed to
    :func:`~mrbench.encoders.registry.get_encoder` (``"openclip:ViT-B-32/laion2b"``,
    ``"path/enc.py:MyEncoder"``) over ``meta.name`` alone; ``revision`` is ``meta.revision``
    (encoders should put a checkpoint hash there, or stale embeddings will be reused).
    """
    ns = f"{name}@{revision}"
    d = kwargs_digest(kwargs)
    return f"{ns}#{d}" if d else ns


def cache_key(namespace: str, role: str, instruction: str | None, content_hash: str) -> str:
    """sha256 hex over ``(namespace, role, instruction or "", content_hash)``, NUL-separated."""
    return hashlib.sha256(_key_head(namespace, role, instruction) + content_hash.encode()).hexdigest()


def _key_head(namespace: str, role: str, instruction: str | None) -> bytes:
    """What every key of ``(namespace, role, instruction)`` hashes before the content hash."""
    return "\x00".join((namespace, role, instruction or "", "")).encode()


@dataclass
class CacheStats:
    """Lookup counters of one :class:`EmbeddingCache` instance."""

    hits: int = 0
    misses: int = 0
    written: int = 0


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(fn: _F) -> _F:
    """Run the method under the instance's (re-entrant) lock."""

    @functools.wraps(fn)
    def wrapper(self: "EmbeddingCache", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class EmbeddingCache:
    """Append-only embedding store for one encoder namespace (see the module docstring).

    Thread-safe: ``evaluate`` looks up one call's keys while the call before it writes its shards.

    ``namespace`` is an arbitrary string (see :func:`cache_namespace`); it enters every key and
    names the directory (slugged, plus a short hash of the raw string when slugging lost anything).
    """

    def __init__(self, root: Path | str, namespace: str) -> None:
        if not namespace:
            raise EncoderError("embedding cache: namespace must be a non-empty string")
        self.root = Path(root).expanduser()
        self.namespace = namespace
        s = slug(namespace)
        if s != namespace:
            s = f"{s}-{hashlib.sha256(namespace.encode()).hexdigest()[:8]}"
        self.path = self.root / s
        self.stats = CacheStats()
        self._index: dict[str, int] | None = None  # key -> shard number << _ROW_BITS | row
        self._shards: list[Path] = []
        # shard number -> (its file's (inode, size, mtime_ns) when its embeddings passed the full
        # check, their layout): a shard is checked again when its file changes
        self._checked: dict[int, tuple[tuple[int, int, int], _Layout | None]] = {}
        self._dim: int | None = None
        self._dim_source: str | None = None
        self._lock = threading.RLock()

    # ---------------------------------------------------------------------------------------------
    def key(self, role: str, instruction: str | None, content_hash: str) -> str:
        """The key of one item in this namespace (see :func:`cache_key`)."""
        return cache_key(self.namespace, role, instruction, content_hash)

    def keys(self, role: str, instruction: str | None, content_hashes: Sequence[str]) -> list[str]:
        """:meth:`key` of each content hash (the same bytes hashed; the shared prefix encoded once)."""
        head = _key_head(self.namespace, role, instruction)
        sha = hashlib.sha256
        return [sha(head + h.encode()).hexdigest() for h in content_hashes]

    @property
    @_locked
    def dim(self) -> int | None:
        """Embedding dimension of the stored entries (``None`` while empty)."""
        self._ensure_index()
        return self._dim

    @_locked
    def __len__(self) -> int:
        return len(self._ensure_index())

    @_locked
    def __contains__(self, key: object) -> bool:
        return key in self._ensure_index()

    # ---------------------------------------------------------------------------------------------
    def _ensure_index(self) -> dict[str, int]:
        """Build the key index from every shard's ``keys`` (embeddings are loaded on demand): key ->
        ``shard number << _ROW_BITS | row``, one int per key (a later shard's row wins)."""
        if self._index is not None:
            return self._index
        index: dict[str, int] = {}
        paths = sorted(self.path.glob("shard-*.npz")) if self.path.is_dir() else []
        for p in paths:
            keys = self._shard_keys(p)
            if keys is None:
                continue
            n = len(self._shards)
            self._shards.append(p)
            index.update(zip(keys.tolist(), range(n << _ROW_BITS, (n << _ROW_BITS) + len(keys))))
        self._index = index
        return index

    @staticmethod
    def _warn_corrupt(p: Path, problem: str) -> None:
        log.warning("embedding cache: skipping corrupt shard %s (%s); delete it to silence this", p, problem)

    def _shard_keys(self, p: Path) -> np.ndarray | None:
        """A usable shard's keys after checking its dimension against the cache's (see
        :meth:`_read_keys`, :meth:`_check_dim`); ``None`` for an unusable shard."""
        head = self._read_keys(p)
        if head is None:
            return None
        self._check_dim(head[1], p)
        return head[0]

    @classmethod
    def _read_keys(cls, p: Path) -> tuple[np.ndarray, int] | None:
        """Read a shard's keys and its ``emb`` header; ``None`` (one warning line) when unusable."""
        problem = None
        try:
            with np.load(p, allow_pickle=False) as z:
                keys = z["keys"]
                with z.zip.open("emb.npy") as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            if keys.ndim != 1 or keys.dtype.kind != "U":
                problem = f"'keys' is {keys.dtype}{list(keys.shape)}, expected a 1-d unicode array"
            elif len(shape) != 2 or dtype != np.float32 or shape[0] != keys.shape[0] or shape[1] < 1:
                problem = f"'emb' is {dtype}{list(shape)} for {keys.shape[0]} keys"
        except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError, ...
            problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"
        if problem is not None:
            cls._warn_corrupt(p, problem)
            return None
        return keys, int(shape[1])

    def _open_emb(self, n: int) -> np.ndarray | None:
        """Shard ``n``'s embeddings (see :func:`_read_emb`: a memory map of the file), checked in
        full the first time this object opens the shard and again whenever its file has changed
        since (inode, size or modification time); ``None`` (one warning line, its keys leave the
        index) when they turn out unusable. The caller drops the map once it has its rows."""
        p = self._shards[n]
        memo = self._checked.get(n)
        try:
            st = os.stat(p)
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as e:
            return self._drop_shard(n, f"{type(e).__name__}: {e.strerror or e}")
        if memo is not None and memo[0] == ident:
            got = _read_emb(p, self._dim, check=False, layout=memo[1])
        else:
            got = _read_emb(p, self._dim, check=True)
        if isinstance(got, str):
            return self._drop_shard(n, got)
        self._checked[n] = (ident, got[1])
        return got[0]

    def _drop_shard(self, n: int, problem: str) -> None:
        """Warn (one line) that shard ``n`` is unusable and take its keys out of the index."""
        self._warn_corrupt(self._shards[n], problem)
        self._checked.pop(n, None)
        index = self._ensure_index()
        for k in [k for k, c in index.items() if c >> _ROW_BITS == n]:
            del index[k]

    def _check_dim(self, d: int, source: Path | str) -> None:
        if self._dim is None:
            # a batch this object wrote is later compared with the next one: name it as such
            self._dim = d
            self._dim_source = "a batch written earlier" if source == _BATCH_BEING_WRITTEN else str(source)
        elif d != self._dim:
            raise EncoderError(
                f"embedding cache {self.path}: {source} holds dimension {d} but {self._dim_source} holds "
                f"{self._dim}; the namespace {self.namespace!r} mixes encoders — delete {self.path} and re-run"
            )

    # ---------------------------------------------------------------------------------------------
    @_locked
    def get_many(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Look up ``keys``: ``(mask bool[N], emb float32[N, D])``; rows of misses are zero.

        ``emb`` is ``None`` when nothing was found. Updates :attr:`stats`.
        """
        index = self._ensure_index()
        n = len(keys)
        # one C-level pass over the keys; shards and rows are then array operations
        codes = np.fromiter(map(index.get, keys, itertools.repeat(-1)), dtype=np.int64, count=n)
        shard = codes >> _ROW_BITS  # -1 for a miss
        hit = np.flatnonzero(codes >= 0)
        emb = None
        if hit.size:
            assert self._dim is not None
            emb = np.zeros((n, self._dim), dtype=np.float32)
            hit = hit[np.argsort(shard[hit], kind="stable")]  # grouped by shard
            sh = shard[hit]
            starts = np.flatnonzero(np.r_[True, sh[1:] != sh[:-1]])
            step = max(1, _CHECK_BYTES // (4 * self._dim))  # rows gathered at a time
            # one shard mapped at a time: a lookup over thousands of shards holds one descriptor
            for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(hit)]):
                dst = hit[a:b]
                s = int(sh[a])
                rows = self._open_emb(s)
                for c0 in range(0, dst.size if rows is not None else 0, step):
                    part = dst[c0 : c0 + step]
                    got = rows[codes[part] & _ROW_MASK]
                    # the file changed since it was checked (a sum is NaN/Inf when a value is, and needs no
                    # temporary array: the exact test only when it is, e.g. after a float32 overflow)
                    if not np.isfinite(got.sum()) and not np.isfinite(got).all():
                        self._drop_shard(s, "'emb' holds NaN/Inf")
                        rows = None
                        break
                    emb[part] = got
                if rows is None:  # corrupt data: its keys left the index
                    codes[dst] = -1
                    emb[dst] = 0.0
                del rows
        mask = codes >= 0
        n_hit = int(mask.sum())
        self.stats.hits += n_hit
        self.stats.misses += n - n_hit
        if n_hit == 0:
            return mask, None
        return mask, emb

    @_locked
    def put_many(self, keys: Sequence[str], emb: np.ndarray) -> Path | None:
        """Store ``emb[i]`` under ``keys[i]`` as one new shard (atomic); returns its path.

        Nothing is written for an empty batch. Raises :class:`EncoderError` when the dimension
        differs from what the namespace already holds.
        """
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(keys):
            raise ValueError(f"put_many: {len(keys)} keys for embeddings of shape {emb.shape}")
        if len(keys) == 0:
            return None
        self._ensure_index()
        self._check_dim(emb.shape[1], _BATCH_BEING_WRITTEN)
        final = self._write_shard(list(keys), emb.shape[1], [emb])
        self.stats.written += len(keys)
        return final

    def _write_shard(self, keys: list[str], dim: int, parts: Iterable[np.ndarray]) -> Path:
        """Write one shard (atomically: a temporary file, fsync, rename) whose embeddings are the
        rows of ``parts`` in order, one part in memory at a time, and add it to the index."""
        index = self._ensure_index()
        key_arr = np.asarray(keys, dtype=_KEY_DTYPE)
        self.path.mkdir(parents=True, exist_ok=True)
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.npz"
        final = self.path / name
        tmp = self.path / f".{name}.tmp"
        try:
            with open(tmp, "wb") as f:
                _save_shard(f, key_arr, dim, parts)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        n = len(self._shards)
        self._shards.append(final)
        index.update(zip(keys, range(n << _ROW_BITS, (n << _ROW_BITS) + len(keys))))
        return final

    @_locked
    def merge_shards(self, paths: Sequence[Path | str], *, max_rows: int = 1_000_000) -> list[Path]:
        """Rewrite the shards ``paths`` of this namespace as a few shards of at most ``max_rows`` rows
        each (a key held by several keeps its last row in ``paths`` order), then delete ``paths``;
        returns the new shards (``paths`` unchanged when there are fewer than two).

        Meant for one writer compacting what it wrote itself (``mrbench encode``: each rank merges
        its own shards, one per few thousand rows), so a namespace filled by many processes ends up with
        a handful of files instead of many small ones. The new shards are written (atomically, under fresh unique
        names) before the old ones are deleted, so a crash in between leaves duplicates, never a
        loss. Other writers' shards are untouched; only a reader that indexed ``paths`` *before* the
        merge and loads them afterwards misses them (it logs a corrupt-shard warning and
        re-encodes), so merge while nobody else reads the namespace. Unreadable shards in ``paths``
        are left in place. :attr:`stats` ``written`` is not changed by a merge.
        """
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"merge_shards: max_rows must be a positive integer, got {max_rows!r}")
        paths = [Path(p) for p in dict.fromkeys(str(p) for p in paths)]
        for p in paths:
            if p.parent.resolve() != self.path.resolve() or not p.name.startswith("shard-"):
                raise ValueError(f"merge_shards: {p} is not a shard of {self.path}")
        if len(paths) < 2:
            return paths
        self._ensure_index()
        codes: dict[str, int] = {}  # key -> source number << _ROW_BITS | row, in order of last occurrence
        # the merged shards' embeddings: where to map them (one at a time: a merge of thousands of
        # shards must not hold a descriptor each), or the array of one that cannot be mapped
        sources: list[tuple[Path, _Layout] | np.ndarray] = []
        merged: list[Path] = []
        for p in paths:
            keys = self._shard_keys(p)
            if keys is None:
                continue
            got = _read_emb(p, self._dim, check=True)
            if isinstance(got, str):
                self._warn_corrupt(p, got)
                continue
            m = len(sources) << _ROW_BITS
            for r, k in enumerate(keys.tolist()):
                codes.pop(k, None)  # last occurrence wins, in order
                codes[k] = m | r
            sources.append(got[0] if got[1] is None else (p, got[1]))
            del got
            merged.append(p)
        if len(merged) < 2:
            return paths
        assert self._dim is not None
        keys_all = list(codes)
        code_arr = np.fromiter(codes.values(), dtype=np.int64, count=len(codes))
        del codes
        out = [self._write_shard(keys_all[i : i + max_rows], self._dim,
                                 _gathered(sources, code_arr[i : i + max_rows], self._dim))
               for i in range(0, len(keys_all), max_rows)]
        del sources
        for p in merged:
            p.unlink(missing_ok=True)
        return out + [p for p in paths if p not in merged]

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r}, namespace={self.namespace!r})"


_CHECK_BYTES = 64 << 20
"""Bytes of a mapped shard checked (CRC-32, finite values) per step: a bounded share of memory."""


@dataclass(frozen=True)
class _Layout:
    """Where a stored ``.npy`` zip member's data lies in its file: byte offset, shape and dtype, the
    CRC-32 its zip entry records, and its ``.npy`` header's bytes (which that CRC covers too)."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    crc32: int
    header: bytes

    def map(self, path: Path) -> np.ndarray:
        """The member's data as a read-only memory map (an empty array for zero bytes)."""
        if int(np.prod(self.shape, dtype=np.int64)) == 0:
            return np.zeros(self.shape, dtype=self.dtype)
        return np.memmap(path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)


def _member_layout(path: Path, member: str) -> _Layout | None:
    """The :class:`_Layout` of the ``.npy`` array ``member`` of the ``.npz`` file ``path``, when it is
    stored uncompressed (``np.savez``) in C order with a version 1 or 2 header; ``None`` otherwise.

    The data's offset comes from the member's local zip header (whose name and extra fields may
    differ in length from the central directory's). Raises ``ValueError`` when the member's size
    disagrees with its header.
    """
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"bad local zip header for {member}")
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        f.seek(start)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
        f.seek(start)
        header = f.read(offset - start)
    if fortran or dtype.hasobject:
        return None
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(header) + nbytes != info.file_size:
        raise ValueError(f"{member} holds {info.file_size - len(header)} data bytes for {dtype}{list(shape)}")
    return _Layout(offset, tuple(shape), dtype, info.CRC, header)


def _check_rows(emb: np.ndarray, layout: _Layout | None) -> str | None:
    """What is wrong with a shard's embeddings ``emb`` (``None``: nothing): non-finite values, or,
    when they are mapped by ``layout``, a CRC-32 of the member other than the one its zip entry
    records. Reads ``emb`` in steps of :data:`_CHECK_BYTES`."""
    import zlib

    crc = None if layout is None else zlib.crc32(layout.header)
    rows = max(1, _CHECK_BYTES // max(1, emb.shape[1] * emb.itemsize))
    finite = True
    for r in range(0, emb.shape[0], rows):
        part = np.asarray(emb[r : r + rows])
        finite = finite and bool(np.isfinite(part).all())
        if crc is not None:
            crc = zlib.crc32(part, crc)
    if layout is not None and crc != layout.crc32:
        return "'emb' fails its CRC-32 check"
    if not finite:
        return "'emb' holds NaN/Inf"
    return None


_PARSE = object()  # _read_emb: the shard's layout is not known yet


def _read_emb(path: Path, dim: int | None, check: bool, layout: Any = _PARSE) -> tuple[np.ndarray, _Layout | None] | str:
    """``(emb, layout)``: the ``emb`` array of the shard ``path``, memory-mapped when stored
    uncompressed (as this module writes it; ``layout`` says where), else read whole (``layout``
    ``None``); or what is wrong with it, as a string: a wrong dtype or shape (``dim``: the cache's
    dimension), an unreadable file, or with ``check`` any problem :func:`_check_rows` finds (a full
    pass over the data). Pass the shard's ``layout`` when it is known (``None``: not mappable) to
    spare parsing its zip again."""
    try:
        lay = _member_layout(path, "emb.npy") if layout is _PARSE else layout
        if lay is not None:
            emb = lay.map(path)
        else:
            with np.load(path, allow_pickle=False) as z:  # zipfile checks the CRC on this read
                emb = z["emb"]
        if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[1] != dim:
            return f"'emb' is {emb.dtype}{list(emb.shape)}"
        problem = _check_rows(emb, lay) if check else None
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError, ...
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"
    return (emb, lay) if problem is None else problem


def _gathered(sources: Sequence[tuple[Path, _Layout] | np.ndarray], codes: np.ndarray, dim: int
              ) -> Iterator[np.ndarray]:
    """The rows ``codes`` (``source number << _ROW_BITS | row``) of ``sources`` (arrays, or a file
    and the layout to map it by, mapped only while its rows are copied), in order, in parts of at
    most :data:`_CHECK_BYTES`."""
    step = max(1, _CHECK_BYTES // (4 * dim))
    for a in range(0, codes.size, step):
        part = codes[a : a + step]
        src = part >> _ROW_BITS
        rows = part & _ROW_MASK
        out = np.empty((part.size, dim), dtype=np.float32)
        for m in np.unique(src).tolist():
            sel = src == m
            got = sources[m]
            arr = got if isinstance(got, np.ndarray) else got[1].map(got[0])
            out[sel] = arr[rows[sel]]
            del arr
        yield out


def _save_shard(f: BinaryIO, keys: np.ndarray, dim: int, parts: Iterable[np.ndarray]) -> None:
    """Write a shard to the open file ``f`` as ``np.savez(f, keys=keys, emb=...)`` would (a zip of
    stored ``.npy`` members) with ``emb`` the float32 rows of ``parts`` (``len(keys)`` in all), one
    part at a time."""
    import zipfile

    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("keys.npy", "w", force_zip64=True) as m:
            np.lib.format.write_array(m, keys, allow_pickle=False)
        with zf.open("emb.npy", "w", force_zip64=True) as m:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": (len(keys), dim)}
            np.lib.format.write_array_header_1_0(m, header)
            rows = 0
            for part in parts:
                part = np.ascontiguousarray(part, dtype=np.float32)
                rows += part.shape[0]
                m.write(memoryview(part).cast("B"))
            if rows != len(keys):
                raise ValueError(f"a shard of {len(keys)} keys got {rows} rows of embeddings")
