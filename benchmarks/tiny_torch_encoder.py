"""A small random-init torch encoder with a realistic cost profile, for harness-overhead benchmarks.

Images: 3 strided conv layers on the 128-px picture + mean pool + linear (about a millisecond per
image on one CPU core, the order of a small vision tower). Texts: hashed word embeddings (bag).
Image+text items: sum of the two normalised parts. Not a meaningful retriever — a timing stand-in
until the real encoder families land. Use as ``-e benchmarks/tiny_torch_encoder.py:TinyTorchEncoder``.
"""

from __future__ import annotations

import zlib

import numpy as np

from mrbench.encoders.base import EncoderMeta


class TinyTorchEncoder:
    def __init__(self, dim: int = 256, image_size: int = 128, seed: int = 0) -> None:
        import torch

        torch.manual_seed(seed)
        self.size = image_size
        self.vision = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 5, stride=2, padding=2), torch.nn.GELU(),
            torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(64, 128, 3, stride=2, padding=1), torch.nn.GELU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(128, dim),
        ).eval()
        self.words = torch.nn.EmbeddingBag(1 << 14, dim, mode="mean")
        self.meta = EncoderMeta(name="tiny-torch", revision=f"seed{seed}", dim=dim, batch_size=64,
                                modalities=("text", "image"), native_image_text=False)

    def encode(self, items, *, role, task):
        import torch
        import torch.nn.functional as F

        out = torch.zeros(len(items), self.meta.dim)
        with torch.inference_mode():
            img_idx = [i for i, it in enumerate(items) if it.image is not None]
            if img_idx:
                arr = np.stack([np.asarray(items[i].image.resize((self.size, self.size)), np.float32) for i in img_idx])
                x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0
                out[img_idx] += F.normalize(self.vision(x), dim=-1)
            txt_idx = [i for i, it in enumerate(items) if it.text]
            if txt_idx:
                ids, offsets = [], []
                for i in txt_idx:
                    offsets.append(len(ids))
                    ids.extend(zlib.crc32(w.encode()) % (1 << 14) for w in items[i].text.lower().split())
                e = self.words(torch.tensor(ids), torch.tensor(offsets))
                out[txt_idx] += F.normalize(e, dim=-1)
        return out.numpy()
