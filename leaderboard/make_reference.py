"""Rebuild the reference entries of ``leaderboard/leaderboard.json`` with the toolkit itself.

Each reference encoder is evaluated on the default MRBench-Synth (test split) and submitted through
the normal, verified path (``mrbench submit --replace``); the entry records the two commands that
reproduce it. ``tests/test_leaderboard_reference.py`` re-runs ``random`` and checks its pinned scores.

Usage (from the repository root)::

    python leaderboard/make_reference.py                 # all reference encoders
    python leaderboard/make_reference.py --only random   # one
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> (training, notes)
REFERENCE: dict[str, tuple[str, str]] = {
    "random": ("zero-shot", "Floor: a Gaussian vector per item from its content hash; no model."),
    "constant": ("zero-shot", "Floor: the same vector for every item, so every candidate ties and pessimistic ranks put the relevant ones last."),
    "minilm": ("zero-shot", "Blind text-only baseline (all-MiniLM-L6-v2): an item without text is encoded as the empty string; it never sees an image."),
    "contrastive-tiny": ("train-split", "Bundled reference: a tiny dual encoder trained with InfoNCE for 400 updates on MRBench-Synth's train split."),
    "elva-tiny": ("train-split", "Bundled reference: the same InfoNCE warmup for 300 updates, then 100 ELVA GRPO updates with the rule-based rewards."),
}


def parameters(name: str) -> int | None:
    """Number of parameters of a reference encoder's torch modules (``None`` when it has none)."""
    import torch

    from mrbench.encoders.registry import get_encoder

    enc = get_encoder(name)
    mods = [v for v in vars(enc).values() if isinstance(v, torch.nn.Module)]
    return sum(p.numel() for m in mods for p in m.parameters()) if mods else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leaderboard", type=Path, default=HERE / "leaderboard.json")
    ap.add_argument("--only", default=",".join(REFERENCE), help="comma-separated subset of: " + ", ".join(REFERENCE))
    ap.add_argument("--work", type=Path, default=None, help="where the results directories go (default: a temp dir)")
    args = ap.parse_args(argv)

    from mrbench import evaluate
    from mrbench.leaderboard.store import add_benchmark, submit

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in REFERENCE]
    if unknown:
        print(f"error: unknown reference encoder(s) {unknown}; choose from {', '.join(REFERENCE)}", file=sys.stderr)
        return 2
    rec, _ = add_benchmark(args.leaderboard, "mrbench-synth")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in names:
            training, notes = REFERENCE[name]
            out = work / f"results-{name}"
            t0 = time.perf_counter()
            evaluate("mrbench-synth", name, output=out, overwrite=True)
            cmd = (f"mrbench evaluate -e {name} -o results-{name} && mrbench submit results-{name} --replace "
                   f"--training {training}")
            res = submit(out, args.leaderboard, replace=True, training=training, parameters=parameters(name),
                         command=cmd, notes=notes)
            print(f"{res.entry['id']}: hit@5 {res.entry['scores']['macro']['hit@5']:.4f} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"{args.leaderboard}: {rec['name']} v{rec['version']} ({rec['fingerprint']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
