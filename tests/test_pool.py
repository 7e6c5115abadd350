"""Candidate pools and memory: the up-front "pool larger than memory" check, what memory is available
(system, cgroups, RLIMIT_AS), and the memory-mapped pools of --stream-pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mrbench.memory as mem
import mrbench.pipeline as pl
from mrbench.errors import MrbenchError

from fixtures.procs import sigterm_when  # (tests/ is on sys.path under pytest)

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
    monkeypatch.setattr(mem, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(mem, "CGROUP_ROOT", tmp_path / "cg")
    monkeypatch.setattr(mem, "PROC_SELF_CGROUP", tmp_path / "self_cgroup")
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


# ------------------------------------------------------------------------------ --stream-pool's directories
_MAKE_POOL = (
    "import os, signal, sys\n"
    "from pathlib import Path\n"
    "from mrbench.pipeline import PoolDir\n"
    "d = PoolDir(Path(sys.argv[1]))\n"
    "(d.path / 't2i-candidates.npy').write_bytes(b'x' * 4096)\n"
    "print(d.path, flush=True)\n"
    "if sys.argv[2] == 'kill':\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "sys.stdin.read()\n"  # alive until its stdin closes
)


def _pool_of_a_process(tmp_root: Path, how: str):
    p = subprocess.Popen([sys.executable, "-c", _MAKE_POOL, str(tmp_root), how], stdout=subprocess.PIPE,
                         stdin=subprocess.PIPE, text=True)
    path = Path(p.stdout.readline().strip())
    if how == "kill":
        p.wait(timeout=60)
    return p, path


def test_pool_directory_names_its_owner_and_holds_a_lock(tmp_path):
    import fcntl
    import json
    import socket

    d = pl.PoolDir(tmp_path)
    assert d.path.parent == tmp_path and d.path.name.startswith("pool-") and f"-{os.getpid()}-" in d.path.name
    owner = json.loads((d.path / "owner.json").read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["locked"] is True
    fd = os.open(d.path / "owner.lock", os.O_RDWR)
    with pytest.raises(BlockingIOError):  # held while the run lasts
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    assert pl.remove_stale_pools(tmp_path) == [] and d.path.is_dir()  # a live run's pool is never removed
    d.cleanup()
    d.cleanup()
    assert not d.path.exists()


def test_stale_pools_are_removed_and_live_or_unknown_ones_kept(tmp_path):
    import json

    killed_p, killed = _pool_of_a_process(tmp_path, "kill")  # SIGKILL / OOM: no clean-up ran
    assert killed_p.returncode == -9 and (killed / "t2i-candidates.npy").is_file()
    live_p, live = _pool_of_a_process(tmp_path, "live")
    try:
        # pid reused: a live process of that pid, but the lock is free
        reused = tmp_path / "pool-reused"
        reused.mkdir()
        (reused / "owner.lock").touch()
        owner = json.loads((live / "owner.json").read_text())
        (reused / "owner.json").write_text(json.dumps({**owner, "pid": os.getppid()}))
        # another host sharing $MRBENCH_HOME: cannot tell, kept (even with its lock free here)
        other = tmp_path / "pool-otherhost-1-x"
        other.mkdir()
        (other / "owner.lock").touch()
        (other / "owner.json").write_text(json.dumps({**owner, "host": "some-other-host"}))
        # an older mrbench's TemporaryDirectory, or one being set up: no owner.json, kept
        legacy = tmp_path / "pool-abc123"
        legacy.mkdir()
        # a file system without locks: the pid decides (a dead one here), if in our pid namespace
        nolock = tmp_path / "pool-nolock"
        nolock.mkdir()
        (nolock / "owner.json").write_text(json.dumps({**owner, "pid": killed_p.pid, "locked": None}))
        nolock_live = tmp_path / "pool-nolock-live"
        nolock_live.mkdir()
        (nolock_live / "owner.json").write_text(json.dumps({**owner, "pid": live_p.pid, "locked": None}))
        other_ns = tmp_path / "pool-nolock-otherns"
        other_ns.mkdir()
        (other_ns / "owner.json").write_text(json.dumps({**owner, "pid": killed_p.pid, "locked": None,
                                                          "pid_ns": "pid:[1]"}))
        unrelated = tmp_path / "keep-me"
        unrelated.mkdir()

        gone = pl.remove_stale_pools(tmp_path)
        assert sorted(gone) == sorted([killed, reused, nolock])
        for d in (killed, reused, nolock):
            assert not d.exists()
        for d in (live, other, legacy, nolock_live, other_ns, unrelated):
            assert d.is_dir(), d
        assert (live / "t2i-candidates.npy").is_file()
    finally:
        live_p.stdin.close()
        live_p.wait(timeout=60)
    assert not live.exists()  # its owner ended normally: its finaliser removed it


def test_a_streamed_run_removes_pools_left_by_killed_runs(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MRBENCH_HOME", str(home))
    (home / "tmp").mkdir(parents=True)
    _, killed = _pool_of_a_process(home / "tmp", "kill")
    assert killed.is_dir()
    logged = []

    class Log(pl.NullReporter):
        def log(self, message):
            logged.append(message)

    res = pl.evaluate(TINY, "random", tasks=["t2i"], cache=False, stream_pool=True, grain_sensitivity=False,
                      progress=Log())
    assert res.data["settings"]["stream_pool"] is True
    assert not killed.exists() and list((home / "tmp").iterdir()) == []  # its own removed too
    assert any("removed 1 memory-mapped pool directory" in m for m in logged), logged


def test_a_failing_streamed_run_removes_its_pool_at_once(tmp_path, monkeypatch):
    from mrbench.encoders.builtin import RandomEncoder

    monkeypatch.setenv("MRBENCH_HOME", str(tmp_path / "home"))
    seen = []
    orig = RandomEncoder.encode

    def fail_on_candidates(self, items, *, role, task):
        if role == "candidate":
            seen.extend((tmp_path / "home" / "tmp").glob("pool-*"))
            raise KeyboardInterrupt
        return orig(self, items, role=role, task=task)

    monkeypatch.setattr(RandomEncoder, "encode", fail_on_candidates)
    with pytest.raises(KeyboardInterrupt):
        pl.evaluate(TINY, "random", tasks=["t2i"], cache=False, stream_pool=True, grain_sensitivity=False)
    assert len(seen) == 1 and not seen[0].exists()


SLOW_ENCODER = '''
import time
from mrbench.encoders.builtin import RandomEncoder


class Slow(RandomEncoder):
    def encode(self, items, *, role, task):
        if role == "candidate":
            time.sleep(0.5)
        return super().encode(items, role=role, task=task)
'''


def test_sigterm_stops_evaluate_like_ctrl_c_and_removes_the_pool(tmp_path):
    """kill (SIGTERM) during a --stream-pool run: 'interrupted:' with the resume hint, exit 130, no
    pool file left behind (the default action left the pool-sized file forever)."""

    enc = tmp_path / "slow_enc.py"
    enc.write_text(SLOW_ENCODER)
    home = tmp_path / "home"
    env = {**os.environ, "MRBENCH_HOME": str(home)}
    env.pop("WORLD_SIZE", None)
    from mrbench.data.registry import load_benchmark

    bench = load_benchmark(TINY)
    p = subprocess.Popen([sys.executable, "-m", "mrbench", "evaluate", "-b", str(bench.root), "-e", f"{enc}:Slow",
                          "--tasks", "t2i", "--no-cache", "--no-sensitivity", "--stream-pool", "--batch-size", "4", "-q",
                          "-o", str(tmp_path / "out")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = sigterm_when(p, lambda: bool(list((home / "tmp").glob("pool-*"))), settle=0.3)
    assert p.returncode == 130, (p.returncode, err)
    assert err.strip().splitlines()[-1].startswith("interrupted: "), err
    assert "Traceback" not in err
    assert list((home / "tmp").glob("pool-*")) == []
    assert not (tmp_path / "out").exists()
