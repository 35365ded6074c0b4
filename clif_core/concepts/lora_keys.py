"""LoRA key names in concept files: the kohya/A1111 layout, and conversion from peft adapters.

A concept file stores its LoRA in the layout most tools share (kohya-ss / A1111):

    lora_unet_<diffusers module path with "." → "_">.lora_down.weight   [r, in] or [r, in, kh, kw]
    lora_unet_<...>.lora_up.weight                                      [out, r] or [out, r, 1, 1]
    lora_unet_<...>.alpha                                               scalar; scale = alpha / r

Text-encoder modules use `lora_te_` (SD1/SD2, one encoder) or `lora_te1_` / `lora_te2_` (SDXL's CLIP-L /
CLIP-G) followed by the transformers module path, e.g. `lora_te_text_model_encoder_layers_0_self_attn_q_proj`.

Both consumers were checked: ComfyUI 0.3.75 (`comfy/lora.py` `model_lora_keys_unet` maps
`lora_unet_` + diffusers path through `comfy.utils.unet_to_diffusers`; `model_lora_keys_clip` maps
`lora_te_`/`lora_te1_` to clip_l/clip_h and `lora_te2_` to clip_g for the six modules in `LORA_CLIP_MAP`)
and diffusers (`lora_state_dict` → `_convert_non_diffusers_lora_to_diffusers`). Only the modules below are
accepted by both, so they are the only ones a concept file may carry. diffusers 0.42 also needs a text LoRA
that adapts q/k/v_proj to adapt out_proj too (it guesses the key style from `to_out_lora`); the file
format enforces that.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

from clif_core.errors import ClifError

# Module-name endings (diffusers UNet2DConditionModel) that both ComfyUI and diffusers map from kohya keys.
UNET_LORA_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
)
# Module-name endings (transformers CLIP text encoder) in ComfyUI's LORA_CLIP_MAP.
TEXT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")

UNET_PREFIX = "lora_unet"
LORA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


@dataclass(frozen=True)
class TextEncoderKeys:
    """How one text encoder of a family is named: ComfyUI embedding key, kohya prefix, diffusers component."""

    name: str  # "clip_l", "clip_h", "clip_g"
    kohya_prefix: str  # "lora_te", "lora_te1", "lora_te2"
    component: str  # "text_encoder", "text_encoder_2"


def text_keys(family: str) -> tuple[TextEncoderKeys, ...]:
    """The text encoders of `family` in encoder order.

    kohya names a single encoder `lora_te` and SDXL's two `lora_te1` (CLIP-L) and `lora_te2` (CLIP-G).
    """
    from clif_core.models.families import get_family

    spec = get_family(family)
    if len(spec.text_slots) == 1:
        prefixes: tuple[str, ...] = ("lora_te",)
    else:
        prefixes = tuple(f"lora_te{i + 1}" for i in range(len(spec.text_slots)))
    return tuple(
        TextEncoderKeys(name, prefix, component)
        for name, prefix, component in zip(spec.text_slots, prefixes, spec.encoder_subfolders)
    )


def text_encoder_keys(family: str, encoder: str) -> TextEncoderKeys:
    for keys in text_keys(family):
        if keys.name == encoder:
            return keys
    names = ", ".join(k.name for k in text_keys(family))
    raise ClifError(f"a {family} model has no text encoder {encoder!r}; its encoders are {names}")


def kohya_name(prefix: str, module_name: str) -> str:
    """`lora_unet` + `down_blocks.0.attentions.0.proj_in` → `lora_unet_down_blocks_0_attentions_0_proj_in`."""
    return f"{prefix}_{module_name.replace('.', '_')}"


def lora_modules(lora: Mapping[str, torch.Tensor]) -> list[str]:
    """The kohya module names in a LoRA state dict (the part of each key before the first dot), sorted."""
    return sorted({key.split(".", 1)[0] for key in lora})


def _module_path(model: torch.nn.Module, prefix: str, name: str) -> str:
    """The module path kohya names use: no peft wrapper prefix; CLIP text modules under `text_model.`.

    transformers 5 flattened CLIPTextModel (its modules are `encoder.layers.…`), while kohya, ComfyUI and
    CLIPTextModelWithProjection keep `text_model.encoder.layers.…`.
    """
    name = name.removeprefix("base_model.model.")
    if prefix != UNET_PREFIX and not hasattr(model, "text_model") and not name.startswith("text_model."):
        name = "text_model." + name
    return name


def target_modules(
    model: torch.nn.Module, prefix: str, targets: tuple[str, ...]
) -> Iterator[tuple[str, str, torch.nn.Module]]:
    """(module name in `model`, kohya module name, Linear/Conv2d) for every module a LoRA may adapt.

    Modules already wrapped by peft are reported under their own name with their base layer.
    """
    for name, module in model.named_modules():
        if name.endswith(".base_layer") or not any(name == t or name.endswith("." + t) for t in targets):
            continue
        layer = getattr(module, "base_layer", module)
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            yield name, kohya_name(prefix, _module_path(model, prefix, name)), layer


def to_peft(
    lora: Mapping[str, torch.Tensor], model: torch.nn.Module, prefix: str
) -> tuple[dict[str, torch.Tensor], dict]:
    """A kohya-layout LoRA as (peft state dict, LoraConfig arguments) for `model`, exactly.

    Keys become `<module name in model>.lora_A.weight` / `.lora_B.weight`; the config gives every module its
    own rank and alpha. This goes by the model's own module names instead of diffusers' kohya key guessing,
    which (0.42) drops per-module alphas and skips text-encoder modules in some combinations.
    Call `check_lora_against` first: every module must exist in `model`.
    """
    targets = UNET_LORA_TARGETS if prefix == UNET_PREFIX else TEXT_LORA_TARGETS
    names = {kohya: name for name, kohya, _ in target_modules(model, prefix, targets)}
    state_dict: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for module in lora_modules(lora):
        name = names[module]
        state_dict[f"{name}.lora_A.weight"] = lora[module + ".lora_down.weight"]
        state_dict[f"{name}.lora_B.weight"] = lora[module + ".lora_up.weight"]
        ranks[name] = int(lora[module + ".lora_down.weight"].shape[0])
        alphas[name] = float(lora[module + ".alpha"].item())
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = {
        "r": r,
        "lora_alpha": alpha,
        # "^name" anchors peft's pattern match to the whole module name
        "rank_pattern": {f"^{n}": v for n, v in ranks.items() if v != r},
        "alpha_pattern": {f"^{n}": v for n, v in alphas.items() if v != alpha},
        "target_modules": sorted(ranks),
    }
    return state_dict, config


def lora_from_peft(model: torch.nn.Module, prefix: str, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The kohya-layout LoRA of one peft adapter injected into `model` (a UNet or a text encoder).

    `prefix` is `lora_unet`, or the encoder's kohya prefix from `text_encoder_keys(...)`. Key names come from
    diffusers' `convert_state_dict_to_kohya`; each `.alpha` is taken from the layer's own peft scaling
    (alpha = scaling · r), so any lora_alpha, alpha_pattern or rank_pattern the trainer used is kept exactly.
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    targets = UNET_LORA_TARGETS if prefix == UNET_PREFIX else TEXT_LORA_TARGETS
    # convert_state_dict_to_kohya names the result after the diffusers component it is told about.
    component = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder",
                 "lora_te2": "text_encoder_2"}.get(prefix)
    if component is None:
        raise ValueError(f"unknown kohya prefix {prefix!r}")
    peft_sd = get_peft_model_state_dict(model, adapter_name=adapter_name)
    if any("lora_magnitude_vector" in k for k in peft_sd):
        raise ClifError(
            f"adapter {adapter_name!r} uses DoRA, which concept files v1 do not carry (diffusers drops it); "
            "train a plain LoRA (use_dora=False)"
        )
    converted = convert_state_dict_to_kohya(
        {f"{component}.{_module_path(model, prefix, k)}": v for k, v in peft_sd.items()}
    )
    produced = "lora_te1" if component == "text_encoder" else ("lora_te2" if component == "text_encoder_2" else prefix)
    lora: dict[str, torch.Tensor] = {}
    for key, value in converted.items():
        if key.endswith(".alpha"):
            continue
        lora[prefix + key[len(produced) :]] = value.detach().clone()

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.scaling:
            module_key = kohya_name(prefix, _module_path(model, prefix, name))
            if module_key + ".lora_down.weight" not in lora:
                continue
            rank = module.r[adapter_name]
            lora[module_key + ".alpha"] = torch.tensor(float(module.scaling[adapter_name]) * rank)
    check_targets(lora, prefix, targets, where=f"adapter {adapter_name!r}")
    check_lora_structure(lora, where=f"adapter {adapter_name!r}")
    return lora


def check_targets(lora: Mapping[str, torch.Tensor], prefix: str, targets: tuple[str, ...], where: str) -> None:
    """Every module starts with `prefix` and is one of `targets` (those both ComfyUI and diffusers load)."""
    endings = tuple("_" + t.replace(".", "_") for t in targets)
    bad = [m for m in lora_modules(lora) if not (m.startswith(prefix + "_") and m.endswith(endings))]
    if bad:
        raise ClifError(
            f"{where}: LoRA on modules that ComfyUI and diffusers do not both load: {', '.join(bad[:5])}"
            f"{' …' if len(bad) > 5 else ''}. Target only {', '.join(targets)}."
        )


def check_lora_structure(lora: Mapping[str, torch.Tensor], where: str) -> None:
    """Every module has down, up and a scalar alpha with matching ranks; nothing else is present."""
    for key in lora:
        if not key.endswith(LORA_SUFFIXES):
            raise ClifError(
                f"{where}: unexpected LoRA tensor {key!r}; concept files hold only "
                f"{', '.join(LORA_SUFFIXES)} per module (no DoRA, LoCon mid or bias patches)"
            )
    for module in lora_modules(lora):
        parts = {s: lora.get(module + s) for s in LORA_SUFFIXES}
        missing = [s for s, t in parts.items() if t is None]
        if missing:
            raise ClifError(f"{where}: LoRA module {module} lacks {', '.join(missing)}; the file is incomplete")
        down, up, alpha = parts[".lora_down.weight"], parts[".lora_up.weight"], parts[".alpha"]
        if alpha.numel() != 1:
            raise ClifError(f"{where}: {module}.alpha has shape {list(alpha.shape)}; it must be a single number")
        if down.dim() not in (2, 4) or up.dim() != down.dim() or up.shape[1] != down.shape[0]:
            raise ClifError(
                f"{where}: {module} has down {list(down.shape)} and up {list(up.shape)}, which do not form a "
                "LoRA (up[:, r] @ down[r, :])"
            )


def check_lora_against(lora: Mapping[str, torch.Tensor], model: torch.nn.Module, prefix: str, where: str) -> None:
    """Every LoRA module exists in `model` and its down/up shapes fit the module's weight."""
    targets = UNET_LORA_TARGETS if prefix == UNET_PREFIX else TEXT_LORA_TARGETS
    layers = {kohya: layer for _, kohya, layer in target_modules(model, prefix, targets)}
    for module in lora_modules(lora):
        layer = layers.get(module)
        if layer is None:
            raise ClifError(
                f"{where}: the LoRA adapts {module}, which this base model does not have; the file was made "
                "for a model with a different layout"
            )
        down, up = lora[module + ".lora_down.weight"], lora[module + ".lora_up.weight"]
        weight = layer.weight
        ok = up.shape[0] == weight.shape[0] and down.shape[1] == weight.shape[1]
        if weight.dim() == 4:
            ok = ok and down.dim() == 4 and tuple(down.shape[2:]) == tuple(weight.shape[2:])
        if not ok:
            raise ClifError(
                f"{where}: LoRA {module} (down {list(down.shape)}, up {list(up.shape)}) does not fit the base "
                f"model's weight {list(weight.shape)}; the file was made for a model of another size"
            )
