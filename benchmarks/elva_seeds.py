"""Contrastive vs ELVA vs attribution baselines and ablations (dual regime), over seeds, on MRBench-Synth.

Per seed, one shared warmup (InfoNCE for ``--warmup`` updates on ``mrbench-synth-train``); then every
variant starts from that checkpoint and makes ``--rl`` more updates, so all variants see the same
number of updates:

* ``warmup``       — the shared warmup checkpoint itself (no further updates: where every variant starts);
* ``contrastive``  — InfoNCE for ``--warmup + --rl`` updates from scratch (the ``contrastive-tiny`` recipe;
  its first ``--warmup`` updates are the shared warmup: same seed, same batches);
* ``elva``         — GRPO with the rule rewards (the ``elva-tiny`` recipe);
* ``surrogate``    — the same expected reward maximised by its pathwise gradient (same negatives, same KL);
* ``hardneg``      — InfoNCE over the positive and the same mined negatives;
* ``no-ranking``, ``no-margin``, ``no-neg-order``, ``hard-only`` (top-100 hard), ``no-random`` — the
  paper's ablations of ``elva``.

Every run is evaluated on MRBench-Synth's test split: hit@1/hit@5 macro, per task, per grain count
(pooled over tasks), and the drop-one-grain distance 1 − cos. Prints a mean ± std table, writes every
run's numbers as JSON and, with ``--markdown``, the tables as Markdown.

    python benchmarks/elva_seeds.py --seeds 0,1,2 --out benchmarks/results/elva_seeds.json \\
        --markdown benchmarks/results/elva_seeds.md

Extra variants for tuning: ``--define NAME:key=value,key=value`` (RL-stage overrides, e.g.
``--define g32:rl.group_size=32,rl.sigma=0.05``) and ``--variants contrastive,elva,g32``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS: dict[str, list[str]] = {
    "contrastive": ['stages=["warmup"]'],
    "elva": [],
    "surrogate": ["rl.objective=surrogate"],
    "hardneg": ["rl.objective=hardneg"],
    "no-ranking": ["reward.use_ranking=false"],
    "no-margin": ["reward.use_margin=false"],
    "no-neg-order": ["reward.use_neg_order=false"],
    "hard-only": ["sampling.mode=hard_only"],
    "no-random": ["sampling.mode=no_random"],
}
"""RL-stage overrides per variant (``contrastive`` runs the warmup stage again instead)."""

METRICS = ("hit@1", "hit@5", "hit@1_3plus", "hit@5_3plus", "drop_distance")


def train_warmup(seed: int, root: Path, steps: int, extra: list[str]) -> tuple[Path, float]:
    from elva_baseline.config import TrainConfig
    from elva_baseline.trainer import train

    cfg = TrainConfig().with_overrides([f"seed={seed}", f"warmup.steps={steps}", 'stages=["warmup"]', *extra])
    t0 = time.perf_counter()
    train(cfg, root / f"warmup-{seed}", progress=False, overwrite=True)
    return root / f"warmup-{seed}" / "final", time.perf_counter() - t0


def variant_overrides(variant: str, seed: int, init: Path, warmup: int, rl: int,
                      defined: dict[str, list[str]]) -> list[str]:
    """The config overrides of one variant: from the warmup checkpoint ``init`` (RL variants), or from
    scratch for ``warmup + rl`` InfoNCE updates (``contrastive``)."""
    own = defined.get(variant, VARIANTS.get(variant))
    if own is None:
        raise SystemExit(f"unknown variant {variant!r}; known: {', '.join([*VARIANTS, *defined])}")
    if variant == "contrastive":
        return [f"seed={seed}", f"warmup.steps={warmup + rl}", *own]
    return [f"seed={seed}", f"model.init={json.dumps(str(init))}", f"rl.steps={rl}", 'stages=["rl"]', *own]


def evaluate(final: Path) -> dict[str, Any]:
    """hit@k macro / per task / per grain count and the drop-one-grain distance on MRBench-Synth test."""
    import mrbench
    from elva_baseline.bundled import synth_scores

    res = mrbench.evaluate("mrbench-synth", f"elva:{final}", cache=False)
    df = res.to_pandas("query")
    tasks = res.to_pandas("task")
    by_count = df.assign(g=df["n_grains"].clip(upper=5)).groupby("g")
    return {
        **synth_scores(res),
        "per_task": {str(t): {"hit@1": float(r["hit@1"]), "hit@5": float(r["hit@5"])} for t, r in tasks.iterrows()},
        "per_grain_count": {f"{int(g)}{'+' if int(g) == 5 else ''}": {"hit@1": float(x["hit@1"].mean()),
                                                                      "hit@5": float(x["hit@5"].mean()),
                                                                      "n": len(x)}
                            for g, x in by_count},
    }


def run_variant(variant: str, seed: int, init: Path, root: Path, warmup: int, rl: int, extra: list[str],
                defined: dict[str, list[str]]) -> dict[str, Any]:
    from elva_baseline.config import TrainConfig
    from elva_baseline.trainer import train

    if variant == "warmup":
        return {"seed": seed, "variant": variant, "stage_seconds": 0.0, "updates": 0, **evaluate(init)}
    cfg = TrainConfig().with_overrides(variant_overrides(variant, seed, init, warmup, rl, defined) + extra)
    out = root / f"{variant}-{seed}"
    t0 = time.perf_counter()
    summary = train(cfg, out, progress=False, overwrite=True)
    seconds = time.perf_counter() - t0
    return {"seed": seed, "variant": variant, "stage_seconds": round(seconds, 1), "updates": summary["updates"],
            **evaluate(out / "final")}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def tables(rows: list[dict[str, Any]], variants: list[str]) -> str:
    """Markdown: the headline table (mean ± std over seeds; "rel." against ``contrastive``; the paired
    per-seed difference of hit@5 on ≥ 3-grain queries against that seed's ``warmup``), then hit@1 / hit@5
    per task and per grain count."""
    by = {v: [r for r in rows if r["variant"] == v] for v in variants}
    base = statistics.mean(r["hit@5_3plus"] for r in by["contrastive"]) if by.get("contrastive") else None
    base_d = statistics.mean(r["drop_distance"] for r in by["contrastive"]) if by.get("contrastive") else None
    warm = {r["seed"]: r["hit@5_3plus"] for r in by.get("warmup", [])}
    out = ["| variant | hit@1 | hit@5 | hit@1, ≥3 grains | hit@5, ≥3 grains | rel. hit@5 ≥3 | Δ vs warmup, per seed "
           "| drop 1 − cos | ratio |",
           "|---|---|---|---|---|---|---|---|---|"]
    for v, rs in by.items():
        cells = [mean_sd([r[k] for r in rs]) for k in METRICS]
        m3 = statistics.mean(r["hit@5_3plus"] for r in rs)
        md = statistics.mean(r["drop_distance"] for r in rs)
        rel = f"{100 * (m3 / base - 1):+.1f}%" if base else "—"
        ratio = f"{md / base_d:.2f}×" if base_d else "—"
        paired = " ".join(f"{r['hit@5_3plus'] - warm[r['seed']]:+.3f}" for r in rs if r["seed"] in warm) if warm else "—"
        out.append(f"| {v} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {rel} | {paired} | {cells[4]} | {ratio} |")
    for title, key in (("task", "per_task"), ("grain count", "per_grain_count")):
        cols = sorted({c for rs in by.values() for r in rs for c in r[key]})
        out += ["", f"hit@1 / hit@5 per {title} (mean over seeds; ± std of hit@5):", "",
                "| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for v, rs in by.items():
            cells = []
            for c in cols:
                h1 = [r[key][c]["hit@1"] for r in rs if c in r[key]]
                h5 = [r[key][c]["hit@5"] for r in rs if c in r[key]]
                sd = statistics.stdev(h5) if len(h5) > 1 else 0.0
                cells.append(f"{statistics.mean(h1):.3f} / {statistics.mean(h5):.3f} ± {sd:.3f}")
            out.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--warmup", type=int, default=300, help="shared warmup updates")
    ap.add_argument("--rl", type=int, default=100, help="updates of every variant after the warmup")
    ap.add_argument("--variants", default=",".join(["warmup", *VARIANTS]))  # warmup: the shared checkpoint itself
    ap.add_argument("--define", action="append", default=[], help="NAME:key=value,key=value (an extra variant)")
    ap.add_argument("--set", action="append", default=[], help="config overrides for every run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="JSON with every run")
    ap.add_argument("--markdown", type=Path, help="the tables as Markdown")
    ap.add_argument("--render", type=Path, help="only print (and with --markdown write) the tables of a JSON this wrote")
    args = ap.parse_args()
    if args.render:
        data = json.loads(args.render.read_text())
        variants = list(dict.fromkeys(r["variant"] for r in data["runs"]))
        md = tables(data["runs"], variants)
        print(md)
        if args.markdown:
            args.markdown.write_text(md)
        return
    import torch

    torch.set_num_threads(args.threads)
    defined = {}
    for d in args.define:
        name, _, sets = d.partition(":")
        defined[name] = [s for s in sets.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    rows: list[dict[str, Any]] = []
    warm_seconds = []
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for seed in [int(s) for s in args.seeds.split(",")]:
            init, secs = train_warmup(seed, root, args.warmup, args.set)
            warm_seconds.append(secs)
            print(f"seed {seed} warmup {args.warmup} updates: {secs:.0f} s", flush=True)
            for variant in variants:
                r = run_variant(variant, seed, init, root, args.warmup, args.rl, args.set, defined)
                rows.append(r)
                print(f"seed {seed} {variant:<13} hit@5 {r['hit@5']:.3f}  hit@5(≥3) {r['hit@5_3plus']:.3f}  "
                      f"drop 1−cos {r['drop_distance']:.4f}  ({r['stage_seconds']:.0f} s)", flush=True)
    md = tables(rows, variants)
    print()
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "warmup_seconds": [round(s, 1) for s in warm_seconds], "runs": rows}
        args.out.write_text(json.dumps(payload, indent=2))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(md)


if __name__ == "__main__":
    main()
