"""elva_baseline.model: the dual encoder (shapes, normalisation, fusion) and the Gaussian exploration head."""

from __future__ import annotations

import copy
import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from elva_baseline.model import (  # noqa: E402
    DEFAULT_TINY_CONFIG,
    DualTowerModel,
    GaussianHead,
    Items,
    resolve_model_config,
)
from mrbench.errors import MrbenchError  # noqa: E402

SMALL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> DualTowerModel:
    return DualTowerModel(seed=0).eval()


def _images(n: int, size: int = 128) -> list[Image.Image]:
    out = []
    for i in range(n):
        im = Image.new("RGB", (size, size), ((40 * i) % 256, (90 + 30 * i) % 256, (200 - 25 * i) % 256))
        im.paste((255, 255, 255), (10 + i, 20, 60, 70 + i))
        out.append(im)
    return out


def test_default_config_and_preprocess(model: DualTowerModel) -> None:
    assert model.arch == "elva-tiny" and model.model_cfg == DEFAULT_TINY_CONFIG
    assert model.embed_dim == 64 and model.image_size == (64, 64) and model.context_length == 32
    px = model.preprocess(_images(1)[0])
    assert px.dtype == torch.uint8 and tuple(px.shape) == (3, 64, 64)
    grey = model.preprocess(Image.new("L", (100, 80), 7))  # any mode and aspect -> RGB square
    assert tuple(grey.shape) == (3, 64, 64) and int(grey.max()) == 7
    tok = model.tokenize(["a red circle", "a"])
    assert tok.dtype == torch.int64 and tuple(tok.shape) == (2, 32)
    assert "head.log_sigma" in model.state_dict() and "pixel_mean" not in model.state_dict()


def test_towers_shapes_normalised_and_uint8_equals_float(model: DualTowerModel) -> None:
    with torch.no_grad():
        t = model.encode_text(model.tokenize(["a red circle", "a blue square above a star", ""]))
        px = torch.stack([model.preprocess(im) for im in _images(4)])
        i8 = model.encode_image(px)
        f01 = model.encode_image(px.float() / 255.0)  # float pixels are read as [0, 1]
    assert tuple(t.shape) == (3, 64) and tuple(i8.shape) == (4, 64)
    assert torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(i8.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(i8, f01, atol=1e-6)


def test_embed_fusion_convention(model: DualTowerModel) -> None:
    """text -> text tower; image -> image tower; image+text -> normalize(norm(t) + norm(i)); neither -> ''."""
    ims = _images(3)
    items = model.make_items(["a red circle", None, "make it blue", None], [None, ims[0], ims[1], None], ids=list("abcd"))
    assert items.has_text.tolist() == [True, False, True, True]
    assert items.has_image.tolist() == [False, True, True, False]
    with torch.no_grad():
        e = model.embed(items)
        t = model.encode_text(model.tokenize(["a red circle", "make it blue", ""]))
        i = model.encode_image(torch.stack([model.preprocess(ims[0]), model.preprocess(ims[1])]))
    assert tuple(e.shape) == (4, 64)
    assert torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(e[0], t[0], atol=1e-6)
    assert torch.allclose(e[1], i[0], atol=1e-6)
    assert torch.allclose(e[2], F.normalize(t[1] + i[1], dim=-1), atol=1e-6)
    assert torch.allclose(e[3], t[2], atol=1e-6)
    # embed is differentiable and Items.select / cat keep rows
    sub = items.select([2, 0])
    assert sub.ids == ["c", "a"] and torch.allclose(model.embed(sub).detach(), e[[2, 0]], atol=1e-6)
    both = Items.cat([items.select([0]), items.select([1, 2])])
    assert both.ids == ["a", "b", "c"] and torch.allclose(model.embed(both).detach(), e[:3], atol=1e-6)
    assert model.embed(items).requires_grad


def test_seeded_init_and_custom_config(tmp_path) -> None:
    a = DualTowerModel(SMALL_CFG, seed=5)
    b = DualTowerModel(copy.deepcopy(SMALL_CFG), seed=5)
    c = DualTowerModel(SMALL_CFG, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["clip.text_projection"], sc["clip.text_projection"])
    assert a.arch == "custom" and a.embed_dim == 16 and a.image_size == (32, 32)
    # an open_clip_config.json-style dict carries its preprocessing
    d = DualTowerModel({"model_cfg": SMALL_CFG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    assert d.preprocess_cfg["mean"] == [0.5] * 3 and torch.allclose(d.pixel_std.flatten(), torch.full((3,), 0.25))
    # a JSON file, optionally in open_clip_config.json layout
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"model_cfg": SMALL_CFG}))
    label, cfg = resolve_model_config(p)
    assert label == "cfg" and cfg == SMALL_CFG
    # an open_clip architecture name resolves to its config (not built here: too big for a unit test)
    label, cfg = resolve_model_config("ViT-B-32")
    assert label == "ViT-B-32" and cfg["embed_dim"] == 512
    with pytest.raises(ValueError, match="ViT-B-32"):
        resolve_model_config("ViT-B-3")
    with pytest.raises(ValueError, match="embed_dim"):
        resolve_model_config({"vision_cfg": {}, "text_cfg": {}})


def test_pretrained_weights_from_file(tmp_path) -> None:
    from safetensors.torch import save_file

    src = DualTowerModel(SMALL_CFG, seed=11)
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.clip.state_dict().items()}, str(f))
    dst = DualTowerModel(SMALL_CFG, seed=99, pretrained=f)
    assert all(torch.equal(v, dst.clip.state_dict()[k]) for k, v in src.clip.state_dict().items())
    assert dst.config_dict()["pretrained"] == str(f)
    with pytest.raises(MrbenchError) as e:  # weights of another architecture: one line naming a tensor
        DualTowerModel(None, pretrained=f)
    assert "\n" not in str(e.value) and "shape" in str(e.value)
    with pytest.raises(MrbenchError, match="not found"):
        DualTowerModel(SMALL_CFG, pretrained=tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------------
# Gaussian head


def test_gaussian_log_prob_matches_torch_normal() -> None:
    head = GaussianHead(sigma=0.03)
    gen = torch.Generator().manual_seed(0)
    mean = F.normalize(torch.randn(5, 3, 64, generator=gen), dim=-1)
    x = head.sample(mean, 7, gen)
    assert tuple(x.shape) == (5, 3, 7, 64)
    ref = torch.distributions.Normal(mean.unsqueeze(-2), 0.03).log_prob(x).sum(-1)
    got = head.log_prob(x, mean)
    assert tuple(got.shape) == (5, 3, 7)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-3)
    # float64 exactness
    m64, x64 = mean.double(), x.double()
    ref64 = torch.distributions.Normal(m64.unsqueeze(-2), torch.tensor(0.03, dtype=torch.float64)).log_prob(x64).sum(-1)
    assert torch.allclose(head.log_prob(x64, m64), ref64, rtol=1e-6, atol=1e-3)
    with pytest.raises(ValueError, match="samples"):
        head.log_prob(x[..., :10], mean)


def test_gaussian_sampling_determinism_and_spread() -> None:
    head = GaussianHead(sigma=0.02)
    mean = F.normalize(torch.randn(4, 64), dim=-1)
    a = head.sample(mean, 8, torch.Generator().manual_seed(1))
    b = head.sample(mean, 8, torch.Generator().manual_seed(1))
    c = head.sample(mean, 8, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    big = head.sample(mean, 2000, torch.Generator().manual_seed(3))
    dev = big - mean.unsqueeze(1)
    assert abs(dev.std().item() - 0.02) < 0.001 and abs(dev.mean().item()) < 0.001
    n = head.normalize(big)
    assert torch.allclose(n.norm(dim=-1), torch.ones(4, 2000), atol=1e-5)
    # cosine noise per pair is about sigma * sqrt(2)... of the same order as sigma
    cos = (n[:, :, None, :] * n[:, None, :2, :]).sum(-1)
    assert cos.min() > 0.9
    with pytest.raises(ValueError):
        head.sample(mean, 0)
    with pytest.raises(ValueError):
        GaussianHead(sigma=0.0)


def test_gaussian_gradients() -> None:
    fixed = GaussianHead(sigma=0.05)
    assert list(fixed.parameters()) == [] and "log_sigma" in fixed.state_dict()
    learn = GaussianHead(sigma=0.05, learnable=True)
    assert [n for n, _ in learn.named_parameters()] == ["log_sigma"]
    assert math.isclose(float(learn.sigma.detach()), 0.05, rel_tol=1e-6)

    mean = F.normalize(torch.randn(3, 16), dim=-1).requires_grad_(True)
    x = learn.sample(mean, 4, torch.Generator().manual_seed(0))
    assert not x.requires_grad  # REINFORCE actions are detached
    adv = torch.randn(3, 4)
    (-(adv * learn.log_prob(x, mean)).mean()).backward()
    assert learn.log_sigma.grad is not None and learn.log_sigma.grad.abs() > 0
    assert mean.grad is not None and mean.grad.abs().sum() > 0
    # reparameterised samples keep the graph to the mean
    mean2 = mean.detach().clone().requires_grad_(True)
    fixed.sample(mean2, 2, reparameterize=True).sum().backward()
    assert torch.allclose(mean2.grad, torch.full_like(mean2, 2.0))


def test_head_in_model(model: DualTowerModel) -> None:
    m = DualTowerModel(SMALL_CFG, sigma=0.07, learn_sigma=True)
    assert math.isclose(float(m.head.sigma.detach()), 0.07, rel_tol=1e-6)
    assert any(n == "head.log_sigma" for n, _ in m.named_parameters())
    assert math.isclose(float(model.head.sigma), 0.02, rel_tol=1e-6)  # the default
    assert not any(n == "head.log_sigma" for n, _ in model.named_parameters())
