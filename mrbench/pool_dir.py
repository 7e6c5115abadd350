"""Scratch directories of ``stream_pool`` runs (:class:`PoolDir`) that name their owner, so that
the next streamed run can remove those of runs killed before they cleaned up
(:func:`remove_stale_pools`)."""

from __future__ import annotations

import os
from pathlib import Path

def _host() -> str:
    import socket

    return socket.gethostname() or "localhost"


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


class PoolDir:
    """The directory of one ``stream_pool`` run's memory-mapped pools under ``parent``
    (``$MRBENCH_HOME/tmp``): ``pool-<host>-<pid>-<random>`` holding ``owner.json`` (host, pid, pid
    namespace) and ``owner.lock``, which this process holds with ``fcntl.flock`` until
    :meth:`cleanup` (also run by a finaliser at exit). A run killed before it cleans up leaves the
    directory with the lock released: :func:`remove_stale_pools` removes it."""

    def __init__(self, parent: Path) -> None:
        import json
        import re
        import tempfile
        import weakref

        host = _host()
        self.path = Path(tempfile.mkdtemp(prefix=f"pool-{re.sub(r'[^A-Za-z0-9.]+', '_', host)[:48]}-{os.getpid()}-",
                                          dir=parent))
        fd = os.open(self.path / "owner.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        locked = _try_lock(fd)
        # written once the lock is held: a directory without owner.json is never judged stale
        owner = {"host": host, "pid": os.getpid(), "pid_ns": _pid_namespace(), "locked": locked}
        part = self.path / ".owner.json.part"
        part.write_text(json.dumps(owner), encoding="utf-8")
        os.replace(part, self.path / "owner.json")
        self._finalizer = weakref.finalize(self, _remove_pool_dir, self.path, fd)

    def cleanup(self) -> None:
        """Remove the directory and release the lock (once; later calls do nothing)."""
        self._finalizer()


def _try_lock(fd: int) -> bool | None:
    """``True``: ``fd``'s file is now locked by us; ``False``: another process holds it; ``None``: this
    file system has no locks."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None


def _remove_pool_dir(path: Path, fd: int | None) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    if fd is not None:
        os.close(fd)  # the lock held until the files are gone


def _pool_owner_gone(d: Path) -> bool:
    """Whether the ``stream_pool`` run that made ``d`` has ended, as far as can be told: only for a
    directory made on this host (and pid namespace) whose owner's lock is free, or, on a file system
    without locks, whose owner's pid is gone. Anything else (another host sharing ``$MRBENCH_HOME``,
    a directory being set up, one of an older mrbench without ``owner.json``) is left alone."""
    import json

    try:
        owner = json.loads((d / "owner.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not isinstance(owner, dict) or owner.get("host") != _host():
        return False
    pid = owner.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    if owner.get("locked"):
        try:
            fd = os.open(d / "owner.lock", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return _try_lock(fd) is True  # (closing fd releases it)
        finally:
            os.close(fd)
    if owner.get("pid_ns") != _pid_namespace():
        return False  # another container's pid: cannot tell from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive (another user's process), or unknown
    return False


def remove_stale_pools(tmp_root: Path) -> list[Path]:
    """Remove the ``pool-*`` directories under ``tmp_root`` whose ``stream_pool`` run has ended (see
    :func:`_pool_owner_gone`); returns those removed."""
    gone = []
    try:
        dirs = sorted(p for p in Path(tmp_root).glob("pool-*") if p.is_dir() and not p.is_symlink())
    except OSError:
        return gone
    for d in dirs:
        if _pool_owner_gone(d):
            _remove_pool_dir(d, None)
            if not d.exists():
                gone.append(d)
    return gone
