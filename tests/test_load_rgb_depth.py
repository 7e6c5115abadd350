"""``load_rgb`` scales 16- and 32-bit integer grayscale images to 8 bits instead of clipping them white."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrbench.data.fingerprint import image_sha256, png_pixels_sha256
from mrbench.encoders.harness import load_rgb


def _ramp16() -> np.ndarray:
    return (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    a = _ramp16()
    path = tmp_path / "g16.png"
    Image.fromarray(a).save(path)
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")  # what Pillow decodes a 16-bit grayscale PNG to
    rgb = np.asarray(load_rgb(path, "q1"))
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], (a >> 8).astype(np.uint8))
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert abs(float(rgb.mean()) - 127.5) < 2  # a ramp, not an almost white image
    # the benchmark fingerprint hashes the decoded PNG pixels, not load_rgb's output: unchanged
    with Image.open(path) as im:
        im.load()
        assert image_sha256(path) == png_pixels_sha256(im)


@pytest.mark.parametrize("mode,dtype", [("I;16B", ">u2"), ("I;16L", "<u2"), ("I;16", "<u2")])
def test_16bit_modes(tmp_path: Path, mode: str, dtype: str) -> None:
    a = _ramp16()
    path = tmp_path / "g.tiff"
    Image.frombytes(mode, (32, 32), a.astype(dtype).tobytes()).save(path)
    with Image.open(path) as im:
        opened = im.mode
    rgb = np.asarray(load_rgb(path, "c1"))
    assert opened.startswith("I"), opened
    assert np.array_equal(rgb[..., 1], (a >> 8).astype(np.uint8))


def test_32bit_int_mode(tmp_path: Path) -> None:
    small = _ramp16().astype(np.int32)
    path = tmp_path / "i16.tiff"
    Image.fromarray(small, mode="I").save(path)
    assert np.array_equal(np.asarray(load_rgb(path, "a"))[..., 0], (small >> 8).astype(np.uint8))
    wide = np.array([[-5, 0], [1 << 24, (1 << 31) - 1]], dtype=np.int32)
    path = tmp_path / "i32.tiff"
    Image.fromarray(wide, mode="I").save(path)
    assert np.asarray(load_rgb(path, "b"))[..., 0].tolist() == [[0, 0], [1, 127]]


def test_8bit_images_unchanged(tmp_path: Path) -> None:
    a = (np.arange(16 * 16 * 3) % 256).astype(np.uint8).reshape(16, 16, 3)
    path = tmp_path / "rgb.png"
    Image.fromarray(a).save(path)
    assert np.array_equal(np.asarray(load_rgb(path, "x")), a)
    Image.fromarray(a[..., 0]).save(tmp_path / "l.png")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "l.png", "y"))[..., 0], a[..., 0])
