"""A short identifier of a base model's weights that does not depend on how they were stored.

What is hashed (SHA-256, first 16 hex digits): for the UNet and then each text encoder in order, every
tensor of its state dict sorted by name, as its name (transformers' optional `text_model.` level removed,
so both CLIP layouts agree), its shape, and its values rounded to float16. A tensor with more than 65,536
values contributes 65,536 of them, evenly strided; token-embedding tables are hashed whole, since that is
where concept tokens live.

So the fingerprint is the same whether a model was read from a diffusers folder or a single-file checkpoint
(the conversion is exact), and for float32 and float16 storage of the same weights (float16 storage is the
round-to-nearest of float32, which the hash applies anyway). bfloat16 storage rounds differently and gives
another fingerprint. `load_base_model` takes it from the weights as stored, before casting them to the
working dtype, so the same file gives the same fingerprint on a GPU in bf16 and on a CPU in fp32.
The VAE is left out: swapping it does not change what concept files fit the model.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import torch

SAMPLE = 65536


def fingerprint(unet: Any, text_encoders: Iterable[Any]) -> str:
    digest = hashlib.sha256()
    parts = [("unet", unet)] + [(f"text{i}", enc) for i, enc in enumerate(text_encoders)]
    for part, module in parts:
        state = {_canonical(k): v for k, v in module.state_dict().items() if not k.endswith("position_ids")}
        for name in sorted(state):
            tensor = state[name].detach()
            digest.update(f"{part}.{name}:{tuple(tensor.shape)};".encode())
            flat = tensor.reshape(-1)
            if flat.numel() > SAMPLE and not name.endswith("token_embedding.weight"):
                index = torch.arange(SAMPLE, dtype=torch.int64, device=flat.device) * flat.numel() // SAMPLE
                flat = flat[index]
            digest.update(flat.to(torch.float16).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _canonical(key: str) -> str:
    return key[len("text_model.") :] if key.startswith("text_model.") else key
