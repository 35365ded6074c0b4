"""ComfyUI's own MODEL, CLIP and VAE for a base model, so the stock nodes (KSampler, CLIPTextEncode with
`embedding:name`, VAEDecode, LoraLoader…) run on it.

Published SD1.x / SD2.x / SDXL checkpoints go through ComfyUI's own detection and loader. Small models of
the same families (the tiny test models, the sandbox model) are not recognised by it: its model classes
match exact widths (SD15: model_channels 320, context_dim 768) and its text-encoder classes read fixed
configs (CLIP-L: 768 wide, 12 layers). For those, the ComfyUI model config is an instance of the family's
own class (SD15 / SD20 / SDXL) with the UNet config ComfyUI detects from the weights, and the text encoders,
VAE and noise schedule take their sizes from the diffusers/transformers configs the file carries
(`clif.diffusers_configs`). Everything is built with ComfyUI's classes; nothing is re-implemented here.
The few reaches into ComfyUI internals that have no public form go through comfy_compat.

ComfyUI is imported inside the functions only: the pack must import cheaply when ComfyUI starts.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from clif_core.errors import ClifError

from . import comfy_compat

# ComfyUI's CLIP text model has a fixed 49408-token embedding table and its tokenizer pads to 77.
_COMFY_CLIP_VOCAB = 49408
_COMFY_CLIP_POSITIONS = 77
_SDXL_TIME_EMBED = 256
# diffusers beta schedule name → ComfyUI's name for the same schedule
_BETA_SCHEDULES = {"scaled_linear": "linear", "linear": "sqrt_linear", "squaredcos_cap_v2": "squaredcos_cap_v2"}


def load_comfy_checkpoint(path: Union[str, Path], embedding_directory: Union[str, Sequence[str], None]):
    """Load a single-file checkpoint or a diffusers folder as ComfyUI's (MODEL, CLIP, VAE).

    `embedding_directory` is where CLIPTextEncode looks up `embedding:name` (ComfyUI passes
    `folder_paths.get_folder_paths("embeddings")`). Bad files raise ClifError naming the file.
    """
    from clif_core.models.families import detect_family_from_state_dict
    from clif_core.models.loader import bundled_configs, embedded_configs, read_checkpoint

    source = Path(path)
    if source.is_dir():
        state, configs, family = _original_layout_of_folder(source)
        metadata: dict = {}
    elif source.is_file():
        state, metadata = read_checkpoint(source)
        family = detect_family_from_state_dict({k: tuple(v.shape) for k, v in state.items()}, source=source)
        configs = {**bundled_configs(family), **embedded_configs(metadata, source)}
    else:
        raise ClifError(f"{source} does not exist: give a checkpoint file or a diffusers folder")

    import comfy.sd
    import comfy.supported_models
    from comfy import model_detection

    prefix = model_detection.unet_prefix_from_state_dict(state)
    unet_config = model_detection.detect_unet_config(state, prefix, metadata=metadata)
    if any(cls.matches(unet_config, state) for cls in comfy.supported_models.models):
        model, clip, vae, _ = comfy.sd.load_state_dict_guess_config(
            state, embedding_directory=embedding_directory, metadata=metadata
        )
        return model, clip, vae
    return _load_small_model(state, prefix, unet_config, family, configs, embedding_directory, source)


def _original_layout_of_folder(root: Path) -> tuple[dict, dict, str]:
    """A diffusers folder as one original-layout state dict (what ComfyUI reads), its configs and family."""
    from clif_core.models.ldm_layout import component_configs, to_original_state_dict
    from clif_core.models.loader import load_base_model

    base = load_base_model(root, device="cpu")
    return to_original_state_dict(base), component_configs(base), base.family


# ------------------------------------------------------------------------------------------ small models


def _load_small_model(state, prefix, unet_config, family, configs, embedding_directory, source):
    model_config = _small_model_config(family, unet_config, configs, source)
    model = _diffusion_model(model_config, state, prefix, source)
    vae = _vae(model_config, state, configs["vae"], source)
    clip = _clip(model_config, state, family, configs, embedding_directory, source)
    return model, clip, vae


@functools.cache
def _small_family_classes() -> dict[str, type]:
    """The family classes ComfyUI matches by exact widths, made to take their prediction type and SDXL
    size-conditioning width from the model's configs instead of the published model's."""
    import comfy.model_base
    import comfy.supported_models as sm

    class FromConfigs:
        prediction: Any = None
        time_embed_dim: int = _SDXL_TIME_EMBED

        def model_type(self, state_dict, prefix=""):
            return self.prediction

        groups: int = comfy_compat.COMFY_GROUP_NORM

        def get_model(self, state_dict, prefix="", device=None):
            if self.groups != comfy_compat.COMFY_GROUP_NORM:  # the dtypes are known now (set_inference_dtype ran)
                self.custom_operations = comfy_compat.unet_operations(self, self.groups)
            model = super().get_model(state_dict, prefix, device)
            if isinstance(model, comfy.model_base.SDXL):
                comfy_compat.set_size_embedding_width(model, self.time_embed_dim)
            return model

    return {
        "sd1": type("SmallSD15", (FromConfigs, sm.SD15), {}),
        "sd2": type("SmallSD20", (FromConfigs, sm.SD20), {}),
        "sdxl": type("SmallSDXL", (FromConfigs, sm.SDXL), {}),
    }


def _small_model_config(family: str, unet_config: dict, configs: Mapping[str, dict], source: Path):
    import comfy.model_base

    unet_cfg, scheduler_cfg, vae_cfg = configs["unet"], configs["scheduler"], configs["vae"]
    model_config = _small_family_classes()[family](unet_config)
    model_config.groups = int(unet_cfg.get("norm_num_groups", comfy_compat.COMFY_GROUP_NORM))
    model_config.unet_config.update(_attention_heads(unet_cfg, source))

    prediction = scheduler_cfg.get("prediction_type", "epsilon")
    types = {"epsilon": comfy.model_base.ModelType.EPS, "v_prediction": comfy.model_base.ModelType.V_PREDICTION}
    if prediction not in types:
        raise ClifError(f"{source}: the scheduler's prediction_type {prediction!r} has no ComfyUI model type "
                        "(use epsilon or v_prediction)")
    model_config.prediction = types[prediction]
    if family == "sdxl":
        model_config.time_embed_dim = int(unet_cfg.get("addition_time_embed_dim", _SDXL_TIME_EMBED))

    schedule = scheduler_cfg.get("beta_schedule", "scaled_linear")
    if schedule not in _BETA_SCHEDULES:
        raise ClifError(f"{source}: the scheduler's beta_schedule {schedule!r} has no ComfyUI equivalent "
                        f"(use one of {', '.join(_BETA_SCHEDULES)})")
    model_config.sampling_settings.update(
        beta_schedule=_BETA_SCHEDULES[schedule],
        linear_start=float(scheduler_cfg.get("beta_start", 0.00085)),
        linear_end=float(scheduler_cfg.get("beta_end", 0.012)),
        timesteps=int(scheduler_cfg.get("num_train_timesteps", 1000)),
        zsnr=bool(scheduler_cfg.get("rescale_betas_zero_snr", False)),
    )
    if "scaling_factor" in vae_cfg:
        model_config.latent_format.scale_factor = float(vae_cfg["scaling_factor"])
    return model_config


def _attention_heads(unet_cfg: Mapping[str, Any], source: Path) -> dict:
    """ComfyUI's num_heads / num_head_channels for a diffusers UNet config.

    diffusers' `attention_head_dim` is, despite its name, the number of heads (per block or for all);
    ComfyUI takes either a fixed head count or a fixed head width across blocks.
    """
    channels = list(unet_cfg["block_out_channels"])
    heads = unet_cfg.get("num_attention_heads") or unet_cfg["attention_head_dim"]
    heads = [heads] * len(channels) if isinstance(heads, int) else list(heads)
    attn = [i for i, kind in enumerate(unet_cfg["down_block_types"]) if "CrossAttn" in kind] or range(len(channels))
    counts = {heads[i] for i in attn}
    widths = {channels[i] // heads[i] for i in attn}
    if len(counts) == 1:
        return {"num_heads": counts.pop(), "num_head_channels": -1}
    if len(widths) == 1:
        return {"num_heads": -1, "num_head_channels": widths.pop()}
    raise ClifError(
        f"{source}: attention heads {heads} over block widths {channels} vary in both count and width; "
        "ComfyUI's UNet needs one of them fixed."
    )


def _diffusion_model(model_config, state: dict, prefix: str, source: Path):
    """The ModelPatcher, placed and typed the way ComfyUI's own checkpoint loader does it."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils

    parameters = comfy.utils.calculate_parameters(state, prefix)
    weight_dtype = comfy.utils.weight_dtype(state, prefix)
    load_device = mm.get_torch_device()
    dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=model_config.supported_inference_dtypes,
                          weight_dtype=weight_dtype)
    model_config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes))
    model = model_config.get_model(state, prefix, device=mm.unet_inital_load_device(parameters, dtype))
    given = {k[len(prefix):] for k in state if k.startswith(prefix)}
    _require_all(set(model.diffusion_model.state_dict()), given, "UNet", source)
    model.load_model_weights(state, prefix)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())


def _vae(model_config, state: dict, vae_cfg: Mapping[str, Any], source: Path):
    """ComfyUI's VAE with the autoencoder sized from the diffusers config (ComfyUI's default is SD's own)."""
    import comfy.sd
    import comfy.utils

    absent = [k for k in ("mid_block_add_attention", "use_quant_conv", "use_post_quant_conv") if not vae_cfg.get(k, True)]
    if absent:
        raise ClifError(f"{source}: the VAE is built without {', '.join(absent)}; ComfyUI's VAE always has them, "
                        "so ComfyUI cannot run this model.")
    vae_sd = comfy.utils.state_dict_prefix_replace(state, {k: "" for k in model_config.vae_key_prefix}, filter_keys=True)
    vae_sd = model_config.process_vae_state_dict(vae_sd)
    widths = list(vae_cfg["block_out_channels"])
    latent = int(vae_cfg["latent_channels"])
    ddconfig = {
        "double_z": True, "z_channels": latent, "resolution": int(vae_cfg.get("sample_size", 256)),
        "in_channels": int(vae_cfg.get("in_channels", 3)), "out_ch": int(vae_cfg.get("out_channels", 3)),
        "ch": widths[0], "ch_mult": [w // widths[0] for w in widths],
        "num_res_blocks": int(vae_cfg["layers_per_block"]), "attn_resolutions": [], "dropout": 0.0,
    }
    try:
        with comfy_compat.vae_group_norm(int(vae_cfg.get("norm_num_groups", comfy_compat.COMFY_GROUP_NORM))):
            vae = comfy.sd.VAE(sd=vae_sd, config={"params": {"ddconfig": ddconfig, "embed_dim": latent}})
    except RuntimeError as err:  # torch's size-mismatch report
        raise _mismatch(source, "VAE", err) from None
    _require_all(set(vae.first_stage_model.state_dict()), set(vae_sd), "VAE", source)
    vae.latent_channels = latent
    vae.downscale_ratio = vae.upscale_ratio = 2 ** (len(widths) - 1)
    return vae


def _clip(model_config, state: dict, family: str, configs: Mapping[str, dict], embedding_directory, source: Path):
    """ComfyUI's CLIP for the family, its text models sized by the stored transformers configs.

    The family's own ComfyUI classes read per-encoder config overrides from `model_options`
    (`<slot>_model_config`); the tokenizers keep ComfyUI's CLIP BPE (the same vocabulary) and accept
    `embedding:name` files as wide as the encoder.
    """
    import comfy.sd
    import comfy.supported_models_base
    import comfy.utils

    from clif_core.models.families import get_family

    spec = get_family(family)
    overrides, widths = {}, {}
    for slot, sub in zip(spec.text_slots, spec.encoder_subfolders):
        overrides[f"{slot}_model_config"] = _text_model_config(configs[sub], slot, family, source)
        widths[slot] = overrides[f"{slot}_model_config"]["hidden_size"]
    if family == "sd2":
        # ComfyUI's SD2 encoder conditions on the penultimate layer because published files hold one layer
        # more than the model uses (diffusers drops it). Small files hold exactly the layers the model uses,
        # and the core reads them all, so ComfyUI must take the last one too.
        import comfy.text_encoders.sd2_clip

        overrides["clip_h_class"] = functools.partial(comfy.text_encoders.sd2_clip.SD2ClipHModel, layer="last")
    stock = model_config.clip_target(state_dict=state)
    target = comfy.supported_models_base.ClipTarget(_tokenizer_for_widths(stock.tokenizer, widths), stock.clip)
    clip_sd = model_config.process_clip_state_dict(state)
    clip = comfy.sd.CLIP(target, embedding_directory=embedding_directory, tokenizer_data=clip_sd,
                         parameters=comfy.utils.calculate_parameters(clip_sd), model_options=overrides)
    try:
        missing = [k for k in clip.load_sd(clip_sd, full_model=True)[0] if _text_tensor_is_used(k, family)]
    except RuntimeError as err:
        raise _mismatch(source, "text encoder", err) from None
    if missing:
        raise ClifError(f"{source}: text encoder tensors missing from the file: {', '.join(missing[:8])}"
                        f"{' …' if len(missing) > 8 else ''}. Re-export the model from a complete one.")
    return clip


def _text_tensor_is_used(key: str, family: str) -> bool:
    """logit_scale never is; a projection only in SDXL's second encoder (for the pooled output)."""
    if key.endswith("logit_scale"):
        return False
    if key.endswith("transformer.text_projection.weight"):
        return family == "sdxl" and key.startswith("clip_g.")
    return True


def _text_model_config(cfg: Mapping[str, Any], slot: str, family: str, source: Path) -> dict:
    """The fields ComfyUI's CLIP text model reads, from a transformers CLIPTextConfig dict, checked against
    what ComfyUI's classes can hold."""
    import comfy.clip_model

    problems = []
    if cfg.get("vocab_size", _COMFY_CLIP_VOCAB) != _COMFY_CLIP_VOCAB:
        problems.append(f"vocab_size {cfg['vocab_size']} (ComfyUI's CLIP tokenizer has {_COMFY_CLIP_VOCAB})")
    if cfg.get("max_position_embeddings", _COMFY_CLIP_POSITIONS) != _COMFY_CLIP_POSITIONS:
        problems.append(f"max_position_embeddings {cfg['max_position_embeddings']} (ComfyUI pads to {_COMFY_CLIP_POSITIONS})")
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in comfy.clip_model.ACTIVATIONS:
        problems.append(f"hidden_act {act!r}")
    layers = int(cfg["num_hidden_layers"])
    if family == "sdxl" and layers < 3:  # SDXL conditions on the penultimate layer; ComfyUI asserts 3+
        problems.append(f"{layers} layers (SDXL reads the penultimate layer; ComfyUI needs at least 3)")
    hidden = int(cfg["hidden_size"])
    if slot == "clip_g" and int(cfg.get("projection_dim", hidden)) != hidden:
        problems.append(f"projection_dim {cfg['projection_dim']} ≠ hidden_size {hidden} (ComfyUI's projection is square)")
    if problems:
        raise ClifError(f"{source}: text encoder {slot} cannot run in ComfyUI: {'; '.join(problems)}.")
    return {
        "hidden_size": hidden,
        "intermediate_size": int(cfg["intermediate_size"]),
        "num_attention_heads": int(cfg["num_attention_heads"]),
        "num_hidden_layers": layers,
        "hidden_act": act,
        "max_position_embeddings": _COMFY_CLIP_POSITIONS,
    }


def _tokenizer_for_widths(tokenizer_cls, widths: Mapping[str, int]):
    """A factory with the signature ComfyUI calls (`embedding_directory`, `tokenizer_data`) that builds the
    family's tokenizer and sets each encoder's embedding width (ComfyUI hard-codes 768 / 1024 / 1280)."""

    def make(embedding_directory=None, tokenizer_data={}):  # noqa: B006 (ComfyUI's own signature; never mutated)
        tokenizer = tokenizer_cls(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)
        for slot, width in widths.items():
            comfy_compat.set_embedding_width(tokenizer, slot, width)
        return tokenizer

    return make


def _mismatch(source: Path, what: str, err: RuntimeError) -> ClifError:
    from clif_core.models.loader import CONFIGS_METADATA_KEY

    return ClifError(f"{source}: the {what} weights do not fit the {what} config stored in the file "
                     f"('{CONFIGS_METADATA_KEY}'): {str(err).strip()[:600]}")


def _require_all(expected: set, given: set, what: str, source: Path) -> None:
    missing = sorted(expected - given)
    if missing:
        raise ClifError(f"{source}: {what} tensors missing or misnamed: {', '.join(missing[:8])}"
                        f"{' …' if len(missing) > 8 else ''}. The file does not match its stored configs.")
