"""Image file digests kept between runs (mrbench.encoders.hash_store)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mrbench.encoders import harness
from mrbench.encoders.hash_store import load_file_hashes, save_file_hashes, store_path


@pytest.fixture
def memo(monkeypatch):
    """An empty per-process memo, and the files the process reads to hash them (path names)."""
    import mrbench.data.fingerprint as fp
    from mrbench.encoders import hash_store

    monkeypatch.setattr(harness, "_FILE_HASHES", {})
    monkeypatch.setattr(harness, "_FILE_HASHES_COMPUTED", [0])
    monkeypatch.setattr(hash_store, "_saved_at", {})
    read: list[str] = []
    real = fp.file_sha256
    monkeypatch.setattr(fp, "file_sha256", lambda p, *a, **k: read.append(os.path.basename(p)) or real(p, *a, **k))
    return read


def _files(root, n=5):
    (root / "img").mkdir(parents=True)
    out = []
    for i in range(n):
        p = root / "img" / f"f{i}.bin"
        p.write_bytes(bytes([i]) * (100 + i))
        out.append(p)
    return out


def test_digests_survive_the_process_and_are_used_while_files_are_unchanged(tmp_path, memo, monkeypatch):
    root = tmp_path / "bench"
    files = _files(root)
    outside = tmp_path / "other.bin"
    outside.write_bytes(b"x")
    want = {p: harness.file_content_hash(p) for p in [*files, outside]}
    assert len(memo) == 6
    assert save_file_hashes(root) == 5  # the files under root only
    assert save_file_hashes(root) == 0  # nothing hashed since
    # a new process: empty memo, the store read back
    monkeypatch.setattr(harness, "_FILE_HASHES", {})
    memo.clear()
    assert load_file_hashes(root) == 5
    assert {p: harness.file_content_hash(p) for p in files} == {p: want[p] for p in files}
    assert memo == []  # not one file read
    # a file changed since: hashed again (its stat no longer matches), then stored as its newest entry
    st = files[0].stat()
    files[0].write_bytes(b"changed")
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
    assert harness.file_content_hash(files[0]) != want[files[0]] and memo == ["f0.bin"]
    assert save_file_hashes(root) == 5
    with np.load(store_path(root), allow_pickle=False) as z:
        rel = bytes(z["rel"]).decode().split("\n")
    assert sorted(rel) == [f"img/f{i}.bin" for i in range(5)]


def test_unusable_store_is_ignored(tmp_path, memo):
    root = tmp_path / "bench"
    files = _files(root, 2)
    p = store_path(root)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"not an npz")
    assert load_file_hashes(root) == 0
    assert load_file_hashes(None) == 0 and save_file_hashes(None) == 0
    harness.file_content_hash(files[0])
    assert save_file_hashes(root) == 1 and load_file_hashes(root) == 1  # replaced by a good one


def test_evaluate_hashes_images_once_across_runs(small_bench, memo, monkeypatch):
    import mrbench

    mrbench.evaluate(small_bench.root, "random", cache=False)
    assert sorted(memo) == ["blue.png", "green.png", "red.png"]
    monkeypatch.setattr(harness, "_FILE_HASHES", {})  # as in a new process
    memo.clear()
    mrbench.evaluate(small_bench.root, "random", cache=False)
    assert memo == []
