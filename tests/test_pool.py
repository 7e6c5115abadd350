"""Candidate pools and memory: the up-front "pool larger than memory" check, what memory is available
(system, cgroups, RLIMIT_AS), and the memory-mapped pools of --stream-pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mrbench.pipeline as pl
from mrbench.errors import MrbenchError

TINY = "mrbench-synth-tiny"
GiB = 2**30


# ------------------------------------------------------------------------------ available memory
def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    """A /proc/meminfo saying 64 GiB available, an empty cgroup tree, no RLIMIT_AS."""
    import resource

    _write(tmp_path / "meminfo", f"MemTotal: {128 * 2**20} kB\nMemAvailable: {64 * 2**20} kB\n")
    (tmp_path / "cg").mkdir()
    _write(tmp_path / "self_cgroup", "0::/\n")
    monkeypatch.setattr(pl, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(pl, "CGROUP_ROOT", tmp_path / "cg")
    monkeypatch.setattr(pl, "PROC_SELF_CGROUP", tmp_path / "self_cgroup")
    monkeypatch.setattr(resource, "getrlimit", lambda what: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return tmp_path


def test_available_memory_is_memavailable_without_limits(fake_proc):
    assert pl.available_memory() == 64 * GiB


def test_cgroup_v2_limit_is_respected(fake_proc):
    cg = fake_proc / "cg"
    _write(cg / "memory.max", "max\n")  # no limit at the root
    assert pl.available_memory() == 64 * GiB
    _write(cg / "memory.max", f"{8 * GiB}\n")
    _write(cg / "memory.current", f"{3 * GiB}\n")
    assert pl.available_memory() == 5 * GiB
    # the reclaimable inactive page cache does not count as used
    _write(cg / "memory.stat", f"anon {2 * GiB}\ninactive_file {1 * GiB}\nactive_file 5\n")
    assert pl.available_memory() == 6 * GiB
    # a nested group (no cgroup namespace): its own limit and every parent's, the smallest wins
    _write(fake_proc / "self_cgroup", "0::/user.slice/job.scope\n")
    _write(cg / "user.slice" / "job.scope" / "memory.max", "max\n")
    _write(cg / "user.slice" / "memory.max", f"{4 * GiB}\n")
    _write(cg / "user.slice" / "memory.current", f"{1 * GiB}\n")
    assert pl.available_memory() == 3 * GiB
    _write(cg / "user.slice" / "job.scope" / "memory.max", f"{2 * GiB}\n")
    _write(cg / "user.slice" / "job.scope" / "memory.current", f"{GiB // 2}\n")
    assert pl.available_memory() == GiB + GiB // 2
    # over the limit: nothing available, not a negative number
    _write(cg / "user.slice" / "job.scope" / "memory.current", f"{3 * GiB}\n")
    assert pl.available_memory() == 0


def test_cgroup_v1_limit_is_respected(fake_proc):
    mem = fake_proc / "cg" / "memory"
    _write(fake_proc / "self_cgroup", "5:devices:/\n4:memory:/docker/abc\n0::/\n")
    _write(mem / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    _write(mem / "memory.usage_in_bytes", f"{10 * GiB}\n")
    assert pl.available_memory() == 64 * GiB
    _write(mem / "docker" / "abc" / "memory.limit_in_bytes", f"{16 * GiB}\n")
    _write(mem / "docker" / "abc" / "memory.usage_in_bytes", f"{6 * GiB}\n")
    _write(mem / "docker" / "abc" / "memory.stat", f"cache 7\ntotal_inactive_file {2 * GiB}\n")
    assert pl.available_memory() == 12 * GiB
    # a cgroup namespace: the process's group is the mount's root
    _write(fake_proc / "self_cgroup", "4:memory:/\n")
    _write(mem / "memory.limit_in_bytes", f"{4 * GiB}\n")
    _write(mem / "memory.usage_in_bytes", f"{1 * GiB}\n")
    assert pl.available_memory() == 3 * GiB


def test_rlimit_as_is_respected(fake_proc, monkeypatch):
    import resource

    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(resource, "getrlimit", lambda what: (vm + 2 * GiB, resource.RLIM_INFINITY)
                        if what == resource.RLIMIT_AS else (resource.RLIM_INFINITY,) * 2)
    got = pl.available_memory()
    assert 2 * GiB - 256 * 2**20 < got <= 2 * GiB  # (the address space may have grown meanwhile)


def test_rlimit_as_in_a_real_process():
    """Under ``ulimit -v`` (RLIMIT_AS) the room above the process's address space is what is available."""
    code = (
        "import resource, os\n"
        "import mrbench.pipeline as pl\n"
        "vm = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        "print(pl.available_memory())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = int(out.stdout.strip())
    assert 200 * 2**20 < got <= 300 * 2**20, got


# ------------------------------------------------------------------------------ the up-front check
def test_pool_larger_than_memory_is_refused_before_anything_is_encoded(monkeypatch, tmp_path):
    """it2i's 48 candidates x 64 dims do not fit, t2i's 44 do: refused naming it2i and --stream-pool
    before t2i (first) is encoded, with nothing written."""
    from mrbench.encoders.builtin import RandomEncoder

    calls = []
    orig = RandomEncoder.encode

    def spy(self, items, **kw):
        calls.append(kw.get("role"))
        return orig(self, items, **kw)

    monkeypatch.setattr(RandomEncoder, "encode", spy)
    # 44 * 64 * 4 = 11,264 bytes fit in half of 23,000; 48 * 64 * 4 = 12,288 do not
    monkeypatch.setattr(pl, "available_memory", lambda: 23_000)
    out = tmp_path / "out"
    with pytest.raises(MrbenchError) as ei:
        pl.evaluate(TINY, "random", tasks=["t2i", "it2i"], cache=False, output=out)
    msg = str(ei.value)
    assert msg.startswith("task it2i: 48 candidates x 64 dims need") and "pass --stream-pool" in msg, msg
    assert "\n" not in msg and calls == [] and not out.exists()
    # with --stream-pool the same run goes through
    res = pl.evaluate(TINY, "random", tasks=["t2i", "it2i"], cache=False, stream_pool=True, grain_sensitivity=False)
    assert set(res.scores["tasks"]) == {"t2i", "it2i"}


def test_an_encoder_without_dim_is_checked_when_its_embeddings_arrive(monkeypatch):
    """No meta.dim: the late check (after the task's queries are encoded) still refuses the pool."""
    from mrbench.encoders.builtin import RandomEncoder

    orig = RandomEncoder.__init__

    def no_dim(self, *a, **kw):
        import dataclasses

        orig(self, *a, **kw)
        self.meta = dataclasses.replace(self.meta, dim=None)

    monkeypatch.setattr(RandomEncoder, "__init__", no_dim)
    monkeypatch.setattr(pl, "available_memory", lambda: 23_000)
    with pytest.raises(MrbenchError, match=r"task it2i: 48 candidates x 64 dims .* pass --stream-pool"):
        pl.evaluate(TINY, "random", tasks=["t2i", "it2i"], cache=False)
