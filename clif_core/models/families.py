"""The Stable Diffusion families the pack supports, and telling which one a checkpoint or folder holds.

A family fixes the architecture's shape: which text encoders there are (by ComfyUI's embedding key), their
widths in the published models, latent channels, and the prediction type its base release was trained
with. Detection reads only key names and shapes, never tensor data, so it is cheap on multi-GB files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from clif_core.errors import ClifError
from clif_core.validation import read_json

CONFIGS_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class FamilySpec:
    """One supported family. Widths and channels are the published models'; tiny models keep the layout."""

    name: str  # "sd1", "sd2", "sdxl"
    title: str
    text_slots: tuple[str, ...]  # ComfyUI's embedding keys, in encoder order
    text_widths: tuple[int, ...]  # hidden size of each encoder in the real model
    text_pad_tokens: tuple[str, ...]  # each tokenizer's pad token
    latent_channels: int
    prediction_type: str  # of the base release; fine-tunes may differ
    config_dir: str  # folder under configs/ with the bundled diffusers configs

    @property
    def config_path(self) -> Path:
        return CONFIGS_DIR / self.config_dir

    @property
    def cross_attention_dim(self) -> int:
        """The UNet's context width: the text encoders' hidden states are concatenated."""
        return sum(self.text_widths)

    @property
    def encoder_subfolders(self) -> tuple[str, ...]:
        """Diffusers folder names of the text encoders, in order: text_encoder, text_encoder_2, ..."""
        return tuple("text_encoder" if i == 0 else f"text_encoder_{i + 1}" for i in range(len(self.text_slots)))

    @property
    def tokenizer_subfolders(self) -> tuple[str, ...]:
        return tuple(s.replace("text_encoder", "tokenizer") for s in self.encoder_subfolders)


FAMILIES: dict[str, FamilySpec] = {
    "sd1": FamilySpec(
        name="sd1",
        title="Stable Diffusion 1.x",
        text_slots=("clip_l",),
        text_widths=(768,),
        text_pad_tokens=("<|endoftext|>",),
        latent_channels=4,
        prediction_type="epsilon",
        config_dir="sd15",
    ),
    "sd2": FamilySpec(
        name="sd2",
        title="Stable Diffusion 2.x",
        text_slots=("clip_h",),
        text_widths=(1024,),
        text_pad_tokens=("!",),
        latent_channels=4,
        prediction_type="v_prediction",  # SD 2.0/2.1 at 768 px; the 512 px "base" releases are epsilon
        config_dir="sd21_v",
    ),
    "sdxl": FamilySpec(
        name="sdxl",
        title="Stable Diffusion XL",
        text_slots=("clip_l", "clip_g"),
        text_widths=(768, 1280),
        text_pad_tokens=("<|endoftext|>", "!"),
        latent_channels=4,
        prediction_type="epsilon",
        config_dir="sdxl_base",
    ),
}

SUPPORTED = "Stable Diffusion 1.x (sd1), 2.x (sd2) and SDXL base (sdxl)"


def get_family(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ClifError(f"unknown model family {name!r}: use one of {', '.join(FAMILIES)}") from None


# Original-layout (LDM / SGM) key prefixes of each text encoder.
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


def _first_key(keys: Sequence[str], prefix: str, suffix: str) -> str | None:
    return next((k for k in keys if k.startswith(prefix) and k.endswith(suffix)), None)


def detect_family_from_state_dict(shapes: Mapping[str, Sequence[int]], *, source: str | Path) -> str:
    """Family of a single-file checkpoint in the original (LDM/SGM) layout, from its key names and shapes.

    `shapes` maps each key to its tensor shape. `source` names the file in error messages.
    (Over 60 lines: a decision table over key names and shapes, each family's evidence beside its test.)
    """
    keys = list(shapes)
    unet_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if unet_in is None:
        hint = ""
        if any(".lora_" in k or "lora_unet_" in k for k in keys[:2000]):
            hint = " It looks like a LoRA; load it on top of a base model instead."
        elif any(k.startswith(("encoder.", "decoder.")) for k in keys[:2000]):
            hint = " It looks like a VAE on its own."
        elif any(k.startswith("input_blocks.") or k.startswith("down_blocks.") for k in keys[:2000]):
            hint = " It looks like a UNet without text encoders and VAE; use a full checkpoint."
        raise ClifError(
            f"{source}: no Stable Diffusion UNet found (no 'model.diffusion_model.*' keys), so this is not a "
            f"full single-file checkpoint.{hint} Supported: {SUPPORTED} checkpoints as found in ComfyUI's "
            "models/checkpoints, or diffusers folders."
        )
    if len(unet_in) != 4 or unet_in[1] != 4:
        raise ClifError(
            f"{source}: the UNet takes {unet_in[1] if len(unet_in) == 4 else '?'} input channels; only plain "
            f"text-to-image models with 4 latent channels are supported (not inpainting or other variants). "
            f"Supported: {SUPPORTED}."
        )

    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has(SDXL_CLIP_G_PREFIX) and has(SDXL_CLIP_L_PREFIX):
        family = "sdxl"
        widths = [
            _width(shapes, SDXL_CLIP_L_PREFIX, "token_embedding.weight"),
            _width(shapes, SDXL_CLIP_G_PREFIX, "token_embedding.weight"),
        ]
    elif has("conditioner.embedders.0.model."):
        raise ClifError(
            f"{source}: this is an SDXL refiner (one OpenCLIP encoder, no CLIP-L); only SDXL base models are "
            f"supported. Supported: {SUPPORTED}."
        )
    elif has(SD2_CLIP_PREFIX):
        family = "sd2"
        widths = [_width(shapes, SD2_CLIP_PREFIX, "token_embedding.weight")]
    elif has(SD1_CLIP_PREFIX):
        family = "sd1"
        widths = [_width(shapes, SD1_CLIP_PREFIX, "token_embedding.weight")]
    else:
        raise ClifError(
            f"{source}: the file has a UNet but no text encoder that this pack knows (expected "
            f"'{SD1_CLIP_PREFIX}*', '{SD2_CLIP_PREFIX}*' or 'conditioner.embedders.*'). "
            f"Supported: {SUPPORTED}."
        )

    attn_key = _first_key(keys, UNET_PREFIX, "attn2.to_k.weight")
    if attn_key is not None and None not in widths:
        context = shapes[attn_key][1]
        if context != sum(widths):
            raise ClifError(
                f"{source}: the UNet attends to {context}-wide text features but the {FAMILIES[family].title} "
                f"text encoder(s) in the file are {'+'.join(map(str, widths))} wide; the file mixes parts of "
                "different models. Re-export it from a working model."
            )
    return family


def _width(shapes: Mapping[str, Sequence[int]], prefix: str, suffix: str) -> int | None:
    key = _first_key(list(shapes), prefix, suffix)
    return int(shapes[key][1]) if key is not None else None


def detect_family_from_diffusers_dir(path: str | Path) -> str:
    """Family of a diffusers folder, from model_index.json and the component configs.

    Two encoders (text_encoder_2, or a UNet with "text_time" addition embeddings) mean SDXL. With one encoder,
    the published widths decide (768 → sd1, 1024 → sd2); for other widths (small models) the encoder kind does:
    OpenCLIP encoders (SD2) use "gelu" and the "!" pad token, OpenAI CLIP-L (SD1) "quick_gelu".
    """
    root = Path(path)
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise ClifError(
            f"{root}: not a diffusers folder (no model_index.json). Point to the folder that holds "
            "model_index.json, unet/, vae/ and text_encoder/, or to a single-file checkpoint."
        )
    index = _read_json(index_path)
    unet_cfg = _read_json(root / "unet" / "config.json")
    pipeline = str(index.get("_class_name", "?"))
    if "text_encoder_2" in index or unet_cfg.get("addition_embed_type") == "text_time":
        if "text_encoder" not in index or index.get("text_encoder") in (None, [None, None]):
            raise ClifError(
                f"{root}: this SDXL-style pipeline ({pipeline}) has no first text encoder (an SDXL refiner?); "
                f"only SDXL base models are supported. Supported: {SUPPORTED}."
            )
        return "sdxl"
    if "text_encoder" not in index:
        raise ClifError(f"{root}: {pipeline} has no text_encoder; supported: {SUPPORTED}.")
    if unet_cfg.get("in_channels", 4) != 4:
        raise ClifError(
            f"{root}: the UNet takes {unet_cfg.get('in_channels')} input channels; only plain text-to-image "
            f"models with 4 latent channels are supported (not inpainting or other variants)."
        )
    context = unet_cfg.get("cross_attention_dim")
    if context == 768:
        return "sd1"
    if context == 1024:
        return "sd2"
    text_cfg = _read_json(root / "text_encoder" / "config.json")
    tok_cfg_path = root / "tokenizer" / "tokenizer_config.json"
    pad = _read_json(tok_cfg_path).get("pad_token") if tok_cfg_path.is_file() else None
    if isinstance(pad, dict):
        pad = pad.get("content")
    if text_cfg.get("hidden_act") == "gelu" or pad == "!":
        return "sd2"
    return "sd1"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ClifError(f"{path} is missing: the diffusers folder is incomplete; copy the whole model folder again")
    return read_json(path, dict, "replace it with the model's original file")
