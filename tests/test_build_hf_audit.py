"""Audit findings on ``mrbench build hf`` (held-out split, duplicates, annotations, atomic pairs, reports)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrbench.builders.hf import REPORT_FILE, build_hf, heldout_path
from mrbench.errors import BenchmarkError

WORDS = ["dog", "cat", "car", "tree", "boat", "bird", "horse", "chair", "house", "lamp", "cup", "bike"]
COLOURS = ["red", "blue", "green", "white", "black", "brown", "yellow", "grey"]


def _image(i: int):
    from PIL import Image

    im = Image.new("RGB", (12, 12), (10 + 20 * i % 240, 200 - 15 * i % 200, 50 + 7 * i % 200))
    im.putpixel((i % 12, (i // 12) % 12), (255, 255, 255))
    return im


def _caption(i: int) -> str:
    return f"a {COLOURS[i % 8]} {WORDS[i % 12]} next to a {COLOURS[(i + 3) % 8]} {WORDS[(i + 5) % 12]} number {i}"


pytestmark = pytest.mark.usefixtures("offline_hf_datasets")


def _folder(root: Path, rows: list[tuple[str, object]], images: dict[str, object] | None = None) -> Path:
    """An imagefolder: ``rows`` of (file name, caption); a file is ``images[name]`` (a PIL image or bytes),
    else image ``int(stem)``."""
    root.mkdir(parents=True, exist_ok=True)
    images = images or {}
    for fname, _ in rows:
        if (root / fname).exists():
            continue
        src = images.get(fname)
        if isinstance(src, bytes):
            (root / fname).write_bytes(src)
        elif src is not None:
            src.save(root / fname)
        else:
            _image(int(Path(fname).stem)).save(root / fname)
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "caption": c}) + "\n" for f, c in rows))
    return root


def _texts(bench_dir: Path) -> set[str]:
    import mrbench

    bench = mrbench.load_benchmark(str(bench_dir))
    return {" ".join(c.text.lower().split()) for c in bench.task("i2t").candidates}


# ----------------------------------------------------------------- 1. held-out split by shared captions
def test_heldout_parts_share_no_caption_text(tmp_path: Path) -> None:
    """Images sharing a caption (even through a chain, and after case/whitespace normalisation) go to one
    side; the fraction stays about right and the split is deterministic."""
    rows: list[tuple[str, object]] = []
    for i in range(40):
        caps = [_caption(i)]
        if i % 4 == 1:  # pairs (1,2), (5,6), ... share a caption, written differently
            caps.append(f"a shared  caption about a {WORDS[i % 12]} and a {COLOURS[i % 8]} kite {i}")
        if i % 4 == 2:
            caps.append(f"A Shared caption about a {WORDS[(i - 1) % 12]}  and a {COLOURS[(i - 1) % 8]} kite {i - 1}")
        if i in (2, 3):  # chain 1-2-3
            caps.append("a chained caption with a red dog and a blue cat")
        rows.append((f"{i}.png", caps))
    src = _folder(tmp_path / "src", rows)
    for seed in range(4):
        out = tmp_path / f"o{seed}"
        _, rep = build_hf(src, out, heldout=0.3, seed=seed, per_task=5, min_grains=0)
        test_t, train_t = _texts(out), _texts(heldout_path(out))
        assert not test_t & train_t
        assert abs(rep["heldout"]["train_images"] - 12) <= 2
        assert rep["heldout"]["train_images"] + rep["heldout"]["test_images"] == 40
        assert rep["heldout"]["images_in_shared_caption_groups"] == 10 * 2 + 1
    _, rep2 = build_hf(src, tmp_path / "again", heldout=0.3, seed=3, per_task=5, min_grains=0)
    assert rep2["fingerprint"] == rep["fingerprint"]
    assert rep2["heldout"]["train_fingerprint"] == rep["heldout"]["train_fingerprint"]


def test_heldout_impossible_when_one_caption_ties_all(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", [(f"{i}.png", [_caption(i), "a photo"]) for i in range(6)])
    with pytest.raises(BenchmarkError, match=r"--heldout 0.3: .*sharing a caption stay on one side") as e:
        build_hf(src, tmp_path / "x", heldout=0.3, min_grains=0)
    assert "\n" not in str(e.value) and not (tmp_path / "x").exists() and not heldout_path(tmp_path / "x").exists()


# ----------------------------------------------------------------- 2. pixel-identical PNGs are one image
def test_resaved_png_copy_is_merged(tmp_path: Path) -> None:
    """A PNG re-saved with other bytes but the same pixels is the same image to the fingerprint, so the
    builder merges it (captions of both relevant to the one image)."""
    import io

    import mrbench
    from mrbench.data.fingerprint import image_sha256
    from PIL import PngImagePlugin

    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "re-saved")
    _image(0).save(buf, format="PNG", compress_level=0, pnginfo=info)
    rows = [(f"{i}.png", _caption(i)) for i in range(4)] + [("copy.png", _caption(9))]
    src = _folder(tmp_path / "src", rows, {"copy.png": buf.getvalue()})
    assert (src / "copy.png").read_bytes() != (src / "0.png").read_bytes()
    assert image_sha256(src / "copy.png") == image_sha256(src / "0.png")
    _, rep = build_hf(src, tmp_path / "o", min_grains=0)
    assert rep["images"] == 4 and rep["duplicate_images_merged"] == 1
    t2i = mrbench.load_benchmark(str(tmp_path / "o")).task("t2i")
    q = {q.text: q.id for q in t2i.queries}
    assert set(t2i.qrels[q[_caption(9)]]) == set(t2i.qrels[q[_caption(0)]]) == {"img000000"}


# ----------------------------------------------------------------- 3. annotations match collapsed captions
def test_annotations_match_captions_with_extra_spaces(tmp_path: Path) -> None:
    import mrbench
    from mrbench.errors import MrbenchError

    caps = ["a red  dog lying on the grass ", "a blue cat sitting on a wooden bench", " a green\tbird on a street"]
    src = _folder(tmp_path / "src", [(f"{i}.png", c) for i, c in enumerate(caps)])
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({"text": c, "grains": [{"text": f"g{i}a", "type": "entity"},
                                                             {"text": f"g{i}b", "type": "attribute"}]}) + "\n"
                           for i, c in enumerate(caps)))
    for kw in ({"extractor": "annotations"}, {}):
        out = tmp_path / f"o{len(kw)}"
        build_hf(src, out, annotations=ann, min_grains=0, **kw)
        for q in mrbench.load_benchmark(str(out)).task("t2i").queries:
            i = int(q.meta["image_id"][3:])
            assert [g.text for g in q.grains] == [f"g{i}a", f"g{i}b"], q.text
    ann.write_text(json.dumps({"text": caps[0], "grains": []}) + "\n")  # the others missing: the one-line error
    with pytest.raises(MrbenchError, match=r"text 'a blue cat sitting on a wooden bench' has no grain annotations in") as e:
        build_hf(src, tmp_path / "x", annotations=ann, extractor="annotations", min_grains=0)
    assert "\n" not in str(e.value) and not (tmp_path / "x").exists()


# ----------------------------------------------------------------- 4./5. held-out pair: all or nothing, own reports
def _pair_src(tmp_path: Path) -> Path:
    return _folder(tmp_path / "src", [(f"{i}.png", _caption(i)) for i in range(10)])


def test_heldout_pair_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test part failing to be written removes the train part this run wrote (a re-run then works),
    and puts back a train part it was replacing with overwrite."""
    import mrbench
    import mrbench.data.io as mio

    src, out = _pair_src(tmp_path), tmp_path / "o"
    real = mio.save_benchmark

    def failing(bench, path, overwrite=False):
        if Path(path).name == "o":
            raise OSError(28, "No space left on device", str(path))
        return real(bench, path, overwrite=overwrite)

    monkeypatch.setattr(mio, "save_benchmark", failing)
    with pytest.raises(OSError):
        build_hf(src, out, heldout=0.3, min_grains=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing half-written, no hidden siblings
    monkeypatch.setattr(mio, "save_benchmark", real)
    _, rep = build_hf(src, out, heldout=0.3, min_grains=0)  # the re-run is not refused
    old_train = rep["heldout"]["train_fingerprint"]
    monkeypatch.setattr(mio, "save_benchmark", failing)
    with pytest.raises(OSError):
        build_hf(src, out, heldout=0.3, min_grains=0, seed=1, overwrite=True)
    assert mrbench.load_benchmark(str(heldout_path(out))).fingerprint == old_train
    assert mrbench.load_benchmark(str(out)).fingerprint == rep["fingerprint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "o-train", "src"]


def test_each_part_report_describes_its_part(tmp_path: Path) -> None:
    import mrbench

    out = tmp_path / "o"
    build_hf(_pair_src(tmp_path), out, heldout=0.3, min_grains=0, per_task=3)
    for d, part in ((out, "test"), (heldout_path(out), "train")):
        rep = json.loads((d / REPORT_FILE).read_text())
        bench = mrbench.load_benchmark(str(d))
        assert rep["part"] == part and rep["fingerprint"] == bench.fingerprint
        for t in ("t2i", "i2t"):
            assert rep["tasks"][t]["kept"] == len(bench.task(t).queries)
            assert rep["tasks"][t]["candidates"] == len(bench.task(t).candidates)
        assert bench.metadata["build"]["part"] == part


# ----------------------------------------------------------------- 6. truncated images fail at build, naming the input
@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_image_names_its_input_row(tmp_path: Path, fmt: str) -> None:
    import io

    from PIL import Image

    im = Image.effect_noise((64, 64), 40).convert("RGB")  # noise: the pixel data is most of the file
    buf = io.BytesIO()
    im.save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
    data = buf.getvalue()
    cut = data[: int(len(data) * 0.6)]
    Image.open(io.BytesIO(cut))  # the header still reads: only decoding finds the damage
    rows = [(f"{i}.png", _caption(i)) for i in range(3)] + [(f"bad.{fmt}", _caption(3))]
    src = _folder(tmp_path / "src", rows, {f"bad.{fmt}": cut})
    with pytest.raises(BenchmarkError, match=rf"row 3, column 'image' \(bad\.{fmt}\): not a readable image .*fix or drop that row") as e:
        build_hf(src, tmp_path / "o", min_grains=0)
    assert "\n" not in str(e.value) and "staging" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# ----------------------------------------------------------------- 7. no datasets progress bars
def test_no_datasets_progress_bars_and_state_restored(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import datasets

    src = _pair_src(tmp_path)
    datasets.enable_progress_bars()
    try:
        build_hf(src, tmp_path / "o", min_grains=0, cache_dir=tmp_path / "cache")
        err = capfd.readouterr().err
        assert "%|" not in err and "Generating train split" not in err, err
        assert not datasets.are_progress_bars_disabled()  # the previous state is back
        datasets.disable_progress_bars()
        build_hf(src, tmp_path / "p", min_grains=0, cache_dir=tmp_path / "cache2")
        assert datasets.are_progress_bars_disabled()
    finally:
        datasets.enable_progress_bars()


# ----------------------------------------------------------------- EXIF orientation
def test_jpeg_with_exif_rotation_is_stored_upright(tmp_path: Path) -> None:
    """A photo stored sideways with an EXIF orientation tag (6: turn 90° clockwise to view) is written
    upright, as viewers and `datasets` show it; the harness's loader reads pixels as stored, so the
    benchmark must hold them the right way up. An untagged JPEG is copied unchanged."""
    import io

    from PIL import Image

    from mrbench.encoders.harness import load_rgb

    sideways = Image.new("RGB", (60, 20), (200, 30, 30))
    sideways.paste((30, 30, 200), (0, 0, 10, 20))  # a blue band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged, plain = io.BytesIO(), io.BytesIO()
    sideways.save(tagged, format="JPEG", exif=exif, quality=95)
    sideways.save(plain, format="JPEG", quality=95)
    rows = [(f"{i}.png", _caption(i)) for i in range(3)] + [("rot.jpg", _caption(7)), ("flat.jpg", _caption(8))]
    src = _folder(tmp_path / "src", rows, {"rot.jpg": tagged.getvalue(), "flat.jpg": plain.getvalue()})
    build_hf(src, tmp_path / "o", min_grains=0)
    stored = sorted((tmp_path / "o" / "images").iterdir())
    rot = next(p for p in stored if p.suffix == ".png" and Image.open(p).size == (20, 60))
    up = load_rgb(rot, "rot")
    assert up.size == (20, 60)
    top = up.getpixel((10, 2))
    assert top[2] > 150 and top[0] < 100  # the blue band is on top once turned upright
    flat = [p for p in stored if p.suffix == ".jpg"]
    assert len(flat) == 1 and flat[0].read_bytes() == plain.getvalue()
