"""Image file digests kept on disk between runs, one store per benchmark directory.

The embedding and pixel caches are keyed by the sha256 of each image file's bytes
(:func:`mrbench.encoders.harness.file_content_hash`), memoised per process by ``(path, mtime_ns,
size)``. Without a store, every new process reads and hashes every image again, even when all its
embeddings are cached: for a pool of a million images that is reading the whole image set per run.
:func:`load_file_hashes` puts a directory's stored digests into that memo (an entry is used only
while its file's size and modification time are unchanged: the memo checks them with one ``stat``
per file, as the verification stamps do); :func:`save_file_hashes` writes the memo's entries under
the directory back when this process hashed files there.

Store: ``$MRBENCH_HOME/file-hashes/<sha256 of the directory's absolute path>[:24].npz``, written to a
temporary file and renamed (``np.load(..., allow_pickle=False)``; no pickle). Arrays: ``rel``, the
paths relative to the directory as "\\n"-joined UTF-8 bytes; ``digest``, the hex digests likewise;
``mtime_ns`` and ``size`` (int64). A store that cannot be read is ignored; one that cannot be written
only costs speed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_VERSION = 1
_saved_at: dict[str, int] = {}  # directory -> harness._FILE_HASHES_COMPUTED when last stored


def store_path(root: Path | str) -> Path:
    """Where the digests of the files under ``root`` are stored."""
    from mrbench.data.registry import mrbench_home

    key = hashlib.sha256(os.path.abspath(os.fspath(root)).encode()).hexdigest()[:24]
    return mrbench_home() / "file-hashes" / f"{key}.npz"


def _prefix(root: Path | str) -> str:
    return os.path.join(os.path.abspath(os.fspath(root)), "")


def load_file_hashes(root: Path | str | None) -> int:
    """Put the stored digests of files under ``root`` into the per-process memo; returns how many
    (0 without a usable store)."""
    from mrbench.encoders import harness

    if root is None:
        return 0
    p = store_path(root)
    try:
        with np.load(p, allow_pickle=False) as z:
            version = int(z["version"][0])
            rel = bytes(z["rel"]).decode("utf-8").split("\n")
            digest = bytes(z["digest"]).decode("ascii").split("\n")
            mtime = z["mtime_ns"].tolist()
            size = z["size"].tolist()
    except FileNotFoundError:
        return 0
    except Exception as e:  # a damaged store: hashing again is all it costs
        log.debug("file-hash store %s unreadable (%s); ignored", p, e)
        return 0
    if version != _VERSION or not (len(rel) == len(digest) == len(mtime) == len(size)) or rel == [""]:
        return 0
    prefix = _prefix(root)
    with harness._FILE_HASHES_LOCK:
        memo = harness._FILE_HASHES
        if len(memo) + len(rel) > harness._FILE_HASHES_MAX:
            return 0
        memo.update(zip(zip([prefix + r for r in rel], mtime, size), digest))
    return len(rel)


def save_file_hashes(root: Path | str | None) -> int:
    """Store the memo's digests of files under ``root`` when this process has hashed files since it
    last stored that directory's (possibly elsewhere: the memo does not say where); returns how many
    entries were written (0: nothing new, or the store could not be written)."""
    from mrbench.encoders import harness

    if root is None:
        return 0
    prefix = _prefix(root)
    n0 = len(prefix)
    with harness._FILE_HASHES_LOCK:
        computed = harness._FILE_HASHES_COMPUTED[0]
        if _saved_at.get(prefix, 0) >= computed:
            return 0
        entries = [(k[0][n0:], k[1], k[2], d) for k, d in harness._FILE_HASHES.items() if k[0].startswith(prefix)]
        _saved_at[prefix] = computed
    # one entry per file, its newest (a file changed since it was hashed leaves its old entry behind)
    entries = list({e[0]: e for e in sorted(entries, key=lambda e: e[1]) if "\n" not in e[0]}.values())
    if not entries:
        return 0
    p = store_path(root)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(
                f,
                version=np.array([_VERSION], dtype=np.int64),
                rel=np.frombuffer("\n".join(e[0] for e in entries).encode("utf-8"), dtype=np.uint8),
                digest=np.frombuffer("\n".join(e[3] for e in entries).encode("ascii"), dtype=np.uint8),
                mtime_ns=np.array([e[1] for e in entries], dtype=np.int64),
                size=np.array([e[2] for e in entries], dtype=np.int64),
            )
        os.replace(tmp, p)
    except OSError as e:
        log.debug("file-hash store %s not written (%s)", p, e)
        tmp.unlink(missing_ok=True)
        return 0
    return len(entries)
