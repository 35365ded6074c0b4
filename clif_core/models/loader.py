"""Loading a base model as diffusers components, from a diffusers folder or a single-file checkpoint.

Nothing here ever asks a model hub: folders load with `local_files_only=True`; single files are converted
with diffusers' own converters (`diffusers.loaders.single_file_utils`) against the configs bundled in
`configs/`, or against the configs a file carries in its metadata under `clif.diffusers_configs` (JSON,
{component: config}) — that is how small SD-shaped models (tiny fixtures, the sandbox model) load from one
file. Pickled checkpoints are only read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from clif_core.errors import ClifError
from clif_core.models.base import BaseModel, TextEncoderSlot
from clif_core.models.clip_bpe import clip_tokenizer
from clif_core.models.device import default_dtype, pick_device_and_dtype
from clif_core.models.families import (
    SD1_CLIP_PREFIX,
    SD2_CLIP_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    SUPPORTED,
    FamilySpec,
    detect_family_from_diffusers_dir,
    detect_family_from_state_dict,
    get_family,
)
from clif_core.models.fingerprint import fingerprint
from clif_core.validation import read_json

CONFIGS_METADATA_KEY = "clif.diffusers_configs"
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def load_base_model(
    path: Union[str, Path],
    *,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
    prediction_type: Optional[str] = None,
) -> BaseModel:
    """Load a Stable Diffusion 1.x / 2.x / XL base model from a diffusers folder or a single file.

    `device` None picks the best present (see `pick_device_and_dtype`); `dtype` None uses that device's
    working dtype. `prediction_type` ("epsilon", "v_prediction") overrides the scheduler's, for single files
    whose family default is wrong (e.g. an SD 2.x 512 px "base" model is epsilon, the family default is v).
    The returned models are in eval mode with gradients off.
    """
    source = Path(path).expanduser()
    if prediction_type is not None and prediction_type not in _PREDICTION_TYPES:
        raise ClifError(f"prediction_type {prediction_type!r} is not one of {', '.join(_PREDICTION_TYPES)}")
    dev, default = pick_device_and_dtype(device)
    dtype = dtype or default

    if source.is_dir():
        parts = _load_diffusers_dir(source, prediction_type)
    elif source.is_file():
        state, metadata = read_checkpoint(source)
        family = detect_family_from_state_dict({k: tuple(v.shape) for k, v in state.items()}, source=source)
        configs = embedded_configs(metadata, source)
        parts = components_from_original(state, family, configs, source=source, prediction_type=prediction_type)
    else:
        raise ClifError(f"{source} does not exist: give a diffusers folder or a checkpoint file ({SUPPORTED})")
    return assemble_base_model(**parts, source=source, device=dev, dtype=dtype)


def assemble_base_model(
    *,
    family: str,
    unet: Any,
    vae: Any,
    scheduler: Any,
    encoders: list[Any],
    tokenizers: list[Any],
    source: Optional[Path] = None,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
) -> BaseModel:
    """Put loaded components together: eval mode, no gradients, on `device` in `dtype`, fingerprinted."""
    spec = get_family(family)
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or default_dtype(device)
    for encoder, tokenizer in zip(encoders, tokenizers):
        _fix_legacy_eos_token_id(encoder, tokenizer)
    # Taken from the weights as stored, before any cast: loading the same file in bf16 on a GPU and in fp32
    # on a CPU must give the same fingerprint.
    on_meta = any(p.device.type == "meta" for p in unet.parameters())
    weights_id = "" if on_meta else fingerprint(unet, encoders)
    modules = [unet, vae, *encoders]
    for module in modules:
        module.requires_grad_(False)
        module.eval()
        module.to(device=device)
        if any(p.dtype != dtype for p in module.parameters()):
            module.to(dtype=dtype)
    return BaseModel(
        family=spec.name,
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        text=[TextEncoderSlot(name, tok, enc) for name, tok, enc in zip(spec.text_slots, tokenizers, encoders)],
        fingerprint=weights_id,
        source=source,
        device=device,
        dtype=dtype,
    )


def _fix_legacy_eos_token_id(encoder: Any, tokenizer: Any) -> None:
    """Published SD text-encoder configs carry eos_token_id=2, which makes transformers pool the hidden state
    at the *largest* token id instead of the first end-of-text token. With added concept tokens (ids above
    49407) that would pool at the concept token, so the real end-of-text id is set instead. For prompts
    without added tokens both rules pick the same position, so outputs do not change."""
    eos = tokenizer.eos_token_id
    if getattr(encoder.config, "eos_token_id", None) == 2 and eos is not None and eos != 2:
        encoder.config.eos_token_id = eos
        for module in encoder.modules():
            if getattr(module, "eos_token_id", None) == 2:
                module.eos_token_id = eos


# --------------------------------------------------------------------------------------------------- files


def read_checkpoint(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a single-file checkpoint's tensors (on CPU) and its metadata (safetensors only; {} otherwise)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle_checkpoint(path), {}
    raise ClifError(
        f"{path}: unknown checkpoint type {suffix or '(no extension)'!r}; give a .safetensors file "
        f"(or .ckpt/.pt/.pth, read without running code), or a diffusers folder"
    )


def read_checkpoint_shapes(path: Union[str, Path]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Key → shape and metadata of a .safetensors file, from its header alone (cheap for multi-GB files)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error type and OSError/ValueError for bad headers
        raise _not_safetensors(path, err) from None
    return shapes, metadata


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:  # safetensors checks that the header's offsets cover the file exactly, so truncation fails here
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise _not_safetensors(path, err) from None
    return state, metadata


def _not_safetensors(path: Path, err: Exception) -> ClifError:
    return ClifError(
        f"{path}: the file is truncated or not a safetensors file ({type(err).__name__}: {err}). "
        "Download or copy it again; if it is another format, give it the right extension."
    )


def _read_pickle_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ClifError(
            f"{path}: the file contains pickled Python code, which is never run here ({str(err).splitlines()[0]}). "
            "Convert it to .safetensors with a tool you trust (or get the .safetensors release of the model) "
            "and load that."
        ) from None
    except Exception as err:
        raise ClifError(
            f"{path}: the file is truncated or not a PyTorch checkpoint ({type(err).__name__}: {err}). "
            "Download or copy it again."
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ClifError(f"{path}: the file holds a {type(obj).__name__}, not a state dict of a model checkpoint")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def embedded_configs(metadata: Mapping[str, str], source: Union[str, Path]) -> dict[str, dict]:
    """The {component: diffusers config} a file carries under `clif.diffusers_configs`, or {}."""
    raw = metadata.get(CONFIGS_METADATA_KEY)
    if raw is None:
        return {}
    try:
        configs = json.loads(raw)
    except ValueError as err:
        raise ClifError(
            f"{source}: metadata '{CONFIGS_METADATA_KEY}' is not valid JSON ({err}); re-save the file with "
            "clif_core.models (or remove that metadata key to use the bundled configs)"
        ) from None
    if not isinstance(configs, dict) or not all(isinstance(v, dict) for v in configs.values()):
        raise ClifError(f"{source}: metadata '{CONFIGS_METADATA_KEY}' must map component names to config objects")
    return configs


# ------------------------------------------------------------------------------------- single-file convert


def bundled_configs(family: str) -> dict[str, dict]:
    """The bundled diffusers configs of a family's published base model, by component name."""
    spec = get_family(family)
    root = spec.config_path
    configs = {
        "unet": _json(root / "unet" / "config.json"),
        "vae": _json(root / "vae" / "config.json"),
        "scheduler": _json(root / "scheduler" / "scheduler_config.json"),
    }
    for sub in spec.encoder_subfolders:
        configs[sub] = _json(root / sub / "config.json")
    return configs


def _json(path: Path) -> dict:
    return read_json(path, dict, "replace it with the model's original file")


def components_from_original(
    state: Mapping[str, torch.Tensor],
    family: str,
    configs: Optional[Mapping[str, dict]] = None,
    *,
    source: Union[str, Path] = "<state dict>",
    prediction_type: Optional[str] = None,
) -> dict[str, Any]:
    """Build diffusers/transformers components from an original-layout state dict.

    `configs` overrides the family's bundled configs per component ("unet", "vae", "text_encoder",
    "text_encoder_2", "scheduler"). Every module is loaded strictly: a missing or extra tensor is an error.
    Returns the keyword arguments of `assemble_base_model`.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec = get_family(family)
    merged = bundled_configs(family)
    merged.update(configs or {})

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(merged["unet"])
        vae = AutoencoderKL.from_config(merged["vae"])
    _load_strict(unet, convert_ldm_unet_checkpoint(state, unet.config), "UNet", spec, source)
    _load_strict(vae, convert_ldm_vae_checkpoint(state, vae.config), "VAE", spec, source)

    encoders = []
    for i, sub in enumerate(spec.encoder_subfolders):
        with_projection = spec.name == "sdxl" and i == 1
        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        text_config = CLIPTextConfig.from_dict(_plain_text_config(merged[sub]))
        with init_empty_weights():
            encoder = cls(text_config)
        prefix = _clip_prefix(spec.name, i)
        if prefix.endswith(".model."):  # OpenCLIP layout
            converted = convert_open_clip_checkpoint(encoder, state, prefix=prefix)
        else:
            converted = _hf_clip_keys(state, prefix)
        _load_strict(encoder, _fit_text_model_level(converted, encoder), f"text encoder {sub}", spec, source)
        encoders.append(encoder)

    tokenizers = [clip_tokenizer(pad) for pad in spec.text_pad_tokens]
    scheduler = scheduler_from_config(merged["scheduler"], prediction_type)
    return dict(family=spec.name, unet=unet, vae=vae, scheduler=scheduler, encoders=encoders, tokenizers=tokenizers)


def _clip_prefix(family: str, index: int) -> str:
    if family == "sd1":
        return SD1_CLIP_PREFIX
    if family == "sd2":
        return SD2_CLIP_PREFIX
    return SDXL_CLIP_L_PREFIX if index == 0 else SDXL_CLIP_G_PREFIX


def _plain_text_config(config: Mapping[str, Any]) -> dict:
    return {k: v for k, v in config.items() if k not in ("architectures", "_name_or_path", "transformers_version")}


def _hf_clip_keys(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Hugging Face-layout CLIP under `prefix`; old SD1 files omit the `text_model.` level."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix) or key.endswith("position_ids"):
            continue
        rest = key[len(prefix) :]
        if not rest.startswith("text_model.") and not rest.startswith("text_projection"):
            rest = "text_model." + rest
        out[rest] = value
    return out


def _fit_text_model_level(sd: Mapping[str, torch.Tensor], encoder: Any) -> dict[str, torch.Tensor]:
    """transformers ≥ 5.6 dropped the `text_model.` level from `CLIPTextModel` (not from the projection
    variant); match whatever the installed version expects."""
    if hasattr(encoder, "text_model"):
        return dict(sd)
    return {(k[len("text_model.") :] if k.startswith("text_model.") else k): v for k, v in sd.items()}


def _load_strict(module: Any, sd: Mapping[str, torch.Tensor], what: str, spec: FamilySpec, source: Any) -> None:
    expected = set(module.state_dict())
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing, e.g. {', '.join(missing[:3])}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:3])}")
        raise ClifError(
            f"{source}: the {what} weights do not fit the {spec.title} architecture ({'; '.join(detail)}). "
            "The file may be another variant of the model or damaged; a diffusers folder of the same model "
            "loads with its own configs."
        )
    try:
        module.load_state_dict(dict(sd), strict=True, assign=True)
    except RuntimeError as err:
        first = str(err).split("\n\t", 2)[1] if "\n\t" in str(err) else str(err)
        raise ClifError(
            f"{source}: the {what} weights do not fit the {spec.title} architecture ({first.strip()}). "
            "The file may be another variant of the model or damaged."
        ) from None


def scheduler_from_config(config: Mapping[str, Any], prediction_type: Optional[str] = None) -> Any:
    """A diffusers scheduler from its config dict (class from `_class_name`)."""
    import diffusers

    name = str(config.get("_class_name", "")) or "PNDMScheduler"
    cls = getattr(diffusers, name, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ClifError(f"scheduler config names {name!r}, which is not a diffusers scheduler")
    overrides = {"prediction_type": prediction_type} if prediction_type else {}
    return cls.from_config(dict(config), **overrides)


# ------------------------------------------------------------------------------------------ diffusers dir


def _load_diffusers_dir(root: Path, prediction_type: Optional[str]) -> dict[str, Any]:
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    family = detect_family_from_diffusers_dir(root)
    spec = get_family(family)
    index = _json(root / "model_index.json")

    def need(sub: str) -> Path:
        if not (root / sub).is_dir():
            raise ClifError(f"{root}: the diffusers folder has no {sub}/ folder; copy the whole model folder again")
        return root / sub

    def load(what: str, fn) -> Any:
        try:
            return fn()
        except ClifError:
            raise
        except Exception as err:
            reason = (str(err).splitlines() or [""])[0]
            raise ClifError(
                f"{root / what}: could not be loaded ({type(err).__name__}: {reason}). "
                "The folder is incomplete or damaged; copy the model folder again."
            ) from None

    unet_dir, vae_dir = need("unet"), need("vae")
    unet = load("unet", lambda: UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True, **_variant(unet_dir)))
    vae = load("vae", lambda: AutoencoderKL.from_pretrained(vae_dir, local_files_only=True, **_variant(vae_dir)))
    encoders, tokenizers = [], []
    for sub, tok_sub in zip(spec.encoder_subfolders, spec.tokenizer_subfolders):
        entry = index.get(sub) or [None, "CLIPTextModel"]
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
            raise ClifError(f"{root / 'model_index.json'}: field {sub!r} is {entry!r}, not [library, class name]; "
                            "replace it with the model's original file")
        cls_name = entry[1]
        if cls_name not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
            raise ClifError(f"{root}: {sub} is a {cls_name}; Stable Diffusion text encoders are CLIP text models")
        cls = getattr(transformers, cls_name)
        encoders.append(load(sub, lambda: cls.from_pretrained(need(sub), local_files_only=True)))
        tokenizers.append(load(tok_sub, lambda: CLIPTokenizer.from_pretrained(need(tok_sub), local_files_only=True)))
    scheduler_config = _json(need("scheduler") / "scheduler_config.json")
    scheduler = scheduler_from_config(scheduler_config, prediction_type)
    return dict(family=family, unet=unet, vae=vae, scheduler=scheduler, encoders=encoders, tokenizers=tokenizers)


def _variant(folder: Path) -> dict[str, str]:
    """Use the fp16 variant files when a folder only has those (diffusers' `*.fp16.safetensors`)."""
    plain = list(folder.glob("diffusion_pytorch_model.safetensors")) + list(folder.glob("diffusion_pytorch_model.bin"))
    plain += list(folder.glob("diffusion_pytorch_model.safetensors.index.json"))
    if not plain and list(folder.glob("*.fp16.safetensors")):
        return {"variant": "fp16"}
    return {}
