"""open_clip ViT-B-32 with random weights, for timing the harness against a real architecture's cost.

Random init (no download), the model's own preprocessing and BPE tokenizer (shipped with open_clip);
image+text items by the sum of the normalised embeddings. The real open_clip family (pretrained
tags, local checkpoints) lands with the encoder issue; this file only exists for benchmarks/.
Use as ``-e benchmarks/openclip_random_encoder.py:OpenClipRandom``.
"""

from __future__ import annotations

from mrbench.encoders.base import EncoderMeta


class OpenClipRandom:
    def __init__(self, arch: str = "ViT-B-32", seed: int = 0) -> None:
        import open_clip
        import torch

        torch.manual_seed(seed)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        dim = self.model.text_projection.shape[1] if self.model.text_projection is not None else 512
        self.meta = EncoderMeta(name=f"openclip-random-{arch}", revision=f"seed{seed}", dim=int(dim), batch_size=32)

    def encode(self, items, *, role, task):
        import torch
        import torch.nn.functional as F

        out = torch.zeros(len(items), self.meta.dim)
        with torch.inference_mode():
            ii = [i for i, it in enumerate(items) if it.image is not None]
            if ii:
                x = torch.stack([self.preprocess(items[i].image) for i in ii])
                out[ii] += F.normalize(self.model.encode_image(x), dim=-1)
            ti = [i for i, it in enumerate(items) if it.text]
            if ti:
                out[ti] += F.normalize(self.model.encode_text(self.tokenizer([items[i].text for i in ti])), dim=-1)
        return out.numpy()
