"""Text-to-image sampling on a BaseModel with concept files and erasure patches applied for the run.

The denoising loop is diffusers' Stable Diffusion loop (same noise, scheduler calls, guidance and VAE
decoding: with no concept files and no regions it reproduces `StableDiffusionPipeline` /
`StableDiffusionXLPipeline` on the same components, seeds and scheduler), written out so that it can
report progress and previews, stop on request between steps, draw each image of a batch from its own
seed, route cross-attention through regional prompts, and replay the UNet as a CUDA graph on GPUs.

Concept files are applied per run by `clif_core.concepts.merged.apply_merged`: their LoRAs merged into new
weight tensors from deltas kept across runs (a re-queued run with the same files pays no peft load, and the
loop runs at a plain run's speed), tokens added, and all of it taken off again when the run ends; files
isolated to a region keep live peft adapters. That module's docstring has the profile and the reasons.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

import torch

from clif_core.concepts.apply import expand_prompt, vector_tokens
from clif_core.concepts.file_format import ConceptFile
from clif_core.concepts.merged import apply_merged
from clif_core.errors import ClifError
from clif_core.models.denoise import denoise
from clif_core.models.prompts import TextConditioning, encode_negative, encode_prompt, sdxl_time_ids
from clif_core.models.vae import decode_latents, vae_factor
from clif_core.progress import SILENT, Reporter

from .config import SampleConfig
from .cuda_graph import GraphedUNet
from .isolation import Binding, MaskedLoRA, check_bound_tokens
from .recipe import RECIPE_FORMAT, concept_file_fingerprint, image_recipe
from .regional import RegionalAttention
from .schedulers import make_scheduler

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

Previewer = Callable[[torch.Tensor], Any]
"""previewer(latents [1, C, h, w]) -> PIL image: what the reporter shows during sampling."""


@dataclass
class ConceptUse:
    """A concept file or erasure patch to apply while sampling, at a LoRA `strength`; `path` (optional) is
    recorded in the recipe. `region` (1-based, optional) isolates the file to that region of the run's layout:
    its LoRA acts only under the region's mask and its placeholders may appear only in the region's prompt
    (see isolation.py). The content fingerprint is computed once per ConceptUse."""

    file: ConceptFile
    strength: float = 1.0
    path: Optional[str] = None
    region: Optional[int] = None
    _fingerprint: Optional[str] = field(default=None, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = concept_file_fingerprint(self.file)
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        described = {
            "title": self.file.display_title(),
            "kind": self.file.kind,
            "fingerprint": self.fingerprint,
            "strength": self.strength,
            "tokens": [c.token for c in self.file.concepts],
            "path": self.path,
        }
        if self.region is not None:
            described["region"] = self.region
        return described


ConceptsArg = Sequence[Union[ConceptUse, ConceptFile, tuple]]


def as_uses(concepts: ConceptsArg) -> list[ConceptUse]:
    """ConceptUse objects from ConceptUse, bare ConceptFile (strength 1) or (ConceptFile, strength) items."""
    uses = []
    for item in concepts:
        if isinstance(item, ConceptUse):
            uses.append(item)
        elif isinstance(item, ConceptFile):
            uses.append(ConceptUse(item))
        else:
            uses.append(ConceptUse(*item))
    return uses


@dataclass
class SampleResult:
    """`images` (PIL, RGB), the run's `recipe` (see `recipe.py`) and the final `latents` (CPU, float32)."""

    images: list
    recipe: dict[str, Any]
    latents: torch.Tensor

    def recipe_json(self) -> str:
        return json.dumps(self.recipe, sort_keys=True)

    def image_recipe(self, index: int) -> dict[str, Any]:
        return image_recipe(self.recipe, index)


def image_size(base: BaseModel, config: SampleConfig) -> tuple[int, int]:
    """(width, height) of the run: the config's, or the model's native size; checked against the VAE factor."""
    factor = vae_factor(base)
    native = base.unet.config.sample_size
    native_h, native_w = (native, native) if isinstance(native, int) else tuple(native)
    width = config.width or native_w * factor
    height = config.height or native_h * factor
    for name, value in (("width", width), ("height", height)):
        if value < factor or value % factor:
            nearest = max(factor, value // factor * factor)
            raise ClifError(f"{name} {value} is not a positive multiple of {factor}, this model's VAE factor "
                            f"(one latent pixel covers {factor}×{factor} pixels); use e.g. {nearest}")
    return int(width), int(height)


def _expanded(prompt: str, tokens: dict[str, list[str]], where: str) -> str:
    try:
        return expand_prompt(prompt, tokens)
    except ClifError as err:
        raise ClifError(f"{where}: {err}") from None


def _build_recipe(base: BaseModel, config: SampleConfig, uses: Sequence[ConceptUse], width: int, height: int) -> dict:
    return {
        "format": RECIPE_FORMAT,
        "prompt": config.prompt,
        "negative_prompt": config.negative_prompt,
        "seed": config.seed,
        "batch": config.batch,
        "steps": config.steps,
        "cfg": config.cfg,
        "scheduler": config.scheduler,
        "width": width,
        "height": height,
        "base": {
            "family": base.family,
            "fingerprint": base.fingerprint,
            "source": base.source.name if base.source is not None else None,
        },
        "concepts": [u.describe() for u in uses],
        "regions": [r.describe() for r in config.regions],
    }


def sample(
    base: BaseModel,
    config: SampleConfig,
    concepts: ConceptsArg = (),
    reporter: Reporter = SILENT,
    previewer: Optional[Previewer] = None,
    applied_tokens: Optional[Mapping[str, Sequence[str]]] = None,
) -> SampleResult:
    """Generate `config.batch` images with `concepts` (concept files and erasure patches, each optionally with a
    strength) applied to `base` for this run only; the base is restored afterwards, also on errors and cancel.

    Placeholders ("<alice>") are resolved to their vector tokens; one that no given file defines is a ClifError.
    `applied_tokens` (placeholder → vector tokens) names concept tokens the caller has already put on `base`
    (a training run's tokens, `AppliedConcepts.tokens`): their placeholders resolve too, nothing is applied for
    them. `previewer` turns latents into a preview image when `config.preview_every` > 0 (default: the VAE).
    """
    config.check()
    uses = as_uses(concepts)
    width, height = image_size(base, config)
    recipe = _build_recipe(base, config, uses, width, height)
    tokens = {t: list(v) for t, v in (applied_tokens or {}).items()}
    tokens.update({c.token: vector_tokens(c.token, c.vectors) for u in uses for c in u.file.concepts})
    prompt = _expanded(config.prompt, tokens, "prompt")
    negative = _expanded(config.negative_prompt, tokens, "negative prompt")
    region_prompts = [_expanded(r.prompt, tokens, f"region {i} prompt") for i, r in enumerate(config.regions, 1)]

    bound = _bound_regions(config, uses)

    applied = apply_merged(base, [(u.file, u.strength) for u in uses], [u.fingerprint for u in uses], live=bound,
                           warn=reporter.log) if uses else None
    try:
        isolation: Any = contextlib.nullcontext()
        if bound:
            factor = vae_factor(base)
            bindings = [Binding(applied.adapter_of(i), r) for i, r in bound.items() if applied.adapter_of(i)]
            isolation = MaskedLoRA(base, bindings, config.regions, (height // factor, width // factor),
                                   config.isolation_edge)
        with torch.inference_mode(), isolation:
            region_pass = isolation.region_pass if bound else None
            cond = encode_prompt(base, prompt, reporter.log)
            uncond = encode_negative(base, negative, cond, reporter.log) if config.cfg > 1 else None
            regions = []
            for i, p in enumerate(region_prompts):
                with region_pass(i) if region_pass else contextlib.nullcontext():
                    regions.append(encode_prompt(base, p, reporter.log).embeds)
            latents = _denoise(base, config, width, height, cond, uncond, regions, reporter,
                               previewer or (lambda x: decode_latents(base, x)[0]),
                               region_pass)
            images = decode_latents(base, latents)
    finally:
        if applied is not None:
            applied.remove()
    return SampleResult(images, recipe, latents.float().cpu())


def _bound_regions(config: SampleConfig, uses: Sequence[ConceptUse]) -> dict[int, int]:
    """{file index: 0-based region} for the files isolated to a region, checked against the layout and prompts."""
    bound: dict[int, int] = {}
    for i, use in enumerate(uses):
        if use.region is None:
            continue
        where = f"concept file {use.file.display_title()!r}"
        if not config.regions:
            raise ClifError(f"{where} is isolated to region {use.region}, but the run has no regional layout; "
                            "add regions (one prompt per region) or unbind the file")
        if isinstance(use.region, bool) or not isinstance(use.region, int) or not 1 <= use.region <= len(
                config.regions):
            raise ClifError(f"{where} is isolated to region {use.region!r}; the layout has regions 1 to "
                            f"{len(config.regions)}")
        bound[i] = use.region - 1
    names = [f"region {i} prompt" for i in range(1, len(config.regions) + 1)]
    prompts = {"prompt": config.prompt, "negative prompt": config.negative_prompt,
               **{n: r.prompt for n, r in zip(names, config.regions)}}
    tokens_of: dict[int, list[str]] = {}
    for i, region in bound.items():
        tokens_of.setdefault(region, []).extend(c.token for c in uses[i].file.concepts)
    check_bound_tokens(prompts, tokens_of, names)
    return bound


def _denoise(base: BaseModel, config: SampleConfig, width: int, height: int, cond: TextConditioning,
             uncond: Optional[TextConditioning], region_contexts: list[torch.Tensor], reporter: Reporter,
             previewer: Previewer, region_pass: Optional[Callable] = None) -> torch.Tensor:
    """The denoising loop: seeded noise, the scheduler, guidance, regional attention, previews, cancel."""
    device, batch = base.device, config.batch
    scheduler = make_scheduler(base.scheduler.config, config.scheduler)
    scheduler.set_timesteps(config.steps, device=device)
    latent_hw = (height // vae_factor(base), width // vae_factor(base))
    # CPU generators, one per image: the same seed gives the same image on any device and in any batch.
    generators = [torch.Generator("cpu").manual_seed(config.seed + i) for i in range(batch)]
    latents = _initial_latents(base, scheduler, generators, latent_hw, cond.embeds.dtype)
    guided = uncond is not None
    model = _unet_model(base, [uncond, cond] if guided else [cond], batch, (height, width), reporter)
    regional = contextlib.nullcontext()
    if config.regions:
        cond_rows = slice(batch, 2 * batch) if guided else slice(0, batch)
        regional = RegionalAttention(base.unet, config.regions, region_contexts, latent_hw, cond_rows, region_pass)
    timesteps = scheduler.timesteps
    # per step: were the latents still finite? Kept on the device and read once at the end (and before a
    # preview), so that the loop does not wait for the GPU at every step
    finite = torch.ones(len(timesteps), dtype=torch.bool, device=device)

    def after_step(i: int, t: torch.Tensor, out: Any) -> None:
        finite[i] = torch.isfinite(out.prev_sample).all()
        preview = None
        if config.preview_every and ((i + 1) % config.preview_every == 0 or i + 1 == len(timesteps)):
            _check_finite(finite, len(timesteps))
            estimate = getattr(out, "pred_original_sample", None)  # the denoised estimate, where the solver has one
            preview = previewer((estimate if estimate is not None else out.prev_sample)[:1])
        reporter.progress(i + 1, len(timesteps), preview)
        if i + 1 < len(timesteps):
            reporter.check_cancel()

    with regional:
        reporter.check_cancel()
        latents = denoise(scheduler, model, latents, config.cfg if guided else None, callback=after_step,
                          **_step_kwargs(scheduler, generators))
    _check_finite(finite, len(timesteps))
    return latents


def _initial_latents(base: BaseModel, scheduler: Any, generators: list, latent_hw: tuple[int, int],
                     dtype: torch.dtype) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    shape = (len(generators), base.unet.config.in_channels, *latent_hw)
    return randn_tensor(shape, generator=generators, device=base.device, dtype=dtype) * scheduler.init_noise_sigma


def _step_kwargs(scheduler: Any, generators: list) -> dict[str, Any]:
    """The scheduler's own per-image generators (ancestral noise) and DDIM's eta 0, where its step takes them."""
    accepted = inspect.signature(scheduler.step).parameters
    step_kwargs: dict[str, Any] = {}
    if "generator" in accepted:
        step_kwargs["generator"] = generators
    if "eta" in accepted:
        step_kwargs["eta"] = 0.0
    return step_kwargs


def _unet_model(base: BaseModel, parts: list[TextConditioning], batch: int, size: tuple[int, int],
                reporter: Reporter) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The UNet as a model callable (see clif_core.models.denoise) under `parts`' conditioning, each part
    `batch` rows; on a GPU its first call records a CUDA graph that the later calls replay."""
    context = torch.cat([p.embeds.expand(batch, -1, -1) for p in parts])
    added = None
    if base.family == "sdxl":
        added = {"text_embeds": torch.cat([p.pooled.expand(batch, -1) for p in parts]),
                 "time_ids": sdxl_time_ids(*size, len(parts) * batch, context.dtype, base.device)}

    def eager(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return base.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)[0]

    call: Optional[Callable] = None

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal call
        if call is None:
            call = _graphed(base.unet, x, t, context, added, eager, reporter) if base.device.type == "cuda" else eager
        return call(x, t)

    return model


def _check_finite(finite: torch.Tensor, steps: int) -> None:
    """Raise, naming the first step whose latents turned NaN or infinite, when there is one."""
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0]) + 1
        raise ClifError(
            f"sampling failed: the latents turned NaN or infinite at step {first} of {steps}, so every image would "
            "be black; nothing was returned. Lower the LoRA strengths or cfg, use float32 or bf16 instead of "
            "float16, or check the base model and concept files"
        )


def _graphed(unet: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, added: Optional[dict],
             eager: Callable, reporter: Reporter) -> Callable:
    """The UNet call replayed as a CUDA graph (see cuda_graph.py), or `eager` where recording fails."""
    try:
        return GraphedUNet(unet, x, t, context, added)
    except RuntimeError as err:  # an operation that cannot be recorded: sample without the graph
        reporter.log(f"sampling without a CUDA graph: recording the UNet call failed ({err})")
        return eager


def make_generate(
    base: BaseModel,
    template: Optional[SampleConfig] = None,
    concepts: ConceptsArg = (),
    max_batch: int = 4,
    reporter: Reporter = SILENT,
) -> Callable[[str, int, int], list]:
    """A `generate(prompt, n, seed) -> n PIL images` callable (the shape `clif_core.augment.generate_common` and
    prior preservation take), sampling with `template`'s settings in batches of at most `max_batch`.

    Image i is drawn from seed `seed + i`, so the images do not depend on `max_batch`.
    """
    template = template or SampleConfig(prompt="")
    uses = as_uses(concepts)
    if max_batch < 1:
        raise ClifError(f"max_batch is {max_batch}; use 1 or more")

    def generate(prompt: str, n: int, seed: int) -> list:
        images: list = []
        for start in range(0, n, max_batch):
            config = dataclasses.replace(template, prompt=prompt, seed=seed + start, batch=min(max_batch, n - start))
            images += sample(base, config, uses, reporter).images
        return images

    return generate
