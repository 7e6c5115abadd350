"""contrastive vs ELVA (dual regime) over seeds, with equal numbers of updates, on MRBench-Synth.

For each seed: ``contrastive`` = the warmup stage alone for ``warmup + rl`` updates; ``elva`` = the same
warmup for ``warmup`` updates, then ``rl`` GRPO updates. Both are evaluated on MRBench-Synth's test split
(hit@1/hit@5 macro and on queries with ≥ 3 grains, and the drop-one-grain distance 1 − cos). Prints a
mean ± std table and writes the per-run numbers as JSON.

    python benchmarks/elva_seeds.py --seeds 0,1,2 --out benchmarks/results/elva_seeds.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def run(seed: int, variant: str, root: Path, warmup: int, rl: int, extra: list[str]) -> dict:
    import mrbench
    from elva_baseline.config import TrainConfig
    from elva_baseline.trainer import train

    sets = [f"seed={seed}", f"warmup.steps={warmup + rl if variant == 'contrastive' else warmup}", f"rl.steps={rl}",
            'stages=["warmup"]' if variant == "contrastive" else 'stages=["warmup", "rl"]'] + extra
    cfg = TrainConfig().with_overrides(sets)
    out = root / f"{variant}-{seed}"
    t0 = time.perf_counter()
    summary = train(cfg, out, progress=False, overwrite=True)
    train_s = time.perf_counter() - t0
    res = mrbench.evaluate("mrbench-synth", f"elva:{out / 'final'}", cache=False)
    macro = res.scores["macro"]
    df = res.to_pandas("query")
    many = df[df["n_grains"] >= 3]
    sens = res.to_pandas("sensitivity")
    dist = float(sens["mask_distance"].mean()) if sens is not None and len(sens) else float("nan")
    return {"seed": seed, "variant": variant, "train_seconds": round(train_s, 1), "updates": summary["updates"],
            "hit@1": macro["hit@1"], "hit@5": macro["hit@5"],
            "hit@5_3plus": float(many["hit@5"].mean()), "hit@1_3plus": float(many["hit@1"].mean()),
            "drop_distance": dist, "per_task_hit@5": {str(t): float(v) for t, v in res.to_pandas("task")["hit@5"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--rl", type=int, default=100)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for both variants")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for variant in ("contrastive", "elva"):
                rows.append(run(seed, variant, Path(d), args.warmup, args.rl, args.set))
                r = rows[-1]
                print(f"seed {seed} {variant:<12} hit@5 {r['hit@5']:.3f}  hit@5(≥3) {r['hit@5_3plus']:.3f}  "
                      f"drop 1−cos {r['drop_distance']:.4f}  ({r['train_seconds']:.0f} s)", flush=True)
    print()
    for variant in ("contrastive", "elva"):
        rs = [r for r in rows if r["variant"] == variant]
        line = []
        for k in ("hit@1", "hit@5", "hit@1_3plus", "hit@5_3plus", "drop_distance"):
            v = [r[k] for r in rs]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            line.append(f"{k} {statistics.mean(v):.3f}±{sd:.3f}")
        print(f"{variant:<12} " + "  ".join(line))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                        "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
