"""The README's custom-encoder example works as printed: by file, by module:Class, by a real
installed entry point (a dist-info on sys.path), and through `mrbench check-encoder`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrbench.cli.app import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    m = re.search(r"```python\n(# my_encoder\.py\n.*?)```", text, re.S)
    assert m, "README lost its '# my_encoder.py' example"
    return m.group(1)


def test_example_is_short() -> None:
    lines = [ln for ln in _example().splitlines() if ln.strip()]
    assert len(lines) <= 16  # "a complete 15-line example" (plus the file-name comment)


@pytest.fixture
def plugin_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example as an installed package ``readme_pkg`` with an entry point ``readme-enc``."""
    pkg = tmp_path / "readme_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "my_encoder.py").write_text(_example())
    dist = tmp_path / "readme_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: readme-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text('[mrbench.encoders]\nreadme-enc = "readme_pkg.my_encoder:MyEncoder"\n'.replace('"', ""))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("readme_pkg")]:
        sys.modules.pop(mod, None)


@pytest.mark.parametrize("how", ["file", "module", "entry_point"])
def test_readme_encoder_passes_check_encoder(plugin_pkg: Path, how: str) -> None:
    name = {
        "file": f"{plugin_pkg / 'readme_pkg' / 'my_encoder.py'}:MyEncoder",
        "module": "readme_pkg.my_encoder:MyEncoder",
        "entry_point": "readme-enc",
    }[how]
    res = CliRunner().invoke(app, ["check-encoder", name, "--encoder-kwargs", '{"dim": 32}'], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "FAIL" not in res.output


def test_readme_encoder_is_listed_and_evaluates(plugin_pkg: Path) -> None:
    import mrbench

    res = CliRunner().invoke(app, ["encoders"], env={"COLUMNS": "200"})
    assert "readme-enc" in res.output
    out = mrbench.evaluate("mrbench-synth-tiny", "readme-enc", tasks=["t2i"], grain_sensitivity=False, cache=False)
    assert out.data["encoder"]["name"] == "my-encoder"


def test_own_embeddings_example_runs_and_matches_evaluate() -> None:
    """The README's 'your own embeddings' lines run as printed, and give evaluate's per-query scores
    for the same embeddings (the oracle encoder's, on the tiny built-in benchmark)."""
    import numpy as np

    import mrbench
    from mrbench.encoders.registry import get_encoder
    from mrbench.encoders.harness import encode_items

    text = README.read_text()
    m = re.search(r"(# your own embeddings.*?)```", text, re.S)
    assert m, "README lost its 'your own embeddings' example"
    bench = mrbench.load_benchmark("mrbench-synth-tiny")
    task = bench.task("t2i")
    enc = get_encoder("oracle")
    q_emb = encode_items(enc, task.queries, role="query", task=task, bench=bench)
    c_emb = encode_items(enc, task.candidates, role="candidate", task=task, bench=bench)
    ns = {"task": task, "q_emb": q_emb, "c_emb": c_emb}
    code = m.group(1).replace("score_queries(res.", "df = score_queries(res.")
    assert "df = " in code
    exec(code, ns)
    want = mrbench.evaluate(bench, "oracle", tasks=["t2i"], cache=False, grain_sensitivity=False)
    got = ns["df"]
    per_q = want.to_pandas("query").set_index("qid")
    for col in ("hit@1", "hit@5", "recall@10", "ndcg@10", "mrr@10"):
        np.testing.assert_array_equal(got[col].to_numpy(), per_q.loc[got.index, col].to_numpy())
