"""Stage 2 of CLIF: decoder fine-tuning on the augmented set, ending in the final concept file.

Loss: the denoising loss ‖target − UNet(z_t, t, τ(caption))‖² with the target the scheduler's prediction type
asks for (ε for epsilon, v for v_prediction, z₀ for sample). Trained: a peft LoRA on the UNet (rank, alpha
and target modules configurable; by default rank 16 on the attention projections) and the concept token
rows of every text encoder at a lower learning rate; the rest is frozen, a text LoRA from stage 1 included.
Options: loss weighted by the slot masks (the pictured items count fully, the white background by
`background_weight`), prior preservation with class images (`prior.class_images`), min-SNR weighting
(Hang et al. 2023) and noise offset. VAE latents are encoded once (their mean and spread; a new latent is
drawn from them every step). The output file (`save_concept_file`, UNet LoRA through `lora_from_peft`)
loads in `apply_concepts`, ComfyUI's Apply Concepts and its stock LoraLoader.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Sequence

import torch
import torch.nn.functional as F

from clif_core.concepts.file_format import ConceptFile
from clif_core.concepts.lora_keys import UNET_LORA_TARGETS, UNET_PREFIX, lora_from_peft
from clif_core.concepts.thumbnail import make_thumbnail
from clif_core.errors import ClifError
from clif_core.fileio import in_use
from clif_core.models.base import BaseModel
from clif_core.models.prompts import unet_conditioning
from clif_core.models.vae import encode_pixels
from clif_core.options import STAGE2
from clif_core.progress import SILENT, Reporter
from clif_core.training.loop import LoopConfig, ParamGroup, TrainResult, run_training
from clif_core.training.lora import trainable_lora
from clif_core.training.losses import min_snr_weight
from clif_core.training.precision import check_precision, make_accelerator
from clif_core.training.result import METRICS_FILE, RunResult
from clif_core.training.run_folder import RunFolder, base_recipe, open_run
from clif_core.validation import check_finite_fields

from . import data
from .leakage import SCORES_FILE, LeakagePreview, PreviewPrompt, leakage_prompts, preview_scorer
from .prior import CLASS_PROMPT, class_images
from .tokens import ConceptTokens, initial_concepts

OUTPUT = "concepts.safetensors"
ADAPTER = "clif_stage2"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass
class DecoderConfig:
    """Stage 2 settings; `loop` holds the shared ones. Defaults, limits and help: `options.STAGE2`."""

    vectors: int = STAGE2.field("vectors")  # token vectors per concept when there is no stage-1 file to start from
    lora_rank: int = STAGE2.field("lora_rank")
    lora_alpha: float = STAGE2.field("lora_alpha")  # 0: the rank (scale 1)
    lora_targets: tuple[str, ...] = STAGE2.field("lora_targets")
    lr: float = STAGE2.field("lr")  # UNet LoRA (the public code's)
    train_tokens: bool = STAGE2.field("train_tokens")
    token_lr: float = STAGE2.field("token_lr")
    masked_loss: bool = STAGE2.field("masked_loss")
    background_weight: float = STAGE2.field("background_weight")
    min_snr_gamma: float = STAGE2.field("min_snr_gamma")  # 0: off; 5 is the paper's value
    noise_offset: float = STAGE2.field("noise_offset")
    prior_weight: float = STAGE2.field("prior_weight")  # 0: no prior preservation
    prior_images: int = STAGE2.field("prior_images")  # per class word
    prior_generation_steps: int = 25
    preview_prompt: str = STAGE2.field("preview_prompt")  # "": a caption of the dataset with every concept
    preview_steps: int = STAGE2.field("preview_steps")  # 0: no rendered previews (the loss curve instead)
    loop: LoopConfig = STAGE2.field("loop", LoopConfig)

    def check(self) -> None:
        self.loop.check()
        check_finite_fields(self, "stage 2 setting")
        if self.lora_rank < 1:
            raise ClifError(f"lora_rank is {self.lora_rank}; it must be at least 1")
        bad = [t for t in self.lora_targets if t not in UNET_LORA_TARGETS]
        if bad or not self.lora_targets:
            raise ClifError(
                f"UNet LoRA targets {list(self.lora_targets)}: choose among {', '.join(UNET_LORA_TARGETS)} "
                "(the modules both ComfyUI and diffusers load)"
            )
        for name in ("lr", "token_lr", "background_weight", "min_snr_gamma", "noise_offset", "prior_weight",
                     "lora_alpha"):
            if getattr(self, name) < 0:
                raise ClifError(f"stage 2 setting {name} is {getattr(self, name)}; it cannot be negative")
        if self.prior_weight and self.prior_images < 1:
            raise ClifError("prior preservation needs prior_images of at least 1")
        if self.vectors < 1:
            raise ClifError(f"vectors per concept is {self.vectors}; it must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        d["loop"] = self.loop.to_dict()
        return d


@dataclass
class Latents:
    """Encoded images: the VAE's latent mean and spread, caption (expanded), loss weights [N, 1, h, w]."""

    mean: torch.Tensor
    std: torch.Tensor
    captions: list[str]
    weights: torch.Tensor
    size: tuple[int, int]  # image (h, w) in pixels


def _weights(masks: Sequence[torch.Tensor], latent_hw: tuple[int, int], background: float, on: bool) -> torch.Tensor:
    """Per-sample loss weights [N, 1, h, w] with mean 1: slot masks count 1, background `background`."""
    if not on:
        return torch.ones(len(masks), 1, *latent_hw)
    maps = torch.stack([m.any(dim=0, keepdim=True).float() for m in masks])
    maps = F.interpolate(maps, size=latent_hw, mode="area")
    w = maps + background * (1 - maps)
    return w / w.mean(dim=(1, 2, 3), keepdim=True).clamp(min=1e-8)


class DecoderTask:
    """The loop's view of stage 2."""

    def __init__(self, base: BaseModel, tokens: ConceptTokens, lora: dict[str, torch.nn.Parameter], config: DecoderConfig,
                 train: Latents, prior: Optional[Latents], previews: Sequence[PreviewPrompt],
                 scorer: Optional[Callable] = None, scores_file: Optional[Path] = None):
        from diffusers import DDPMScheduler

        self.base, self.tokens, self.lora, self.config = base, tokens, lora, config
        self.train, self.prior = train, prior
        self.leakage = LeakagePreview(base, previews, tokens.applied.tokens, self.modules(), config.preview_steps,
                                      config.loop.seed, scorer, scores_file)
        self.noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
        self.prediction_type = base.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ClifError(
                f"the base model's prediction type {self.prediction_type!r} is not one of {PREDICTION_TYPES}")
        vae = base.vae.config
        self.scaling = float(vae.scaling_factor)
        self.shift = float(getattr(vae, "shift_factor", None) or 0.0)

    def param_groups(self) -> list[ParamGroup]:
        groups = [ParamGroup("unet_lora", self.lora, self.config.lr)]
        if self.config.train_tokens:
            groups.append(ParamGroup("tokens", dict(self.tokens.rows), self.config.token_lr, 0.0))
        return groups

    def modules(self) -> list[torch.nn.Module]:
        return [self.base.unet, *(s.encoder for s in self.base.text)]

    def num_samples(self) -> int:
        return len(self.train.captions)

    def epoch_order(self, epoch: int, seed: int, batch_size: int) -> list[int]:
        return data.shuffled_order(range(self.num_samples()), epoch, seed)

    def load_batch(self, indices: Sequence[int]) -> dict[str, Any]:
        idx = list(indices)
        return {"mean": self.train.mean[idx], "std": self.train.std[idx], "weights": self.train.weights[idx],
                "captions": [self.train.captions[i] for i in idx]}

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        device = self.base.device
        mean, std, weights, captions = batch["mean"], batch["std"], batch["weights"], list(batch["captions"])
        n_inst = len(captions)
        if self.prior is not None:  # as many class images as instance images, drawn at random
            pick = torch.randint(0, len(self.prior.captions), (n_inst,)).tolist()
            mean = torch.cat([mean, self.prior.mean[pick]])
            std = torch.cat([std, self.prior.std[pick]])
            weights = torch.cat([weights, self.prior.weights[pick]])
            captions += [self.prior.captions[i] for i in pick]
        latents = (mean + std * torch.randn(std.shape).to(device) - self.shift) * self.scaling
        noise = torch.randn(latents.shape).to(device)
        if self.config.noise_offset:
            noise = noise + self.config.noise_offset * torch.randn(latents.shape[:2] + (1, 1)).to(device)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (latents.shape[0],)).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            target = latents
        context, added = unet_conditioning(self.base, captions, device, self.train.size)
        pred = self.base.unet(noisy, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        err = ((pred.float() - target.float()) ** 2 * weights.to(device)).mean(dim=(1, 2, 3))
        if self.config.min_snr_gamma:
            err = err * min_snr_weight(self.noise_scheduler, t, self.config.min_snr_gamma, self.prediction_type)
        loss = err[:n_inst].mean()
        if self.prior is not None:
            loss = loss + self.config.prior_weight * err[n_inst:].mean()
        return loss

    def fixed_loss(self, seed: int, autocast: Callable[[], Any], count: int = 4) -> float:
        """The loss on the first `count` samples with fixed noise and timesteps (comparable across training)."""
        cuda = [self.base.device] if self.base.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=cuda), autocast():
            torch.manual_seed(seed)
            return float(self.loss(self.load_batch(range(min(count, self.num_samples())))))

    def preview(self, step: int) -> Optional[Any]:
        """The leakage grid (see leakage.py), or None (the loop then shows the loss curve)."""
        return self.leakage.grid(step) if self.config.preview_steps else None


def _check_init(init: ConceptFile, dataset_tokens: Sequence[str], where: str) -> None:
    if init.kind != "concepts":
        raise ClifError(f"{where} is an {init.kind} file; stage 2 starts from concepts (a stage-1 output)")
    if init.unet_lora:
        raise ClifError(f"{where} already has a UNet LoRA; start stage 2 from a stage-1 file or from scratch")
    tokens = [c.token for c in init.concepts]
    if sorted(tokens) != sorted(dataset_tokens):
        raise ClifError(
            f"{where} holds the concepts {tokens} but the dataset has {list(dataset_tokens)}; use the stage-1 file "
            "made from this dataset"
        )


def _fingerprint(cf: ConceptFile) -> str:
    h = hashlib.sha256()
    for c in cf.concepts:
        for enc in sorted(c.embeddings):
            h.update(f"{c.token}.{enc}".encode())
            h.update(c.embeddings[enc].float().numpy().tobytes())
    for key in sorted(cf.text_lora):
        h.update(key.encode())
        h.update(cf.text_lora[key].float().numpy().tobytes())
    return h.hexdigest()[:16]


def _unet_lora(unet: Any, config: DecoderConfig) -> ContextManager[dict[str, torch.nn.Parameter]]:
    """Stage 2's trainable UNet LoRA (weights drawn from the run's seed), taken off again on leaving."""
    return trainable_lora(unet, ADAPTER, config.lora_rank, config.lora_alpha or config.lora_rank, config.lora_targets,
                          config.loop.seed)


def train_decoder(
    base: BaseModel,
    dataset: str | Path,
    run_dir: str | Path,
    config: Optional[DecoderConfig] = None,
    init: Optional[ConceptFile] = None,
    reporter: Reporter = SILENT,
    accelerator: Any = None,
    restart: bool = False,
    class_dir: Optional[str | Path] = None,
    generate: Optional[Callable[[str, int, int], list]] = None,
) -> RunResult:
    """Run stage 2 on `base` (left unchanged afterwards) with the augmented `dataset` folder.

    `init`: the stage-1 concept file (its embeddings start the tokens, its text LoRA stays applied and goes
    into the output); None starts every concept from its class word. Prior preservation takes class images
    from `class_dir/<class word>/` or, missing those, generates them with `generate` (default: the pack's
    sampler on the base model). Writes RUN/concepts.safetensors and RUN/metrics.json.
    """
    config = config or DecoderConfig()
    config.check()
    ds = data.open_dataset(dataset)
    concepts = data.dataset_concepts(ds)
    if init is not None:
        _check_init(init, [c[1] for c in concepts], f"concept file {init.display_title()!r}")
    accelerator = accelerator or make_accelerator(config.loop, base.device)
    check_precision(base, accelerator.mixed_precision)
    run = RunFolder(run_dir, outputs=(OUTPUT, METRICS_FILE))
    with in_use(run.path, enabled=accelerator.is_main_process):
        recipe = {
            "stage": "decoder", "config": config.to_dict(), "base": base_recipe(base),
            "dataset": data.dataset_fingerprint(ds), "init": _fingerprint(init) if init is not None else None,
            "class_dir": str(class_dir) if class_dir and config.prior_weight else None,
        }
        open_run(run, recipe, restart, accelerator)
        encoded = _encode_dataset(base, ds, config)
        prior_images = None
        if config.prior_weight:
            with accelerator.main_process_first():
                prior_images = class_images(
                    base, sorted({c[2] for c in concepts}), config.prior_images, config.loop.seed,
                    run.path / "class_images", config.prior_generation_steps, Path(class_dir) if class_dir else None,
                    generate, reporter)
        start = init if init is not None else initial_concepts(base, concepts, config.vectors)
        trained = _train(base, ds, start, [c[1] for c in concepts], config, encoded, prior_images, run, accelerator,
                         reporter)
        result = RunResult(_result_file(base, init, recipe, trained), run.output(OUTPUT), run.path,
                             trained.metrics, _notes(init), trained.train)
        result.write(run, accelerator)
        return result


@dataclass
class _Trained:
    """What `_train` hands back: the concepts' vectors, the UNet LoRA, the loop's result and the metrics."""

    entries: list
    unet_lora: dict[str, torch.Tensor]
    train: TrainResult
    metrics: dict[str, Any]
    thumbnail: Optional[Any]


def _train(base: BaseModel, ds: Any, start: ConceptFile, tokens_of: Sequence[str], config: DecoderConfig,
           encoded: Latents, prior_images: Optional[Sequence[Any]], run: RunFolder, accelerator: Any,
           reporter: Reporter) -> _Trained:
    """The tokens (`tokens_of`: their placeholders in the dataset's order) and the UNet LoRA on `base` for the
    loop, and what they became; `base` is as it was afterwards."""
    trainable = [s.name for s in base.text] if config.train_tokens else []
    with ConceptTokens(base, start, trainable) as tokens:
        train_latents = Latents(encoded.mean, encoded.std, [tokens.expand(c) for c in encoded.captions],
                                encoded.weights, encoded.size)
        prior = _prior_latents(base, prior_images, encoded) if prior_images else None
        with _unet_lora(base.unet, config) as lora:
            previews = leakage_prompts(ds.records, tokens_of, config.preview_prompt)
            task = DecoderTask(base, tokens, lora, config, train_latents, prior, previews,
                               preview_scorer(base, tokens_of, bool(config.preview_steps and config.loop.preview_every)),
                               run.previews_dir / SCORES_FILE)
            before = task.fixed_loss(config.loop.seed, accelerator.autocast)
            trained = run_training(task, config.loop, run, accelerator, reporter, label="stage 2 (decoder)")
            after = task.fixed_loss(config.loop.seed, accelerator.autocast)
            thumbnail = None
            if config.preview_steps and accelerator.is_main_process:  # the last column: all concepts together
                thumbnail = make_thumbnail(task.leakage.render(previews[-1:])[0])
            unet_lora = lora_from_peft(base.unet, UNET_PREFIX, ADAPTER)
        entries = tokens.entries()
    metrics = {"fixed_batch_loss": {"before": before, "after": after}, "final_loss": trained.final_loss,
               "prediction_type": task.prediction_type, "preview_prompts": [p.prompt for p in previews]}
    return _Trained(entries, unet_lora, trained, metrics, thumbnail)


def _notes(init: Optional[ConceptFile]) -> list[str]:
    if init is not None and init.metadata.get("stage1", {}).get("note"):
        return [init.metadata["stage1"]["note"]]
    return []


def _result_file(base: BaseModel, init: Optional[ConceptFile], recipe: dict[str, Any], trained: _Trained) -> ConceptFile:
    """The final concept file: the trained tokens and UNet LoRA, stage 1's text LoRA, both stages' recipes."""
    return ConceptFile(
        concepts=trained.entries, base_family=base.family, encoder_widths={s.name: s.width for s in base.text},
        base_fingerprint=base.fingerprint, base_prediction_type=base.prediction_type, unet_lora=trained.unet_lora,
        text_lora=dict(init.text_lora) if init is not None else {},
        recipe={**(init.recipe if init is not None else {}), "stage2": recipe},
        title=", ".join(c.name for c in trained.entries), thumbnail=trained.thumbnail,
        metadata={**(init.metadata if init is not None else {}), "stage2": trained.metrics},
    )


def _encode_dataset(base: BaseModel, ds: Any, config: DecoderConfig, batch: int = 8) -> Latents:
    """Every sample's latent distribution, caption (placeholders as written) and loss weights."""
    means, stds, weights, captions = [], [], [], []
    for start in range(0, len(ds), batch):
        samples = [ds[i] for i in range(start, min(len(ds), start + batch))]
        mean, std = encode_pixels(base, [s.image for s in samples])
        means.append(mean)
        stds.append(std)
        weights.append(_weights([s.masks for s in samples], tuple(mean.shape[-2:]), config.background_weight,
                                config.masked_loss))
        captions += [s.caption for s in samples]
    size = tuple(ds[0].image.shape[-2:])
    return Latents(torch.cat(means), torch.cat(stds), captions, torch.cat(weights), size)


def _prior_latents(base: BaseModel, images: Sequence[Any], like: Latents) -> Latents:
    """Class images, centre-cropped and resized to the dataset's size, encoded once."""
    import numpy as np
    from PIL import ImageOps

    tensors, captions = [], []
    for concept in images:
        for im in concept.images:
            fitted = ImageOps.fit(im.convert("RGB"), (like.size[1], like.size[0]))
            tensors.append(torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0).permute(2, 0, 1))
            captions.append(CLASS_PROMPT.format(word=concept.word))
    mean, std = encode_pixels(base, tensors)
    return Latents(mean, std, captions, torch.ones(len(captions), *like.weights.shape[1:]), like.size)
