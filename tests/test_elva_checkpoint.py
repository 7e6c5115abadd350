"""elva_baseline.checkpoint and elva_baseline.encoder: round trip, resume state, mrbench evaluation, bad inputs."""

from __future__ import annotations

import copy

import json
import pickle
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

import mrbench  # noqa: E402
from elva_baseline.checkpoint import (  # noqa: E402
    CheckpointError,
    file_sha256,
    load_checkpoint,
    load_trainer_state,
    read_config,
    save_checkpoint,
)
from elva_baseline.encoder import ElvaEncoder  # noqa: E402
from elva_baseline.model import DualTowerModel  # noqa: E402
from mrbench.encoders.base import Encoder  # noqa: E402
from mrbench.encoders.harness import encode_items, load_rgb  # noqa: E402
from mrbench.errors import MrbenchError  # noqa: E402

SMALL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TRAINING = {"lr": 1e-3, "batch_size": 64, "tasks": ["t2i", "it2i"], "nested": {"beta": 0.2}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model after two AdamW steps (so the optimizer has state), saved with optimizer + extra."""
    model = DualTowerModel(SMALL_CFG, seed=4, learn_sigma=True, sigma=0.03)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    items = model.make_items(["a red circle", "a blue square", "a star"], [None, None, None])
    for _ in range(2):
        e = model.embed(items)
        loss = (e @ e.T).sum() + model.head.sigma
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = tmp_path_factory.mktemp("ckpt") / "step-2"
    save_checkpoint(d, model, TRAINING, step=2, stage="contrastive", optimizer=opt, extra={"epoch": 1, "rng": [1, 2]})
    return model.eval(), opt, d


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _probe(model: DualTowerModel):
    from PIL import Image

    ims = [Image.new("RGB", (40, 40), (200, 10 * i, 30)) for i in range(3)]
    return model.make_items(["a red circle", None, "make it blue"], [None, ims[0], ims[1]])


def _one_line_error(fn, *match: str) -> str:
    with pytest.raises(CheckpointError) as e:
        fn()
    msg = str(e.value)
    assert isinstance(e.value, MrbenchError) and "\n" not in msg
    for m in match:
        assert m in msg, msg
    return msg


def test_round_trip(trained) -> None:
    model, _, d = trained
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    assert not any(p.name.startswith(".") for p in d.parent.iterdir())  # no staging leftovers
    loaded, cfg = load_checkpoint(d)
    assert cfg["step"] == 2 and cfg["stage"] == "contrastive" and cfg["training"] == TRAINING
    assert cfg["weights_sha256"] == file_sha256(d / "model.safetensors")
    assert cfg["mrbench_version"] == mrbench.__version__ and cfg["model"]["model_cfg"] == SMALL_CFG
    assert cfg == read_config(d)
    sd, sl = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sl.keys() and all(torch.equal(sd[k], sl[k]) for k in sd)
    assert loaded.head.learnable and torch.allclose(loaded.head.sigma, model.head.sigma)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    # compared frozen, as loaded: with trainable parameters the text tower's attention may take
    # another kernel path (about 1e-7 apart on the CPU with open_clip 3.3 / torch 2.14)
    frozen = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        assert torch.equal(frozen.embed(_probe(frozen)), loaded.embed(_probe(loaded)))


def test_resume_state(trained) -> None:
    _, opt, d = trained
    loaded, _ = load_checkpoint(d, trainable=True)
    assert loaded.training and all(p.requires_grad for p in loaded.parameters())
    opt2 = torch.optim.AdamW(loaded.parameters(), lr=1.0)
    st = load_trainer_state(d, opt2)
    assert st == {"step": 2, "stage": "contrastive", "extra": {"epoch": 1, "rng": [1, 2]}}
    assert opt2.param_groups[0]["lr"] == 1e-2
    a, b = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert a.keys() == b.keys()
    for k in a:
        for name, v in a[k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b[k][name])), (k, name)
    with pytest.raises(CheckpointError, match="SGD"):
        load_trainer_state(d, torch.optim.SGD(loaded.parameters(), lr=0.1))


def test_overwrite_rules(trained, tmp_path) -> None:
    model, _, d = trained
    out = _copy(d, tmp_path)
    _one_line_error(lambda: save_checkpoint(out, model, {}, step=3, stage="grpo"), "overwrite=True")
    save_checkpoint(out, model, {"x": 1}, step=3, stage="grpo", overwrite=True)
    cfg = read_config(out)
    assert cfg["step"] == 3 and cfg["stage"] == "grpo" and not (out / "optimizer.safetensors").exists()
    other = tmp_path / "not-a-checkpoint"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    _one_line_error(lambda: save_checkpoint(other, model, {}, step=0, stage="x", overwrite=True), "refusing")
    assert (other / "notes.txt").read_text() == "keep me"
    _one_line_error(lambda: save_checkpoint(tmp_path / "n", model, {"f": object()}, step=0, stage="x"), "JSON")
    _one_line_error(lambda: save_checkpoint(tmp_path / "n", model, {}, step=-1, stage="x"), "step")


def test_bad_checkpoints(trained, tmp_path) -> None:
    _, _, d = trained
    _one_line_error(lambda: load_checkpoint(tmp_path / "nowhere"), "not found")

    c = _copy(d, tmp_path / "a")
    (c / "model.safetensors").unlink()
    _one_line_error(lambda: load_checkpoint(c), "model.safetensors", "missing")

    c = _copy(d, tmp_path / "b")
    (c / "config.json").unlink()
    _one_line_error(lambda: load_checkpoint(c), "config.json", "missing")

    c = _copy(d, tmp_path / "c")  # tampered weights: one byte near the end (tensor data)
    raw = bytearray((c / "model.safetensors").read_bytes())
    raw[-3] ^= 0xFF
    (c / "model.safetensors").write_bytes(bytes(raw))
    _one_line_error(lambda: load_checkpoint(c), "sha256", "modified")

    c = _copy(d, tmp_path / "d")  # the config says another architecture than the weights
    cfg = json.loads((c / "config.json").read_text())
    cfg["model"]["model_cfg"]["embed_dim"] = 24
    (c / "config.json").write_text(json.dumps(cfg))
    msg = _one_line_error(lambda: load_checkpoint(c), "shape", "(32, 16)", "(32, 24)")
    assert "'clip." in msg  # names the tensor

    c = _copy(d, tmp_path / "e")
    cfg = json.loads((c / "config.json").read_text())
    cfg["learning_rate"] = 1.0
    (c / "config.json").write_text(json.dumps(cfg))
    _one_line_error(lambda: load_checkpoint(c), "unknown key 'learning_rate'")

    c = _copy(d, tmp_path / "f")
    cfg = json.loads((c / "config.json").read_text())
    cfg["model"]["sigmaa"] = 1.0
    (c / "config.json").write_text(json.dumps(cfg))
    _one_line_error(lambda: load_checkpoint(c), "'model.sigmaa'")

    c = _copy(d, tmp_path / "g")
    (c / "config.json").write_text("{not json")
    _one_line_error(lambda: load_checkpoint(c), "not valid JSON")

    c = _copy(d, tmp_path / "h")
    raw = bytearray((c / "optimizer.safetensors").read_bytes())
    raw[-3] ^= 0xFF
    (c / "optimizer.safetensors").write_bytes(bytes(raw))
    m, _ = load_checkpoint(c)  # the model still loads
    _one_line_error(lambda: load_trainer_state(c, torch.optim.AdamW(m.parameters())), "optimizer.safetensors", "sha256")


# ---------------------------------------------------------------------------------------------------
# as an mrbench encoder


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """The default tiny architecture, random init, saved as a checkpoint."""
    model = DualTowerModel(seed=2).eval()
    d = tmp_path_factory.mktemp("elva") / "final"
    save_checkpoint(d, model, {"lr": 3e-4, "stage1_steps": 10}, step=10, stage="grpo")
    return model, d


def test_encoder_meta_and_hooks(tiny_ckpt) -> None:
    _, d = tiny_ckpt
    enc = ElvaEncoder(str(d), device="cpu")
    assert isinstance(enc, Encoder)
    m = enc.meta
    sha = read_config(d)["weights_sha256"]
    assert m.name == f"elva:{d}" and m.revision == f"sha256:{sha[:16]}" and m.dim == 64
    assert m.similarity == "cosine" and m.needs_pixels and not m.native_image_text
    x = m.extra
    assert x["stage"] == "grpo" and x["step"] == 10 and x["weights_sha256"] == sha
    assert x["training"] == {"lr": 3e-4, "stage1_steps": 10} and x["device"] == "cpu" and x["precision"] == "fp32"
    assert "score-sum" in x["fusion"] and x["image_transform"]["size"] == [64, 64]
    from PIL import Image

    im = Image.new("RGB", (128, 128), (9, 99, 199))
    px = enc.prepare_image(im)
    assert px.dtype == torch.uint8 and tuple(px.shape) == (3, 64, 64)
    fn = pickle.loads(pickle.dumps(enc.pixel_transform()))
    assert (torch.from_numpy(fn(im)) == px).all()
    with pytest.raises(MrbenchError, match="not found"):
        ElvaEncoder(str(d.parent / "missing"), device="cpu")


def test_encoder_matches_model_embed(tiny_ckpt) -> None:
    """Through the harness (decode threads, prepare_image, fusion, normalisation) the encoder gives
    the trainer's own embeddings: the fusion conventions agree."""
    model, d = tiny_ckpt
    enc = ElvaEncoder(d, device="cpu")
    bench = mrbench.load_benchmark("mrbench-synth-tiny")
    for name in ("it2i", "i2t"):
        task = bench.task(name)
        for role, rows in (("query", task.queries), ("candidate", task.candidates[:12])):
            got = encode_items(enc, rows, role=role, task=task, bench=bench, num_workers=2)
            items = model.make_items(
                [r.text for r in rows],
                [load_rgb(bench.image_path(r.image), r.id) if r.image else None for r in rows],
            )
            with torch.no_grad():
                want = model.embed(items).numpy()
            assert got.shape == want.shape
            assert abs(got - want).max() < 1e-5, (name, role)


def test_evaluate_and_registry_forms(tiny_ckpt) -> None:
    _, d = tiny_ckpt
    res = mrbench.evaluate(
        "mrbench-synth-tiny", ElvaEncoder(str(d), device="cpu"), tasks=["t2i", "it2i"],
        cache=False, grain_sensitivity=False,
    )
    data = res.data
    assert data["encoder"]["name"] == f"elva:{d}" and set(data["scores"]["tasks"]) == {"t2i", "it2i"}
    assert data["scores"]["macro"]["n_queries"] > 0
    # registry forms: 'pkg.module:Class' and 'path/file.py:Class'
    a = mrbench.get_encoder("elva_baseline.encoder:ElvaEncoder", spec=str(d), device="cpu")
    import elva_baseline.encoder as mod

    b = mrbench.get_encoder(f"{mod.__file__}:ElvaEncoder", spec=str(d), device="cpu")
    assert a.meta.name == b.meta.name == f"elva:{d}" and a.meta.revision == b.meta.revision


def test_compact_export_keeps_the_vocabulary_rows_and_embeds_identically(trained, tmp_path):
    from elva_baseline.checkpoint import export_compact

    src = trained[2]
    texts = ["a red circle", "a blue square", "a star"]
    dst = export_compact(src, tmp_path / "compact", texts)
    assert not (dst / "optimizer.safetensors").exists()
    assert (dst / "model.safetensors").stat().st_size < (Path(src) / "model.safetensors").stat().st_size / 10
    cfg = read_config(dst)
    assert cfg["sparse_rows"]["clip.token_embedding.weight"]["shape"] == [49408, 32]
    full, _ = load_checkpoint(src)
    small, _ = load_checkpoint(dst)
    items = full.make_items(texts, [None] * 3)
    torch.testing.assert_close(small.embed(items), full.embed(items), rtol=0, atol=0)
    unseen = full.make_items(["zebra"], [None])
    assert not torch.equal(small.embed(unseen), full.embed(unseen))  # tokens outside the vocabulary are zero rows
    assert isinstance(ElvaEncoder(str(dst)), Encoder)


def test_compact_checkpoint_with_missing_rows_tensor_is_refused(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    from elva_baseline.checkpoint import export_compact

    src = trained[2]
    dst = export_compact(src, tmp_path / "compact", ["a star"])
    state = load_file(str(dst / "model.safetensors"))
    del state["clip.token_embedding.weight.rows"]
    save_file(state, str(dst / "model.safetensors"))
    cfg = json.loads((dst / "config.json").read_text())
    cfg["weights_sha256"] = file_sha256(dst / "model.safetensors")
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"lacks clip.token_embedding.weight.rows"):
        load_checkpoint(dst)


def test_a_run_directory_is_named_as_such(trained, tmp_path) -> None:
    """`elva:RUN` (an elva-train run directory, not its final/) says which checkpoint to pass instead
    of calling the run's config.json a checkpoint config of a newer format."""
    from elva_baseline.config import TrainConfig

    _, _, d = trained
    run = tmp_path / "int3"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(TrainConfig().to_dict()))
    _one_line_error(lambda: read_config(run), f"{run} is an elva-train run directory", "no checkpoint yet")
    shutil.copytree(d, run / "last")
    msg = _one_line_error(lambda: ElvaEncoder(str(run), device="cpu"), f"{run} is an elva-train run directory",
                          f"pass {run / 'last'}")
    assert "newer format" not in msg
    shutil.copytree(d, run / "final")
    _one_line_error(lambda: load_checkpoint(run), f"{run} is an elva-train run directory; pass {run / 'final'} "
                    f"(or {run / 'last'} for the last checkpoint)")
    assert read_config(run / "final")["step"] == 2  # its checkpoints still load
    (run / "config.json").unlink()  # final/ alone marks a run directory too
    _one_line_error(lambda: read_config(run), f"pass {run / 'final'}")
