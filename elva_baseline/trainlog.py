"""The training log: one JSON object per line (``train_log.jsonl``), and its plot.

Every record has ``stage`` (``"warmup"`` or ``"rl"``), ``step`` (1-based within the stage),
``global_step`` and ``time`` (seconds since the run started, resumed runs continue the clock);
training records carry the losses and rewards of that step, evaluation records carry
``"eval": {"hit@1": ..., "hit@5": ..., "hit@5_3plus": ...}`` (held-out queries).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence


LOG_FILE = "train_log.jsonl"
"""The training log's name in a run directory."""


class TrainLog:
    """Append-only JSONL writer (each line flushed, so a crash loses nothing already logged)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(_finite(record), sort_keys=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> TrainLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finite(obj: Any) -> Any:
    """NaN/Inf become strings (JSON has no NaN); everything else unchanged."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a training log; a line that is not JSON is an error naming its line number
    (a truncated last line, from a crash mid-write, is skipped)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(not_a_log(p, "a directory that holds no train_log.jsonl"))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(not_a_log(p, "not a text file")) from None
    except OSError as e:
        raise ValueError(f"{p}: cannot read the training log ({e.strerror or e})") from None
    try:
        whole = json.loads(text)  # one JSON document (config.json, summary.json…), not one record per line
    except ValueError:
        pass
    else:
        if not (isinstance(whole, dict) and "stage" in whole):  # a log of one record parses whole too
            raise ValueError(not_a_log(p, "a JSON file, not a log of one JSON record per line"))
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines):
                break
            raise ValueError(f"{p}:{i}: not a JSON object; the log is damaged") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{p}:{i}: not a JSON object; the log is damaged")
        out.append(rec)
    return out


def not_a_log(path: str | Path, what: str) -> str:
    """One line saying that ``path`` (``what`` it is) is not a training log and what to pass instead."""
    p = Path(path)
    run = next((d for d in (p.parent, p.parent.parent) if (d / LOG_FILE).is_file() and d != p), None)
    where = f" ({run} or {run / LOG_FILE})" if run is not None else ""
    return f"{p} is not a training log ({what}); pass an elva-train run directory or its {LOG_FILE}{where}"


def rewind_log(path: str | Path, stages: Sequence[str], stage: str, step: int) -> int:
    """Cut the training log back to a checkpoint at ``(stage, step)`` before a resumed run appends to
    it, so that the updates redone after the checkpoint are logged once; returns how many records
    were dropped.

    Records are ordered by (stage in ``stages``, ``step``, training record before evaluation record).
    Kept: every record before the checkpoint and, when ``step`` > 0, the training and evaluation
    records of ``step`` itself (written before its checkpoint); a checkpoint at step 0 is the stage's
    start, so that stage's step-0 evaluation is dropped (the resumed stage writes it again). Records
    a past resume left twice (logs of earlier versions) are healed the same way: a record that goes
    back in this order supersedes those at or after its position. A line that is not JSON (a record
    cut short by a crash) is dropped. The log is rewritten atomically (a temporary file renamed over
    it), and only when something is dropped; a missing log is nothing to rewind.
    """
    from mrbench.data.io import atomic_write_text

    p = Path(path)
    if not p.exists():
        return 0
    order = {name: i for i, name in enumerate(stages)}
    if stage not in order:
        raise ValueError(f"{p}: cannot rewind to stage {stage!r}, which is not one of {', '.join(stages)}")
    cut = (order[stage], step, 2) if step > 0 else (order[stage], 0, 0)
    recs = read_log(p)  # raises ValueError naming a damaged line
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as e:  # pragma: no cover - read_log read it a moment ago
        raise ValueError(f"{p}: cannot read the training log ({e.strerror or e})") from None
    kept: list[tuple[tuple[int, int, int], str]] = []
    pos = (-1, 0, 0)
    for rec, line in zip(recs, lines):  # read_log drops only a last line that is not JSON
        st, sp = rec.get("stage"), rec.get("step")
        known = st in order and isinstance(sp, int) and not isinstance(sp, bool)
        if known:
            pos = (order[st], sp, 1 if "eval" in rec else 0)
            while kept and kept[-1][0] >= pos:  # a resume redid these: the later record supersedes them
                kept.pop()
        kept.append((pos, line))  # a record without a known position goes with the one before it
    kept = [(q, ln) for q, ln in kept if q < cut]
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write_text(p, "".join(ln + "\n" for _, ln in kept))
    return dropped


PLOT_EXCLUDED = frozenset({"pgf", "raw", "rgba"})
"""Formats matplotlib saves that ``plot_log`` refuses: ``pgf`` needs a LaTeX installation, ``raw`` and
``rgba`` are headerless pixel buffers (no viewer opens them; ``.raw`` is as likely someone's data)."""


def plot_format(output: str | Path) -> str:
    """The image format of ``output``, from its suffix: one matplotlib saves (``png``, ``pdf``, ``svg``,
    ``eps``, ``jpg``…, less :data:`PLOT_EXCLUDED`). Anything else — a ``.jsonl`` log, a ``.json``, no
    suffix — and an existing directory are refused with one-line :class:`ValueError` naming ``output``,
    so that a plot is never written over a file that is not an image."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(output)
    formats = sorted(set(FigureCanvasBase.get_supported_filetypes()) - PLOT_EXCLUDED)
    shown = ", ".join("." + f for f in formats)
    if out.is_dir():
        raise ValueError(f"--output {out}: is a directory; name the image file to write, e.g. {out / 'curves.png'}")
    fmt = out.suffix[1:].lower()
    if fmt not in formats:
        what = f"the suffix {out.suffix!r} is not an image format" if out.suffix else "no suffix to tell the image format"
        raise ValueError(f"--output {out}: {what}; name a file ending in one of {shown}")
    return fmt


def plot_log(path: str | Path, output: str | Path) -> Path:
    """Reward and loss curves of a training log as an image, its format from ``output``'s suffix
    (:func:`plot_format`): warmup loss, RL reward (mean ± std over rollouts), RL loss and KL, and
    held-out hit@k at each evaluation. Written atomically (a temporary file beside ``output``, renamed
    over it; through a symbolic link, its target is replaced and the link kept); a failed write is a
    one-line :class:`ValueError` naming ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmt = plot_format(output)  # before reading the log: nothing is done for an output that would be refused
    recs = read_log(path)
    train = [r for r in recs if "eval" not in r]
    evals = [r for r in recs if "eval" in r]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0][0]
    w = [r for r in train if r.get("stage") == "warmup" and isinstance(r.get("loss"), (int, float))]
    if w:
        ax.plot([r["global_step"] for r in w], [r["loss"] for r in w], lw=1)
    else:
        _empty(ax, "no warmup stage in this log")
    ax.set_title("warmup: InfoNCE loss")
    ax.set_xlabel("update")
    ax = axes[0][1]
    rl = [r for r in train if r.get("stage") == "rl"]
    if rl:
        xs = [r["global_step"] for r in rl]
        mean = [r.get("reward_mean", math.nan) for r in rl]
        std = [r.get("reward_std", 0.0) for r in rl]
        ax.plot(xs, mean, lw=1, label="mean reward")
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.25)
        ax.legend(loc="best")
    else:
        _empty(ax, "no RL stage in this log")
    ax.set_title("RL: reward over rollouts")
    ax.set_xlabel("update")
    ax = axes[1][0]
    if rl:
        # the loss is about β·KL (group-normalised advantages average 0), so on their own axes the two
        # curves coincide: solid vs dashed on top, and the legend says why
        ax.plot([r["global_step"] for r in rl], [r.get("loss", math.nan) for r in rl], lw=2.5, color="tab:blue",
                alpha=0.6, label="RL loss (left axis; ≈ β·KL, so it follows the KL curve)")
        ax.set_ylabel("RL loss")
        ax2 = ax.twinx()
        ax2.plot([r["global_step"] for r in rl], [r.get("kl", math.nan) for r in rl], lw=1, ls="--", color="tab:red",
                 label="KL (right axis)")
        ax2.set_ylabel("KL to reference")
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right")
    else:
        _empty(ax, "no RL stage in this log")
    ax.set_title("RL: loss and KL")
    ax.set_xlabel("update")
    ax = axes[1][1]
    keys = sorted({k for r in evals for k in r["eval"] if isinstance(r["eval"][k], (int, float)) and not k.startswith("n_")})
    for k in keys:
        ax.plot([r["global_step"] for r in evals], [r["eval"].get(k, math.nan) for r in evals], marker="o", lw=1, label=k)
    if keys:
        ax.legend(loc="best")
    else:
        _empty(ax, "no evaluation in this log")
    ax.set_title("held-out retrieval")
    ax.set_xlabel("update")
    for st in ("warmup",):
        ends = [r["global_step"] for r in train if r.get("stage") == st]
        if ends and rl:
            for a in axes.flat:
                a.axvline(max(ends), color="grey", ls=":", lw=1)
    fig.tight_layout()
    from mrbench.data.io import sibling_path
    from mrbench.errors import write_failure

    out = Path(output)
    dest = Path(os.path.realpath(out)) if out.is_symlink() else out
    tmp = sibling_path(dest, "{hex}.tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=110, format=fmt)
        os.replace(tmp, dest)
    except OSError as e:
        why = write_failure(e)
        raise ValueError(f"--output {out}: cannot write the plot ({why}); choose another path") from None
    finally:
        plt.close(fig)
        with contextlib.suppress(OSError):  # nothing there (ENOENT), or no directory to hold it (ENOTDIR)
            tmp.unlink()
    return out


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])
