"""Build time of ``mrbench build mbeir`` for 1,000 queries against a 100k-line candidate pool.

Writes the M-BEIR test fixture (``tests/fixtures/mbeir_fixture.py``) with 1,000 COCO image→text queries,
grows that task's local pool to 100,000 caption lines, then times ``build_mbeir`` (read + validate +
lexicon grain extraction + selection + write) on it, one task, ``--per-task 1000 --min-grains 0``.

    python benchmarks/bench_mbeir_build.py --out benchmarks/results/mbeir_build.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--pool", type=int, default=100_000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures.mbeir_fixture import _caption, write_mbeir_fixture

    from mrbench.builders.mbeir import build_mbeir

    import random

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "mbeir"
        t0 = time.perf_counter()
        write_mbeir_fixture(root, n_queries=args.queries, n_pool=2 * args.queries)
        pool = root / "cand_pool/local/mbeir_mscoco_task3_test_cand_pool.jsonl"
        rng = random.Random(1)
        caps = [_caption(rng)[0] for _ in range(512)]
        with pool.open("a", encoding="utf-8") as f:
            for j in range(args.pool - 2 * args.queries):
                f.write(json.dumps({"did": f"9:{900_000 + j}", "txt": caps[j % 512], "img_path": None,
                                    "modality": "text", "src_content": None}) + "\n")
        fixture_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        bench, report = build_mbeir(root, Path(d) / "out", tasks=["mscoco_task3"], per_task=args.queries, min_grains=0)
        build_s = time.perf_counter() - t0
    t = report["tasks"]["coco_i2t"]
    row = {"queries": t["kept"], "pool_lines": t["candidates"], "build_seconds": round(build_s, 2),
           "fixture_seconds": round(fixture_s, 2), "machine": "2 CPU cores (the project's build machine)"}
    print(json.dumps(row))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
