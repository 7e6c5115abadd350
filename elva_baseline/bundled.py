"""The bundled reference encoders ``contrastive-tiny`` and ``elva-tiny``: their recipes, the command that
rebuilds them (``elva-train bundle``) and the factories mrbench's registry calls.

Both are the default tiny dual encoder (:data:`elva_baseline.model.DEFAULT_TINY_CONFIG`) trained on
``mrbench-synth-train`` with the same seed and the same number of updates:

* ``contrastive-tiny``: InfoNCE only, ``warmup.steps = W + R``;
* ``elva-tiny``: the same InfoNCE for ``W`` updates (bit-identical to the first ``W`` updates of
  ``contrastive-tiny``: same seed, same batches), then ``R`` GRPO updates with the rule rewards.

They are stored *compact* (:func:`elva_baseline.checkpoint.export_compact`): the token embedding keeps
the rows of the words MRBench-Synth uses (train and test splits), so each checkpoint is about 1.4 MB
instead of 14 MB and embeds every MRBench-Synth text exactly as the full model; a word outside that
vocabulary embeds as a zero token vector. ``recipes.json`` next to them records the overrides, the
command, the training time and the MRBench-Synth test scores measured at build time (a test re-checks
them).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mrbench.errors import EncoderError

BUNDLE_DIR = Path(__file__).resolve().parent / "bundled"
RECIPES_FILE = "recipes.json"
WARMUP_STEPS = 300
RL_STEPS = 100
SEED = 0

RL_RECIPE: list[str] = []
"""``elva-tiny``'s RL-stage overrides on top of the trainer's defaults (empty: the defaults, which are ELVA's)."""


def recipes(warmup: int = WARMUP_STEPS, rl: int = RL_STEPS, seed: int = SEED,
            benchmark: str = "mrbench-synth-train") -> dict[str, list[str]]:
    """The trainer overrides of each bundled encoder."""
    data = [f"data.benchmark={benchmark}"] if benchmark != "mrbench-synth-train" else []
    return {
        "contrastive-tiny": [f"seed={seed}", 'stages=["warmup"]', f"warmup.steps={warmup + rl}", *data],
        "elva-tiny": [f"seed={seed}", 'stages=["warmup", "rl"]', f"warmup.steps={warmup}", f"rl.steps={rl}", *data,
                      *RL_RECIPE],
    }


def synth_vocabulary(names: tuple[str, ...] = ("mrbench-synth-train", "mrbench-synth")) -> list[str]:
    """Every query and candidate text of these benchmarks (default: MRBench-Synth's train and test
    splits): the vocabulary a compact checkpoint keeps."""
    from mrbench.data.registry import load_benchmark

    texts: list[str] = []
    for name in names:
        bench = load_benchmark(name)
        for task in bench.tasks:
            texts += [q.text for q in task.queries if q.text]
            texts += [c.text for c in task.candidates if c.text]
    return texts


def synth_scores(result: Any) -> dict[str, float]:
    """hit@1/hit@5 (macro, and on queries with ≥ 3 grains) and the drop-one-grain distance (mean
    ``1 − cos`` over every dropped grain) of an evaluation result, unrounded."""
    df = result.to_pandas("query")
    many = df[df["n_grains"] >= 3]
    sens = result.to_pandas("sensitivity")
    return {
        "hit@1": float(result.scores["macro"]["hit@1"]),
        "hit@5": float(result.scores["macro"]["hit@5"]),
        "hit@1_3plus": float(many["hit@1"].mean()),
        "hit@5_3plus": float(many["hit@5"].mean()),
        "drop_distance": float(sens["mask_distance"].mean()) if sens is not None and len(sens) else float("nan"),
    }


def headline_scores(directory: Path, benchmark: str = "mrbench-synth") -> dict[str, float]:
    """:func:`synth_scores` of the checkpoint in ``directory`` on ``benchmark``, rounded to 4 decimals."""
    import mrbench
    from elva_baseline.encoder import ElvaEncoder

    res = mrbench.evaluate(benchmark, ElvaEncoder(str(directory)), cache=False)
    return {k: round(v, 4) for k, v in synth_scores(res).items()}


def build_bundled(out: str | Path = BUNDLE_DIR, *, warmup: int = WARMUP_STEPS, rl: int = RL_STEPS, seed: int = SEED,
                  progress: bool = True, threads: int | None = None, train_benchmark: str = "mrbench-synth-train",
                  test_benchmark: str = "mrbench-synth") -> dict[str, Any]:
    """Train both bundled encoders on ``train_benchmark``, store them compact in ``out/<name>/`` (the
    vocabulary of both benchmarks), score them on ``test_benchmark`` and write ``out/recipes.json``."""
    from elva_baseline.checkpoint import export_compact
    from elva_baseline.config import TrainConfig
    from elva_baseline.trainer import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = synth_vocabulary((train_benchmark, test_benchmark))
    record: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sets in recipes(warmup, rl, seed, train_benchmark).items():
            t0 = time.perf_counter()
            train(TrainConfig().with_overrides(sets), Path(tmp) / name, progress=progress, threads=threads)
            seconds = time.perf_counter() - t0
            dst = export_compact(Path(tmp) / name / "final", out / name, vocab, overwrite=True)
            cfg = json.loads((dst / "config.json").read_text())
            record[name] = {
                "overrides": sets,
                "command": "elva-train run -o runs/" + name + " " + " ".join(f"--set '{s}'" for s in sets),
                "train_seconds": round(seconds, 1),
                "weights_sha256": cfg["weights_sha256"],
                "test_scores": headline_scores(dst, test_benchmark),
            }
    where = "" if out.resolve() == BUNDLE_DIR else f" --out {out}"
    payload = {"rebuild": f"elva-train bundle{where} --warmup {warmup} --rl {rl} --seed {seed}",
               "train_benchmark": train_benchmark, "test_benchmark": test_benchmark, "encoders": record}
    tmp_file = out / (RECIPES_FILE + ".tmp")
    tmp_file.write_text(json.dumps(payload, indent=2) + "\n")
    tmp_file.replace(out / RECIPES_FILE)
    return payload


def _bundled(name: str, **kwargs: Any) -> Any:
    from elva_baseline.encoder import ElvaEncoder

    d = BUNDLE_DIR / name
    if not (d / "config.json").is_file():
        raise EncoderError(f"encoder {name!r}: the bundled checkpoint {d} is missing; rebuild it with "
                           f"`elva-train bundle` (or reinstall mrbench)")
    enc = ElvaEncoder(str(d), **kwargs)
    enc.label = name
    enc.meta = dataclasses.replace(enc.meta, name=name, extra={**enc.meta.extra, "bundled": True})
    return enc


def contrastive_tiny(**kwargs: Any) -> Any:
    """The bundled ``contrastive-tiny`` (InfoNCE only), as an mrbench encoder (ElvaEncoder's keyword args)."""
    return _bundled("contrastive-tiny", **kwargs)


def elva_tiny(**kwargs: Any) -> Any:
    """The bundled ``elva-tiny`` (the same InfoNCE warmup + GRPO), as an mrbench encoder."""
    return _bundled("elva-tiny", **kwargs)
