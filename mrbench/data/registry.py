"""Built-in benchmark names and :func:`load_benchmark`.

Built-in benchmarks are generated on first use into ``$MRBENCH_HOME/benchmarks`` (default
``~/.cache/mrbench/benchmarks``) and loaded from there afterwards; the build is deterministic, so
every machine gets the same fingerprint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from mrbench.data.schema import Benchmark
from mrbench.errors import UnknownNameError, did_you_mean


@dataclass(frozen=True)
class BuiltinBenchmark:
    name: str
    description: str
    size: str
    split: str
    seed: int = 0


BUILTIN_BENCHMARKS: dict[str, BuiltinBenchmark] = {
    b.name: b
    for b in (
        BuiltinBenchmark("mrbench-synth", "MRBench-Synth test split, ~1k multi-grain queries over 4 tasks (the default)", "default", "test"),
        BuiltinBenchmark("mrbench-synth-train", "MRBench-Synth training split (disjoint scenes) for trainers", "default", "train"),
        BuiltinBenchmark("mrbench-synth-tiny", "a tiny MRBench-Synth (a few queries per task) for tests and smoke runs", "tiny", "test"),
        BuiltinBenchmark("mrbench-synth-tiny-train", "training split of the tiny MRBench-Synth", "tiny", "train"),
    )
}


def mrbench_home() -> Path:
    """Root of mrbench's local data: ``$MRBENCH_HOME`` or ``~/.cache/mrbench``."""
    return Path(os.environ.get("MRBENCH_HOME") or Path.home() / ".cache" / "mrbench")


def builtin_dir(name: str) -> Path:
    """Where a built-in benchmark lives once built (the name changes with the generator and with the
    fingerprint algorithm, so an upgrade never reads a stale build). It does not change with the
    recorded benchmark name: a build that records another name (earlier versions wrote
    ``mrbench-synth`` for every built-in) is rebuilt on load instead, see ``_load_builtin``."""
    import hashlib

    from mrbench.builders.synth import GENERATOR_VERSION
    from mrbench.data.fingerprint import FINGERPRINT_ALGO

    b = BUILTIN_BENCHMARKS[name]
    algo = hashlib.sha256(FINGERPRINT_ALGO.encode()).hexdigest()[:6]
    return mrbench_home() / "benchmarks" / f"{b.name}-g{GENERATOR_VERSION}-f{algo}-seed{b.seed}"


def _load_builtin(name: str, verify: bool, progress: Callable[[str, int, int], None] | None,
                  log: Callable[[str], None] | None = None, tasks: Sequence[str] | None = None) -> Benchmark:
    """Load a built-in benchmark, building it on first use; a damaged build is rebuilt once, and so is
    a build that records another name than ``name`` (older versions named every built-in
    ``mrbench-synth``): a built-in is never served under another built-in's name. The name is not
    part of the fingerprint, so the rebuild gives the same fingerprint."""
    import logging

    from filelock import FileLock

    from mrbench.builders.synth import build_synth
    from mrbench.data.io import load_benchmark_dir
    from mrbench.errors import BenchmarkError

    d = builtin_dir(name)
    b = BUILTIN_BENCHMARKS[name]
    d.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d) + ".lock"):
        if (d / "manifest.json").is_file():
            try:
                bench = load_benchmark_dir(d, verify=verify, log=log, tasks=tasks)
            except BenchmarkError as e:  # (an unknown task name is no BenchmarkError: raised as it is)
                logging.getLogger("mrbench").warning("built-in %s at %s is damaged (%s); rebuilding it", name, d, e)
            else:
                if bench.name == b.name:
                    return bench
                logging.getLogger("mrbench").warning("built-in %s at %s records the name %r (an older mrbench built it); "
                                                     "rebuilding it", name, d, bench.name)
        build_synth(d, size=b.size, seed=b.seed, split=b.split, overwrite=True, progress=progress, name=b.name)
        return load_benchmark_dir(d, verify=verify, log=log, tasks=tasks)


def load_benchmark(
    name_or_path: str | Path,
    *,
    verify: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    tasks: Sequence[str] | None = None,
) -> Benchmark:
    """Load a benchmark from a directory or by built-in name (building it on first use).

    ``progress(stage, done, total)`` follows a first-use build; ``log(message)`` gets one line
    before a long fingerprint check (the first load of a directory, or after its files changed).
    ``tasks`` loads only those tasks (see :func:`mrbench.data.io.load_benchmark_dir`).

    Raises :class:`~mrbench.errors.UnknownNameError` for a name that is neither a directory nor a
    built-in benchmark, and :class:`~mrbench.errors.BenchmarkError` for a broken directory.
    """
    from mrbench.data.io import load_benchmark_dir

    p = Path(name_or_path)
    s = str(name_or_path)
    choices = f"pass a benchmark directory or one of {', '.join(BUILTIN_BENCHMARKS)} (see 'mrbench benchmarks')"
    if not s.strip():
        raise UnknownNameError(f"no benchmark named (an empty name); {choices}")
    if s in BUILTIN_BENCHMARKS and not p.exists():
        return _load_builtin(s, verify=verify, progress=progress, log=log, tasks=tasks)
    if p.is_dir():
        if _is_parquet_export(p):
            return _load_parquet_export(p, verify=verify, log=log, tasks=tasks)
        return load_benchmark_dir(p, verify=verify, log=log, tasks=tasks)
    if p.exists():
        raise UnknownNameError(f"{s}: a file, not a benchmark directory; {choices}")
    if any(c in s for c in "/\\") or s.startswith(("~", ".")):
        raise UnknownNameError(f"{s}: no such directory; {choices}")
    hint = did_you_mean(s, list(BUILTIN_BENCHMARKS))
    raise UnknownNameError(f"unknown benchmark {s!r}{hint}: {choices}")


def _is_parquet_export(p: Path) -> bool:
    import json

    try:
        return json.loads((p / "manifest.json").read_text(encoding="utf-8")).get("format") == "parquet"
    except (OSError, ValueError, AttributeError):
        return False


def _load_parquet_export(p: Path, verify: bool, log: Callable[[str], None] | None = None,
                         tasks: Sequence[str] | None = None) -> Benchmark:
    """Materialise a Parquet export under ``$MRBENCH_HOME/imported/<fingerprint>-<files>`` and load it.

    The import is keyed by the manifest's fingerprint *and* the export's files (relative path, size,
    mtime of each): an export edited since (or another export claiming the same fingerprint) is
    imported, and so checked against its fingerprint, again instead of loading a stale import. An
    export whose manifest records no fingerprint is refused (nothing to check its content against).
    """
    import hashlib
    import json

    from filelock import FileLock

    from mrbench.data.io import load_benchmark_dir
    from mrbench.data.parquet import import_parquet
    from mrbench.errors import BenchmarkError

    fp = json.loads((p / "manifest.json").read_text(encoding="utf-8")).get("fingerprint")
    if not isinstance(fp, str) or not fp.startswith("sha256:"):
        raise BenchmarkError(f"{p / 'manifest.json'}: records no fingerprint, so the export cannot be checked; "
                             "export the benchmark again with 'mrbench export'")
    files = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        st = f.stat()
        files.update(f"{f.relative_to(p).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    d = mrbench_home() / "imported" / f"{fp.removeprefix('sha256:')[:16]}-{files.hexdigest()[:12]}"
    d.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d) + ".lock"):
        if not (d / "manifest.json").is_file():
            import_parquet(p, d, overwrite=True)
    return load_benchmark_dir(d, verify=verify, log=log, tasks=tasks)
