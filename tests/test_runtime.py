"""The shared encoder run-time: device/precision, hub resolution (offline fail-fast), revisions,
tokenizer sanity, out-of-memory back-off, the DualTowerEncoder routing and the prepare_image hook."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mrbench.data.schema import TaskInfo  # noqa: E402
from mrbench.encoders.base import EncodeInput, EncoderMeta  # noqa: E402
from mrbench.encoders.runtime import (  # noqa: E402
    GraphedCall,
    check_tokenizer,
    dir_revision,
    file_revision,
    hub_offline,
    is_oom,
    resolve_device,
    resolve_dtype,
    resolve_model_dir,
    run_with_backoff,
)
from mrbench.encoders.torch_base import DualTowerEncoder  # noqa: E402
from mrbench.errors import EncoderError  # noqa: E402

TASK = TaskInfo(name="t", query_modality="text", candidate_modality="image")


def test_device_and_dtype_defaults() -> None:
    dev = resolve_device("auto")
    assert dev == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("cpu", "auto") == torch.float32
    assert resolve_dtype("cpu", "bf16") == torch.bfloat16
    with pytest.raises(EncoderError, match="precision 'fp8'"):
        resolve_dtype("cpu", "fp8")
    with pytest.raises(EncoderError, match="not a torch device"):
        resolve_device("potato")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda_is_one_line() -> None:
    with pytest.raises(EncoderError, match="CUDA is not available"):
        resolve_device("cuda")


def test_hub_id_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline()
    t0 = time.perf_counter()
    with pytest.raises(EncoderError) as e:
        resolve_model_dir("nobody-here/no-such-model-xyz", label="hf:nobody-here/no-such-model-xyz")
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "\n" not in msg and "offline" in msg and "pass that directory" in msg


def test_model_dir_forms(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"weights-1")
    path, rev = resolve_model_dir(str(d), label="x")
    assert path == d and rev.startswith("sha256:")
    assert resolve_model_dir(f"local-dir:{d}", label="x") == (d, rev)
    (d / "model.safetensors").write_bytes(b"weights-2")
    assert dir_revision(d) != rev  # the weights changed
    with pytest.raises(EncoderError, match="is a file"):
        resolve_model_dir(str(d / "config.json"), label="x")
    with pytest.raises(EncoderError, match="neither a local directory nor a hub id") as e:
        resolve_model_dir(str(tmp_path / "missing" / "deep" / "dir"), label="x")
    assert f"{str(tmp_path / 'missing')!r} does not exist" in str(e.value)  # the first part that is missing


def test_snapshot_commit_is_the_revision(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "models--org--name" / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    assert resolve_model_dir(str(snap), label="x")[1] == commit


def test_file_revision_is_memoised(tmp_path: Path) -> None:
    f = tmp_path / "w.pt"
    f.write_bytes(b"abc")
    r1 = file_revision(f)
    assert r1 == file_revision(f) and r1.startswith("sha256:")
    f.write_bytes(b"abcd")
    assert file_revision(f) != r1


class _EmptyTok:
    unk_token_id = 0

    def __len__(self) -> int:
        return 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": []}


class _UnkTok(_EmptyTok):
    def __len__(self) -> int:
        return 100

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [0, 0, 0]}


@pytest.mark.parametrize("tok", [_EmptyTok(), _UnkTok()])
def test_empty_tokenizer_is_rejected(tok) -> None:
    with pytest.raises(EncoderError, match="empty or broken"):
        check_tokenizer(tok, label="hf:x", source="/somewhere")


def test_backoff_halves_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []

    def fn(chunk):
        seen.append(len(chunk))
        if len(chunk) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return [x * 2 for x in chunk]

    shrunk: list[int] = []
    with caplog.at_level(logging.WARNING, logger="mrbench.encoders"):
        out = run_with_backoff(fn, list(range(10)), 16, label="enc", on_shrink=shrunk.append)
    assert [x for part in out for x in part] == [x * 2 for x in range(10)]
    assert shrunk == [8, 4, 2]
    assert "batch size halved to 2" in caplog.text


def test_backoff_gives_up_at_one_and_passes_other_errors() -> None:
    def oom(chunk):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(EncoderError, match="out of memory on a single item"):
        run_with_backoff(oom, [1, 2], 2, label="enc")

    def bad(chunk):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_with_backoff(bad, [1], 4, label="enc")
    assert not is_oom(ValueError("x"))


class _Towers(DualTowerEncoder):
    """Text tower = one-hot of len(text) % 4; image tower = mean colour; pixels prepared from PIL."""

    def __init__(self, modalities=("text", "image"), oom_above: int | None = None) -> None:
        super().__init__(device="cpu", batch_size=16)
        self.meta = EncoderMeta(name="towers", modalities=modalities, dim=4, extra=self.runtime_extra())
        self.oom_above = oom_above
        self.prepared = 0

    def encode_texts(self, texts):
        if self.oom_above and len(texts) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("out of memory")
        out = torch.zeros(len(texts), 4)
        for i, t in enumerate(texts):
            out[i, len(t) % 4] = 1.0 + len(t)
        return out

    def prepare_image(self, image):
        self.prepared += 1
        arr = torch.tensor(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
        return arr

    def encode_images(self, pixels):
        m = pixels.mean(dim=(2, 3))
        return torch.cat([m, torch.ones(len(m), 1)], dim=1)


def _item(i: int, text: str | None, img=None, path: Path | None = None) -> EncodeInput:
    return EncodeInput(id=f"i{i}", text=text, image=img, image_path=path, instruction=None, content_hash=str(i))


def test_dual_tower_routes_and_fuses(tmp_path: Path) -> None:
    from PIL import Image

    img = Image.new("RGB", (4, 4), (255, 0, 0))
    p = tmp_path / "a.png"
    img.save(p)
    enc = _Towers()
    items = [_item(0, "abc"), _item(1, None, img, p), _item(2, "abc", img, p)]
    out = enc.encode(items, role="query", task=TASK)
    t = enc.encode([items[0]], role="query", task=TASK)[0]
    i = enc.encode([items[1]], role="query", task=TASK)[0]
    tn, inn = t / np.linalg.norm(t), i / np.linalg.norm(i)
    np.testing.assert_allclose(out[0], tn, atol=1e-6)
    np.testing.assert_allclose(out[1], inn, atol=1e-6)
    np.testing.assert_allclose(out[2], tn + inn, atol=1e-6)  # score-level fusion
    assert out.dtype == np.float32


def test_text_only_tower_is_blind(tmp_path: Path) -> None:
    from PIL import Image

    p = tmp_path / "a.png"
    Image.new("RGB", (4, 4), (0, 0, 255)).save(p)
    enc = _Towers(modalities=("text",))
    out = enc.encode([_item(0, None, None, p), _item(1, "", None, p), _item(2, "ab", None, p)], role="candidate", task=TASK)
    np.testing.assert_allclose(out[0], out[1])  # no text → the empty string: every image-only item ties
    assert enc.prepared == 0


def test_oom_backoff_inside_encode_keeps_results() -> None:
    ref = _Towers().encode([_item(i, "x" * i) for i in range(12)], role="query", task=TASK)
    enc = _Towers(oom_above=3)
    out = enc.encode([_item(i, "x" * i) for i in range(12)], role="query", task=TASK)
    np.testing.assert_allclose(out, ref)
    assert enc.batch_size == 2 and enc.meta.extra["batch_size_after_oom"] == 2


def test_harness_runs_prepare_image_in_workers_and_names_rejected_items(small_bench) -> None:
    from mrbench.encoders.harness import encode_items

    bench = small_bench
    task = bench.task("t2i")
    enc = _Towers()
    out = encode_items(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2)
    assert out.shape == (3, 4) and enc.prepared == 3

    class Picky(_Towers):
        def prepare_image(self, image):
            raise ValueError("unsupported image size (16, 16)")

    with pytest.raises(EncoderError) as e:
        encode_items(Picky(), task.candidates, role="candidate", task=task, bench=bench, num_workers=0)
    msg = str(e.value)
    assert "c_" in msg and "rejected the image" in msg and ".png" in msg and "\n" not in msg


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from mrbench.encoders import registry

    monkeypatch.setitem(registry.EXTRA_MODULES, "clip", ("open_clip", "surely_not_installed_mod"))
    with pytest.raises(EncoderError, match=r"pip install 'mrbench\[clip\]'"):
        registry.get_encoder("openclip:ViT-B-32/openai")


def test_encoders_listing_shows_extras() -> None:
    from typer.testing import CliRunner

    from mrbench.cli.app import app

    res = CliRunner().invoke(app, ["encoders"], env={"COLUMNS": "250"})
    assert res.exit_code == 0
    for name in ("openclip:<spec>", "hf:<spec>", "st:<spec>", "vlm2vec:<spec>", "ret:<spec>", "minilm"):
        assert name in res.output
    assert "mrbench[clip]" in res.output and "mrbench[mllm]" in res.output


def test_graphed_call_runs_eagerly_off_cuda_with_grad_or_when_not_eligible() -> None:
    calls = []

    def fn(x):
        calls.append(tuple(x.shape))
        return x * 2

    g = GraphedCall(fn, label="t", eligible=lambda x: x.shape[0] == 4)
    x = torch.ones(4, 3)
    with torch.inference_mode():
        assert torch.equal(g(x), x * 2)  # a CPU tensor
    assert torch.equal(g(x), x * 2) and calls == [(4, 3), (4, 3)] and not g.graphs and not g.failed


def test_dual_tower_uses_graphed_towers_only_when_asked() -> None:
    enc = _Towers()
    items = [_item(i, "x" * i) for i in range(5)]
    ref = enc.encode(items, role="query", task=TASK)
    enc.cuda_graphs = True  # on the CPU every call falls through to the eager tower
    np.testing.assert_array_equal(enc.encode(items, role="query", task=TASK), ref)
    assert "encode_texts" not in enc.__dict__.get("_graphed", {})  # text without text_transform: tokenised inline


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_call_captures_replays_and_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    lin = torch.nn.Linear(8, 8).cuda()
    g = GraphedCall(lin, label="lin")
    with torch.inference_mode():
        xs = [torch.randn(16, 8, device="cuda") for _ in range(3)]
        outs = [g(x) for x in xs]  # the first captures, the rest replay
        for x, o in zip(xs, outs):
            torch.testing.assert_close(o, lin(x), rtol=0, atol=0)
        assert len(g.graphs) == 1
        bad = GraphedCall(lambda x: x * float(x.sum().item()), label="syncs")
        with caplog.at_level(logging.WARNING):
            out = bad(xs[0])
        assert bad.failed and "CUDA graph capture failed" in caplog.text
        torch.testing.assert_close(out, xs[0] * float(xs[0].sum().item()))
