"""Memory available to this process: the system's, its memory cgroups' and ``RLIMIT_AS``'s room
(:func:`available_memory`), for refusing an in-memory candidate pool that would not fit."""

from __future__ import annotations

import os
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where the cgroup file systems are mounted (v2 unified: ``memory.max`` / ``memory.current`` there
and in each nested group; v1: ``memory/`` below it), read by :func:`available_memory`."""
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def available_memory() -> int | None:
    """Bytes of memory available to new allocations in this process (``None`` if unknown): the
    smallest of the system's (Linux ``MemAvailable``, else the free pages), the room its memory
    cgroup and each parent group leave (v2 ``memory.max`` − ``memory.current``, v1
    ``memory.limit_in_bytes`` − ``memory.usage_in_bytes``; ``max`` is no limit; the inactive page
    cache in ``memory.stat``, which the kernel reclaims first, is not counted as used) and the room
    ``RLIMIT_AS`` leaves above the process's current address space."""
    found = [v for v in (_system_available(), _cgroup_available(), _rlimit_available()) if v is not None]
    return max(0, min(found)) if found else None


def _system_available() -> int | None:
    try:
        with open(MEMINFO, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _read_int(path: Path) -> int | None:
    """An integer file (``None``: missing, unreadable, or ``max``)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return int(text)
    except ValueError:
        return None  # "max" (v2: no limit), or something unexpected: no limit known


def _stat_value(path: Path, key: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return 0


def _group_dirs(top: Path, rel: str | None) -> list[Path]:
    """``top/rel`` and every parent up to ``top`` (``top`` alone when the group is not found there:
    a cgroup namespace shows the process's own group as the mount's root)."""
    if rel:
        d = top / rel.lstrip("/")
        if d.is_dir() and d != top:
            return [d, *[p for p in d.parents if p == top or top in p.parents]]
    return [top]


def _cgroup_available() -> int | None:
    """The least room any memory cgroup above this process leaves (``None``: no limit found)."""
    v2_rel = v1_rel = None
    try:
        for line in PROC_SELF_CGROUP.read_text(encoding="utf-8").splitlines():
            hid, _, rest = line.partition(":")
            controllers, _, rel = rest.partition(":")
            if hid == "0" and controllers == "":
                v2_rel = rel
            elif "memory" in controllers.split(","):
                v1_rel = rel
    except OSError:
        pass
    rooms = []
    for d in _group_dirs(CGROUP_ROOT, v2_rel):
        limit = _read_int(d / "memory.max")
        if limit is not None:
            used = max(0, (_read_int(d / "memory.current") or 0) - _stat_value(d / "memory.stat", "inactive_file"))
            rooms.append(limit - used)
    v1 = CGROUP_ROOT / "memory"
    for d in _group_dirs(v1, v1_rel) if v1.is_dir() else []:
        limit = _read_int(d / "memory.limit_in_bytes")
        if limit is not None and limit < 2**62:  # v1 writes "no limit" as about 2**63
            used = max(0, (_read_int(d / "memory.usage_in_bytes") or 0)
                       - _stat_value(d / "memory.stat", "total_inactive_file"))
            rooms.append(limit - used)
    return min(rooms) if rooms else None


def _rlimit_available() -> int | None:
    """``RLIMIT_AS`` minus the current address space (``None``: no such limit)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY or soft < 0:
            return None
    except (ImportError, OSError, ValueError, AttributeError):
        return None
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            used = int(f.read().split()[0]) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError, AttributeError):
        used = 0
    return int(soft) - used
