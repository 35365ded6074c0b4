"""The frozen CLIP vision tower of stage 1, from a transformers folder or a single .safetensors file.

Accepted:
- a transformers folder of `CLIPVisionModelWithProjection` (config.json model_type "clip_vision_model"),
  or of a full `CLIPModel` (model_type "clip"), whose text projection and logit scale are used as well;
- a single .safetensors file in the transformers key layout (`vision_model.…`, `visual_projection.weight`),
  which is how ComfyUI's models/clip_vision files are stored (ViT-L/14, ViT-H/14, ViT-bigG/14). The
  architecture is read from the tensor shapes; other sizes need their config in the metadata key
  `clif.vision_config` (`save_vision_tower_file` writes it).
Which text encoder a tower belongs to is decided by its projection width (`pair_encoder`).

A vision-only folder may say how its tower was paired with a text encoder when it was trained, in a
`contrastive.json` beside its config (the sandbox pretraining writes one): `"text_features"` naming the text
encoder's pooled output with no projection, and the `"logit_scale"` it was trained at. Stage 1 then uses
exactly that pairing (an identity text projection, frozen, and that temperature), as it uses a full CLIP
checkpoint's own text projection and logit scale, instead of learning a head of its own.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from clif_core.errors import ClifError
from clif_core.validation import parse_json, read_json

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_METADATA_KEY = "clif.vision_config"

# hidden size → (attention heads, activation) of the published CLIP vision towers
_KNOWN = {768: (12, "quick_gelu"), 1024: (16, "quick_gelu"), 1280: (16, "gelu"), 1664: (16, "gelu")}
_NAMES = {768: "ViT-B", 1024: "ViT-L/14", 1280: "ViT-H/14", 1664: "ViT-bigG/14"}


@dataclass
class VisionTower:
    """A frozen CLIP vision tower and what it brings along. `text_projection` [proj, text width] and
    `logit_scale` come from full CLIP checkpoints, or from a vision folder's declared pairing."""

    model: Any  # transformers.CLIPVisionModelWithProjection
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    text_projection: Optional[torch.Tensor] = None
    logit_scale: Optional[float] = None

    @property
    def projection_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def description(self) -> str:
        hidden = int(self.model.config.hidden_size)
        return f"{_NAMES.get(hidden, f'{hidden}-wide')} vision tower ({self.source})"

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings (float32, not normalised) of images [B, 3, H, W] in 0..1."""
        param = next(self.model.parameters())
        x = images.to(param.device, torch.float32)
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[..., top : top + self.image_size, left : left + self.image_size].clamp(0, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(param.dtype)
        return self.model(pixel_values=x).image_embeds.float()


def load_vision_tower(path: str | Path, device: torch.device, dtype: torch.dtype) -> VisionTower:
    """Load a CLIP vision tower (see the module docstring) on `device` in `dtype`, frozen, in eval mode."""
    source = Path(path).expanduser()
    if source.is_dir():
        tower = _from_folder(source)
    elif source.is_file():
        tower = _from_file(source)
    else:
        raise ClifError(
            f"vision tower {source} does not exist; give a CLIP vision .safetensors file (models/clip_vision) "
            "or a transformers CLIP folder"
        )
    tower.model.requires_grad_(False).eval().to(device=device, dtype=dtype)
    if tower.text_projection is not None:
        tower.text_projection = tower.text_projection.to(device=device, dtype=torch.float32)
    return tower


def _from_folder(folder: Path) -> VisionTower:
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ClifError(
            f"{folder} has no config.json; a CLIP vision folder is written by transformers' save_pretrained")
    fix = "replace it with the file transformers' save_pretrained wrote"
    config = read_json(config_path, dict, fix)
    mean, std = CLIP_MEAN, CLIP_STD
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        p = read_json(pre, dict, fix)
        mean, std = (_three_numbers(p, key, default, pre)
                     for key, default in (("image_mean", mean), ("image_std", std)))
    if not any(folder.glob("*.safetensors")):
        raise ClifError(f"{folder} holds no .safetensors weights; pickled weights (pytorch_model.bin) are never "
                        "loaded. Save the tower with save_pretrained(safe_serialization=True) or use a .safetensors "
                        "file")
    kind = config.get("model_type")
    if kind == "clip":
        full = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        vision_config = full.config.vision_config
        vision_config.projection_dim = full.config.projection_dim
        model = CLIPVisionModelWithProjection(vision_config)
        model.vision_model.load_state_dict(full.vision_model.state_dict())
        model.visual_projection.load_state_dict(full.visual_projection.state_dict())
        return VisionTower(model, int(vision_config.image_size), mean, std, str(folder),
                           text_projection=full.text_projection.weight.detach().clone(),
                           logit_scale=float(full.logit_scale.item()))
    if kind == "clip_vision_model":
        model = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        tower = VisionTower(model, int(model.config.image_size), mean, std, str(folder))
        if (folder / PAIRING_FILE).is_file():
            tower.text_projection, tower.logit_scale = _declared_pairing(folder / PAIRING_FILE, tower.projection_dim)
        return tower
    raise ClifError(f"{config_path}: model_type {kind!r} is not a CLIP model (expected 'clip' or 'clip_vision_model')")


def _three_numbers(record: dict, key: str, default: tuple, where: Path) -> tuple[float, float, float]:
    value = record.get(key, default)
    if not (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
        raise ClifError(f"{where}: field {key!r} is {value!r}; it must be three numbers, one per colour channel")
    return tuple(float(v) for v in value)


def _infer_config(sd: dict[str, torch.Tensor], where: str) -> dict[str, Any]:
    try:
        patch = sd["vision_model.embeddings.patch_embedding.weight"]
        positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
        projection = sd["visual_projection.weight"].shape[0]
        intermediate = sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as err:
        raise ClifError(
            f"{where} is not a CLIP vision model with projection (no {err.args[0]}); use a models/clip_vision file "
            "such as CLIP-ViT-L/14 or CLIP-ViT-bigG/14"
        ) from None
    hidden = patch.shape[0]
    if hidden not in _KNOWN:
        raise ClifError(
            f"{where}: a {hidden}-wide CLIP vision tower is not a published size; write its transformers config into "
            f"the file's metadata key {CONFIG_METADATA_KEY!r} or use a transformers folder"
        )
    heads, act = _KNOWN[hidden]
    layers = len({m.group(1) for k in sd if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))})
    return {
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "hidden_act": act, "patch_size": patch.shape[-1],
        "image_size": patch.shape[-1] * math.isqrt(positions - 1), "projection_dim": projection,
        "layer_norm_eps": 1e-5,
    }


PAIRING_FILE = "contrastive.json"


def _declared_pairing(path: Path, projection_dim: int) -> tuple[torch.Tensor, float]:
    """(identity text projection, logit scale) from a tower folder's `contrastive.json`."""
    fix = "delete it to let stage 1 learn its own text head, or write the pairing the tower was trained with"
    data = read_json(path, dict, fix)
    text, scale = data.get("text_features"), data.get("logit_scale")
    if not isinstance(text, str) or not text.startswith("pooler_output") or "no projection" not in text:
        raise ClifError(f"{path}: \"text_features\" is {text!r}; the only pairing understood is the text encoder's "
                        f"pooled output with no projection (\"pooler_output ... (no projection)\"); {fix}")
    if data.get("normalize", True) is not True:
        raise ClifError(f"{path}: \"normalize\" is {data['normalize']!r}; stage 1 compares normalised features; {fix}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ClifError(f"{path}: \"logit_scale\" is {scale!r}; it must be a finite number (the log of the "
                        f"temperature the tower was trained at); {fix}")
    return torch.eye(projection_dim), float(scale)


def _from_file(path: Path) -> VisionTower:
    from safetensors import SafetensorError, safe_open
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    where = str(path)
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise ClifError(f"{where}: only .safetensors vision towers are read (pickled files are never loaded)")
    try:
        with safe_open(where, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ClifError(f"{where} cannot be read ({err}); the file is damaged or not safetensors") from None
    if any(k.startswith("visual.transformer.") for k in sd):
        raise ClifError(
            f"{where} is in open_clip's layout; use the transformers layout that ComfyUI's clip_vision downloads "
            "use (keys vision_model.…), or a transformers folder"
        )
    if CONFIG_METADATA_KEY in metadata:
        config = parse_json(metadata[CONFIG_METADATA_KEY], dict, f"{where}: metadata {CONFIG_METADATA_KEY!r}",
                            "write it with save_vision_tower_file or remove the key")
    else:
        config = _infer_config(sd, where)
    try:
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
        image_size = int(config.get("image_size", model.config.image_size))
    except Exception as err:  # transformers' config validation raises its own classes (e.g. StrictDataclassError)
        raise ClifError(f"{where}: metadata {CONFIG_METADATA_KEY!r} is not a CLIP vision config ({err}); write it "
                        "with save_vision_tower_file or remove the key") from None
    own = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
    try:
        missing, unexpected = model.load_state_dict(own, strict=False)
    except RuntimeError as err:  # shapes that do not fit the config
        first = str(err).split("\n\t", 2)[1].strip() if "\n\t" in str(err) else str(err)
        raise ClifError(f"{where} does not fit a CLIP vision tower of its config ({first})") from None
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ClifError(f"{where} does not fit a CLIP vision tower: missing {missing[:3]}, unexpected {unexpected[:3]}")
    text_projection = sd.get("text_projection.weight")
    logit_scale = float(sd["logit_scale"].item()) if "logit_scale" in sd else None
    return VisionTower(model, image_size, CLIP_MEAN, CLIP_STD, where, text_projection, logit_scale)


def save_vision_tower_file(model: Any, path: str | Path) -> Path:
    """Write a `CLIPVisionModelWithProjection` as one .safetensors file with its config in the metadata."""
    from clif_core.fileio import save_safetensors_atomic

    config = {k: v for k, v in model.config.to_diff_dict().items() if not k.startswith(("_", "transformers_version"))}
    config.pop("model_type", None)
    config.pop("architectures", None)
    return save_safetensors_atomic(model.state_dict(), path, {CONFIG_METADATA_KEY: json.dumps(config)})


def text_output_width(slot: Any) -> int:
    """Width of a text encoder's pooled feature: its projection's when it has one."""
    projection = getattr(slot.encoder, "text_projection", None)
    return int(projection.out_features) if projection is not None else slot.width


def pair_encoder(base: BaseModel, tower: VisionTower) -> tuple[str, str]:
    """(encoder name, note): the text encoder this vision tower trains against, by projection width.

    SDXL pairs encoder 2 (clip_g) with a bigG tower; with a tower that fits only encoder 1 (a ViT-L/14), stage 1
    trains clip_l alone and the note says so.
    """
    fits = []
    for slot in base.text:
        width = text_output_width(slot)
        projection = tower.text_projection
        if width == tower.projection_dim or (
            projection is not None and tuple(projection.shape) == (tower.projection_dim, slot.width)
        ):
            fits.append(slot.name)
    if not fits:
        widths = ", ".join(f"{s.name} {text_output_width(s)}" for s in base.text)
        raise ClifError(
            f"the {tower.description} projects to {tower.projection_dim} values but this {base.family} model's text "
            f"encoders give {widths}; use the matching tower (SD1.x: ViT-L/14, SD2.x: ViT-H/14, SDXL: ViT-bigG/14 "
            "or ViT-L/14)"
        )
    name = fits[-1]  # SDXL: clip_g when the tower fits it
    if base.family == "sdxl" and name == "clip_l":
        return name, (
            "no bigG vision tower was given: stage 1 trained text encoder 1 (clip_l) only; the clip_g concept "
            "vectors stay at their class-word start until stage 2"
        )
    return name, f"stage 1 trained the {name} concept vectors against the {tower.description}"
