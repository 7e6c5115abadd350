"""``mrbench build hf``: imagefolder / Parquet image–caption datasets → a multi-grain benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import mrbench
from mrbench.builders.hf import REPORT_FILE, build_hf, heldout_path
from mrbench.cli.build_hf import hf
from mrbench.errors import BenchmarkError

CAPTIONS = [
    "a brown dog standing next to a red fire hydrant",
    "a red car parked near a tall tree",
    "two people riding bikes on a city street",
    "a white cat sleeping on a blue sofa",
    "a man holding a yellow umbrella in the rain",
    "a small boat floating on a calm lake",
]


def _image(i: int):
    from PIL import Image

    im = Image.new("RGB", (12, 12), (10 + 20 * i % 240, 200 - 15 * i % 200, 50 + 7 * i % 200))
    im.putpixel((i % 12, (i // 12) % 12), (255, 255, 255))  # every image distinct
    return im


pytestmark = pytest.mark.usefixtures("offline_hf_datasets")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imagefolder: 10 PNGs, metadata.jsonl with a list of COCO-like captions per image; the last
    image has only a caption too poor in grains, one caption is shared by two images."""
    root = tmp_path_factory.mktemp("imagefolder")
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(10):
            _image(i).save(root / f"{i:02d}.png")
            caps = [CAPTIONS[i % 6], f"{CAPTIONS[(i + 1) % 6]} at night", "a photo"] if i < 9 else ["a photo", ""]
            f.write(json.dumps({"file_name": f"{i:02d}.png", "caption": caps}) + "\n")
    return root


@pytest.fixture(scope="module")
def parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Parquet file with an Image feature and one string caption per row (12 rows)."""
    import datasets

    path = tmp_path_factory.mktemp("parquet") / "pairs.parquet"
    ds = datasets.Dataset.from_dict(
        {"img": [_image(i) for i in range(12)], "text": [f"{CAPTIONS[i % 6]} number {i}" for i in range(12)]},
        features=datasets.Features({"img": datasets.Image(), "text": datasets.Value("string")}),
    )
    ds.to_parquet(str(path))
    return path


def _check_bench(path: Path, min_grains: int) -> mrbench.Benchmark:
    bench = mrbench.load_benchmark(str(path))
    assert bench.task_names == ["t2i", "i2t"]
    t2i, i2t = bench.task("t2i"), bench.task("i2t")
    assert (t2i.query_modality, t2i.candidate_modality) == ("text", "image")
    assert (i2t.query_modality, i2t.candidate_modality) == ("image", "text")
    images = {c.id for c in t2i.candidates}
    caps = {c.id: c for c in i2t.candidates}
    assert {c.meta["image_id"] for c in caps.values()} == images  # same images on both sides
    for t in (t2i, i2t):
        assert t.queries and all(q.n_grains >= min_grains for q in t.queries)
        assert set(t.qrels) == {q.id for q in t.queries}
        assert [q.id for q in t.queries] == sorted(q.id for q in t.queries)
    for q in t2i.queries:  # a caption → its image, plus any image holding the same text
        rel = t2i.qrels[q.id]
        assert q.meta["image_id"] in rel and set(rel.values()) == {1}
        holders = {c.meta["image_id"] for c in caps.values() if c.text.lower() == q.text.lower()}
        assert set(rel) == holders
    for q in i2t.queries:  # an image → its own captions (and identical texts elsewhere)
        own = {cid for cid, c in caps.items() if c.meta["image_id"] == q.id}
        texts = {caps[c].text for c in own}
        assert set(i2t.qrels[q.id]) == {cid for cid, c in caps.items() if c.text in texts}
        assert q.meta["grain_source_text"] in texts and q.image.startswith("images/")
    return bench


def test_imagefolder_build_deterministic_and_evaluates(folder: Path, tmp_path: Path) -> None:
    a, rep = build_hf(folder, tmp_path / "a", per_task=8, min_grains=3)
    b, _ = build_hf(str(folder), tmp_path / "b", per_task=8, min_grains=3)
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("sha256:")
    bench = _check_bench(tmp_path / "a", 3)
    assert len(bench.task("t2i").queries) == 8 and len(bench.task("i2t").queries) == 8
    assert len(bench.task("t2i").candidates) == 10 and len(bench.task("i2t").candidates) == 9 * 3 + 1
    # the image with only "a photo" never is an i2t query; a shared caption has two relevant images
    assert "img000009" not in {q.id for q in bench.task("i2t").queries}
    assert rep["rows_read"] == 10 and rep["images"] == 10 and rep["captions"] == 28
    assert rep["builder"] == "imagefolder"
    for name in ("t2i", "i2t"):
        r = rep["tasks"][name]
        assert r["kept"] == min(8, r["eligible"]) and sum(r["by_grain_count"].values()) == r["kept"]
    assert json.loads((tmp_path / "a" / REPORT_FILE).read_text()) == rep and rep["fingerprint"] == a.fingerprint
    res = mrbench.evaluate(str(tmp_path / "a"), "random", cache=False, grain_sensitivity=False)
    assert res is not None


def test_parquet_heldout_disjoint_and_max_images(parquet: Path, tmp_path: Path) -> None:
    out = tmp_path / "pq"
    _, rep = build_hf(parquet, out, image_column="img", caption_column="text", per_task=50, heldout=0.25,
                          max_images=11, seed=3)
    assert rep["builder"] == "parquet" and rep["rows_read"] == 11 and rep["images"] == 11
    test = _check_bench(out, 2)
    train_dir = heldout_path(out)
    assert train_dir == tmp_path / "pq-train"
    train = _check_bench(train_dir, 2)
    assert train.split == "train" and test.split == "test"
    test_imgs = {c.id for c in test.task("t2i").candidates}
    train_imgs = {c.id for c in train.task("t2i").candidates}
    assert not test_imgs & train_imgs and len(test_imgs | train_imgs) == 11
    assert len(train_imgs) == rep["heldout"]["train_images"] == 3
    assert not {c.id for c in test.task("i2t").candidates} & {c.id for c in train.task("i2t").candidates}
    assert rep["heldout"]["train_fingerprint"] == train.fingerprint
    # the same seed gives the same split; another seed another one
    _, rep2 = build_hf(parquet, tmp_path / "pq2", image_column="img", caption_column="text", per_task=50,
                       heldout=0.25, max_images=11, seed=3)
    assert rep2["fingerprint"] == rep["fingerprint"] and rep2["heldout"]["train_fingerprint"] == train.fingerprint


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a callback keeps "hf" a named subcommand
        pass

    app.command("hf")(hf)
    return app


def test_cli_build_hf(folder: Path, parquet: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    # (the Parquet captions are all distinct: the imagefolder's shared "a photo" ties every image to one side)
    r = CliRunner().invoke(_cli(), ["hf", "--dataset", str(parquet), "-o", str(out), "--image-column", "img",
                                    "--caption-column", "text", "--per-task", "4", "--min-grains", "2",
                                    "--heldout", "0.2"])
    assert r.exit_code == 0, r.output
    assert "t2i: 4 of" in r.output and "i2t: 4 of" in r.output and "fingerprint sha256:" in r.output
    bench = mrbench.load_benchmark(str(out))
    assert bench.fingerprint in r.output and heldout_path(out).is_dir()
    # an existing output is refused without --overwrite, with one line
    r = CliRunner().invoke(_cli(), ["hf", "--dataset", str(folder), "-o", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"caption_column": "captions"}, r"column 'captions' not found.*available columns: .*caption"),
        ({"image_column": "picture"}, r"column 'picture' not found.*available columns: image, caption"),
        ({"min_grains": 50}, r"task t2i .*lower --min-grains"),
        ({"split": "validation"}, r"no split 'validation'; available splits: train"),
        ({"heldout": 1.5}, r"--heldout 1.5"),
    ],
)
def test_bad_input_is_one_line(folder: Path, tmp_path: Path, kwargs: dict, pattern: str) -> None:
    with pytest.raises(BenchmarkError, match=pattern) as e:
        build_hf(folder, tmp_path / "x", **kwargs)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x*"))  # nothing half-written


def test_unreadable_dataset_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(BenchmarkError, match=r"nowhere: no such file or directory"):
        build_hf(str(missing), tmp_path / "x")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(BenchmarkError, match=r"bad\.parquet: cannot read dataset") as e:
        build_hf(bad, tmp_path / "x")
    assert "\n" not in str(e.value)
    with pytest.raises(BenchmarkError, match=r"no-such-org/no-such-dataset: cannot read dataset.*OFFLINE"):
        build_hf("no-such-org/no-such-dataset", tmp_path / "x")
    r = CliRunner().invoke(_cli(), ["hf", "--dataset", str(missing), "-o", str(tmp_path / "y")])
    assert r.exit_code == 2 and r.output.strip().startswith("error: ") and len(r.output.strip().splitlines()) == 1


def test_missing_local_directory_is_not_sent_to_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative directory that does not exist (trailing slash, or a deeper path) is reported as missing,
    not looked up on the hub."""
    monkeypatch.chdir(tmp_path)
    for name in ("no_photos/", "data/no/photos"):
        with pytest.raises(BenchmarkError, match=rf"{name}: no such file or directory"):
            build_hf(name, tmp_path / "x")


def test_extractor_annotations_and_mllm_options(folder: Path, tmp_path: Path) -> None:
    """--extractor annotations reads the grains of every caption from --annotations; with another
    extractor the file overrides it for the captions it lists; mllm without a model, or annotations
    without a file, is one line (no TypeError traceback)."""
    from mrbench.grains.lexicon import LexiconExtractor

    caps = sorted({c for i in range(10) for c in
                   ([CAPTIONS[i % 6], f"{CAPTIONS[(i + 1) % 6]} at night", "a photo"] if i < 9 else ["a photo"])})
    ann = tmp_path / "grains.jsonl"
    lines = []
    for c in caps:
        words = [w for w in c.split() if len(w) > 3][:3]
        lines.append({"text": c, "grains": [{"text": w, "type": "entity"} for w in words]})
    ann.write_text("".join(json.dumps(x) + "\n" for x in lines))
    bench, report = build_hf(folder, tmp_path / "a", extractor="annotations", annotations=ann, per_task=3)
    assert report["annotations"] == str(ann)
    want = {x["text"]: [g["text"] for g in x["grains"]] for x in lines}
    for q in bench.task("t2i").queries:
        assert [g.text for g in q.grains] == want[q.text]
    # a partial file overrides the extractor only for the captions it lists
    listed = caps[0]
    ann.write_text(json.dumps(lines[0]) + "\n")
    bench, _ = build_hf(folder, tmp_path / "b", annotations=ann, per_task=50, min_grains=0)
    lex = LexiconExtractor()
    for q in bench.task("t2i").queries:
        ref = want[listed] if q.text == listed else [g.text for g in lex.extract([q.text])[0]]
        assert [g.text for g in q.grains] == ref
    for kwargs, pattern in (({"extractor": "mllm"}, r"--extractor mllm needs --extractor-model"),
                            ({"extractor": "annotations"}, r"--extractor annotations needs --annotations")):
        r = CliRunner().invoke(_cli(), ["hf", "--dataset", str(folder), "-o", str(tmp_path / "c"),
                                        *[f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()]])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert r.output.startswith("error: ") and __import__("re").search(pattern, r.output), r.output
    ann.write_text(json.dumps(lines[0]) + "\n")  # annotations only: a caption missing from the file is named
    with pytest.raises(mrbench.errors.MrbenchError, match=r"has no grain annotations in .*grains.jsonl") as e:
        build_hf(folder, tmp_path / "d", extractor="annotations", annotations=ann)
    assert "\n" not in str(e.value) and not (tmp_path / "d").exists()


def test_unreadable_image_names_its_file(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    root.mkdir()
    _image(0).save(root / "00.png")
    (root / "01.png").write_bytes(b"not an image")
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"0{i}.png", "caption": CAPTIONS[i]}) + "\n"
                                                 for i in range(2)))
    with pytest.raises(BenchmarkError, match=r"row 1, column 'image' \(01\.png\): not a readable image") as e:
        build_hf(root, tmp_path / "x", min_grains=0)
    assert "BytesIO" not in str(e.value) and "\n" not in str(e.value)
