"""The one place the pack reaches into ComfyUI internals, each reach feature-detected.

The node API (`comfy_api`) and ComfyUI's documented node helpers (`folder_paths`, `comfy.utils.ProgressBar`,
`comfy.model_management`'s interrupt and unload, `comfy.sd`'s checkpoint, LoRA, CLIP and VAE loaders) are
used directly by the node modules. What follows has no public form: building a small model whose GroupNorms
are not 32-grouped, an SDXL size embedding of another width, text encoders of another width, prompt
words that resolve to vectors held in memory, and a VAE's latent size. Each function checks the signature
or attribute it relies on and, when a ComfyUI release changed it beyond the forms known here, raises a
ClifError that names the ComfyUI version and the supported range instead of a TypeError deep inside ComfyUI.

Verified on ComfyUI 0.3.52 and 0.3.75 (tests/test_comfy_compat.py runs every function in both).
ComfyUI is imported inside the functions only: the pack must import cheaply when ComfyUI starts.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Iterator, Mapping

from clif_core.errors import ClifError

SUPPORTED = "0.3.52 to 0.3.75"
COMFY_GROUP_NORM = 32  # ComfyUI builds its UNet's and VAE's GroupNorms with 32 groups


def comfyui_version() -> str:
    """The running ComfyUI's version string, or "unknown" (its comfyui_version module is not a package)."""
    try:
        from comfyui_version import __version__
    except ImportError:
        return "unknown"
    return str(__version__)


def _unsupported(what: str) -> ClifError:
    return ClifError(f"ComfyUI {comfyui_version()} changed {what}, which the CLIF pack needs for small models, "
                     f"concept tokens and latent sizes; use a ComfyUI from {SUPPORTED} or update the pack.")


def unet_operations(model_config, groups: int) -> type:
    """The operations ComfyUI would pick for `model_config`'s UNet, with every GroupNorm built with `groups`.

    `comfy.ops.pick_operations` gained its `model_config` keyword between 0.3.64 and 0.3.75 (0.3.64 fails
    with "unexpected keyword argument 'model_config'"); it is passed only where the signature has it, with
    the same fp8 arguments ComfyUI's own model_base passes.
    """
    import comfy.ops

    params = inspect.signature(comfy.ops.pick_operations).parameters
    wanted = {"fp8_optimizations": getattr(model_config, "optimizations", {}).get("fp8", False),
              "scaled_fp8": getattr(model_config, "scaled_fp8", None), "model_config": model_config}
    picked = comfy.ops.pick_operations(model_config.unet_config.get("dtype"), model_config.manual_cast_dtype,
                                       **{k: v for k, v in wanted.items() if k in params})
    return with_group_norm(picked, groups)


def with_group_norm(operations: type, groups: int) -> type:
    """ComfyUI's operations class with every GroupNorm built with `groups` groups (its code asks for 32)."""
    if not isinstance(getattr(operations, "GroupNorm", None), type):
        raise _unsupported("its operations classes (no GroupNorm)")

    class GroupNorm(operations.GroupNorm):
        def __init__(self, num_groups, num_channels, *args, **kwargs):
            super().__init__(groups, num_channels, *args, **kwargs)

    return type(f"{operations.__name__}Groups{groups}", (operations,), {"GroupNorm": GroupNorm})


@contextlib.contextmanager
def vae_group_norm(groups: int) -> Iterator[None]:
    """While the VAE is built, its blocks make GroupNorms with `groups` groups.

    ComfyUI's VAE blocks make every GroupNorm through `Normalize`, which asks the module-level `ops` for 32
    groups; `ops` is swapped for the duration (ComfyUI runs one prompt at a time).
    """
    import comfy.ldm.modules.diffusionmodules.model as blocks

    original = getattr(blocks, "ops", None)
    if original is None:
        raise _unsupported("comfy.ldm.modules.diffusionmodules.model (no module-level `ops`)")
    if groups != COMFY_GROUP_NORM:
        blocks.ops = with_group_norm(original, groups)
    try:
        yield
    finally:
        blocks.ops = original


def set_size_embedding_width(model, width: int) -> None:
    """Give an SDXL model's size/crop embedder `width` channels (ComfyUI builds 256)."""
    import comfy.model_base

    if not isinstance(getattr(model, "embedder", None), comfy.model_base.Timestep):
        raise _unsupported("SDXL's size embedder (model.embedder)")
    if model.embedder.dim != width:
        model.embedder = comfy.model_base.Timestep(width)


def set_embedding_width(tokenizer, slot: str, width: int) -> None:
    """Let `slot`'s tokenizer (clip_l, clip_g, clip_h) accept `embedding:` vectors `width` wide."""
    inner = getattr(tokenizer, slot, None)
    if not hasattr(inner, "embedding_size"):
        raise _unsupported(f"its {slot} tokenizer (no embedding_size)")
    inner.embedding_size = width


def _inner_tokenizers(tokenizer) -> list[tuple[str, object]]:
    """The per-encoder SDTokenizer attributes of a ComfyUI tokenizer (clip_l, clip_g, clip_h…)."""
    return [(name, value) for name, value in vars(tokenizer).items()
            if hasattr(value, "embedding_key") and hasattr(value, "embedding_directory")]


def with_memory_embeddings(tokenizer, vectors: Mapping[str, Mapping[str, object]]):
    """A shallow copy of a ComfyUI tokenizer whose `embedding:NAME` words also resolve to vectors in memory.

    `vectors` maps NAME → {encoder key (clip_l, clip_g, clip_h) → [k, width] tensor}. ComfyUI has no public
    way to hand a tokenizer embeddings that are not files (its `embedding:` route reads
    `embedding_directory`), so each per-encoder tokenizer copy gets a resolver in front of its own
    `_try_get_embedding` (present with the same contract in 0.3.52 and 0.3.75).
    """
    import copy

    tokenizer = copy.copy(tokenizer)
    inner_tokenizers = _inner_tokenizers(tokenizer)
    if not inner_tokenizers or not all(callable(getattr(t, "_try_get_embedding", None)) for _, t in inner_tokenizers):
        raise _unsupported("its tokenizer (no per-encoder _try_get_embedding)")
    for attr, inner in inner_tokenizers:
        inner = copy.copy(inner)
        own = {name: per_encoder[inner.embedding_key] for name, per_encoder in vectors.items()
               if inner.embedding_key in per_encoder}
        if inner.embedding_directory is None:
            inner.embedding_directory = []  # ComfyUI only parses `embedding:` words when this is set
        inner._try_get_embedding = _resolver(inner._try_get_embedding, own)
        setattr(tokenizer, attr, inner)
    return tokenizer


def _resolver(previous: Callable, vectors: Mapping[str, object]) -> Callable:
    def try_get_embedding(embedding_name: str):
        words = embedding_name.split()
        if words and words[0] in vectors:
            return vectors[words[0]], " ".join(words[1:])
        return previous(embedding_name)

    return try_get_embedding


def with_lora_hook(conditioning: list, lora: Mapping[str, object], strength: float) -> list:
    """`conditioning` whose noise predictions ComfyUI computes with `lora` (kohya keys) on the model at `strength`:
    its weight hooks (`comfy.hooks`), what the stock Create Hook LoRA and Cond Set Props nodes build."""
    import comfy.hooks

    try:
        hooks = comfy.hooks.create_hook_lora(dict(lora), strength_model=strength, strength_clip=0.0)
        return comfy.hooks.set_hooks_for_conditioning(conditioning, hooks)
    except (AttributeError, TypeError) as err:
        raise _unsupported("its LoRA hooks on conditioning (comfy.hooks)") from err


def vae_latent_layout(vae) -> tuple[int, int]:
    """(latent channels, pixels per latent cell along each side) of a ComfyUI image VAE.

    ComfyUI's stock Empty Latent Image assumes 8 pixels per cell; the VAE knows its own factor
    (`downscale_ratio`, which the stock VAE Encode node also reads) and channel count (`latent_channels`).
    Neither is part of a documented API; both have this form in 0.3.52 and 0.3.75. Video and audio VAEs keep a
    tuple or a per-axis function in `downscale_ratio` or a `latent_dim` other than 2: refused, they make no
    image latents.
    """
    if getattr(vae, "latent_dim", 2) != 2:
        raise ClifError(f"this VAE makes {vae.latent_dim}-dimensional latents (video or audio), not image latents: "
                        "connect the VAE of an image model (Stable Diffusion, the sandbox model)")
    ratio, channels = getattr(vae, "downscale_ratio", None), getattr(vae, "latent_channels", None)
    if not isinstance(ratio, int) or not isinstance(channels, int):
        raise _unsupported("its VAE (no integer downscale_ratio and latent_channels)")
    return channels, ratio
