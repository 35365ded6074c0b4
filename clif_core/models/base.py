"""The in-memory base model every stage of the pack works on: diffusers/transformers components."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch


@dataclass
class TextEncoderSlot:
    """One text encoder with its tokenizer.

    `name` is the key ComfyUI uses for this encoder's embeddings: "clip_l" (SD1.x, SDXL's first),
    "clip_h" (SD2.x), "clip_g" (SDXL's second).
    """

    name: str
    tokenizer: Any  # transformers.CLIPTokenizer
    encoder: Any  # transformers.CLIPTextModel or CLIPTextModelWithProjection

    @property
    def width(self) -> int:
        return int(self.encoder.get_input_embeddings().weight.shape[1])


@dataclass
class BaseModel:
    """A Stable Diffusion-family model as diffusers components.

    `family` is "sd1", "sd2" or "sdxl". `fingerprint` identifies the weights independent of the file
    format they were read from (see `clif_core.models.fingerprint`).
    """

    family: str
    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    scheduler: Any  # a diffusers scheduler
    text: list[TextEncoderSlot]
    fingerprint: str
    source: Optional[Path] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler.config.get("prediction_type", "epsilon"))

    def slot(self, name: str) -> TextEncoderSlot:
        for s in self.text:
            if s.name == name:
                return s
        raise KeyError(f"this {self.family} model has no text encoder named {name!r}")
