"""Stage 1 of CLIF: contrastive image-language fine-tuning of the concept token embeddings.

Image side: a frozen CLIP vision tower; its embeddings of every dataset image are computed once. Text side:
the end-of-text feature of the caption through the paired text encoder (`vision.pair_encoder`) and CLIP's
text projection. Trained: the concept token rows of that encoder (k per concept, starting from the class
word), optionally a LoRA on the encoder, optionally the temperature. Loss: symmetric InfoNCE on unit-length
features, L = ½[CE(s·I·Tᵀ) + CE(s·T·Iᵀ)], s = exp(logit scale) ≤ 100; identical captions in a batch count
as positives of each other. Batches hold hard negatives together (`data.hard_negative_order`).

SD1/SD2 text encoders ship without CLIP's text projection. When the vision source is a full CLIP model its
projection is used; otherwise a linear head (identity at the start when the widths agree) is learnt along
and discarded afterwards. The output is an intermediate concept file: the embeddings of every encoder
(untrained encoders keep their class-word start) and the optional text LoRA, for stage 2.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Optional, Sequence

import torch
import torch.nn.functional as F

from clif_core.concepts.file_format import ConceptFile
from clif_core.concepts.lora_keys import TEXT_LORA_TARGETS, lora_from_peft, text_encoder_keys
from clif_core.errors import ClifError
from clif_core.fileio import in_use
from clif_core.models.prompts import pooled_features
from clif_core.options import STAGE1
from clif_core.progress import SILENT, Reporter
from clif_core.training.loop import LoopConfig, ParamGroup, run_training
from clif_core.training.lora import trainable_lora
from clif_core.training.losses import info_nce
from clif_core.training.precision import check_precision, make_accelerator
from clif_core.training.result import METRICS_FILE, RunResult
from clif_core.training.run_folder import RunFolder, base_recipe, open_run
from clif_core.validation import check_finite_fields

from . import data
from .leakage import SCORES_FILE, LeakagePreview, leakage_prompts, preview_scorer
from .tokens import ConceptTokens, initial_concepts
from .vision import VisionTower, load_vision_tower, pair_encoder

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

OUTPUT = "stage1.safetensors"
ADAPTER = "clif_stage1"
CLIP_LOGIT_SCALE = math.log(100.0)  # trained CLIP models sit at the clamp, s = 100


@dataclass
class ContrastiveConfig:
    """Stage 1 settings; `loop` holds the shared ones (steps, batch size, precision, seed, …). Defaults, limits
    and help: `options.STAGE1`."""

    vectors: int = STAGE1.field("vectors")  # token vectors per concept (the public code uses 2)
    lr: float = STAGE1.field("lr")  # token rows (and the learnt projection head, when there is one)
    text_lora_rank: int = STAGE1.field("text_lora_rank")  # 0: token rows only
    text_lora_alpha: float = STAGE1.field("text_lora_alpha")  # 0: the rank (scale 1)
    text_lora_lr: float = STAGE1.field("text_lora_lr")
    text_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    learnable_temperature: bool = STAGE1.field("learnable_temperature")
    temperature_lr: float = 1e-3
    holdout: float = STAGE1.field("holdout")  # fraction of composition groups held out for the retrieval metric
    preview_steps: int = STAGE1.field("preview_steps")  # leakage previews' sampling steps; 0: the loss curve
    loop: LoopConfig = STAGE1.field("loop", LoopConfig)

    def check(self) -> None:
        self.loop.check()
        check_finite_fields(self, "stage 1 setting")
        if self.vectors < 1:
            raise ClifError(f"vectors per concept is {self.vectors}; it must be at least 1")
        for name in ("lr", "text_lora_lr", "temperature_lr", "preview_steps"):
            if getattr(self, name) < 0:
                raise ClifError(f"stage 1 setting {name} is {getattr(self, name)}; it cannot be negative")
        if self.text_lora_rank < 0:
            raise ClifError(f"text_lora_rank is {self.text_lora_rank}; use 0 (no LoRA) or more")
        bad = [t for t in self.text_lora_targets if t not in TEXT_LORA_TARGETS]
        if self.text_lora_rank and (bad or not self.text_lora_targets):
            raise ClifError(
                f"text LoRA targets {list(self.text_lora_targets)}: choose among {', '.join(TEXT_LORA_TARGETS)}")
        if self.text_lora_rank and {"q_proj", "k_proj", "v_proj"} & set(self.text_lora_targets) \
                and "out_proj" not in self.text_lora_targets:
            raise ClifError("a text LoRA on q/k/v_proj must include out_proj (diffusers cannot load it otherwise)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["text_lora_targets"] = list(self.text_lora_targets)
        d["loop"] = self.loop.to_dict()
        return d


class TextSide(torch.nn.Module):
    """Captions → text features in the image embedding space (encoder + projection), with the temperature."""

    def __init__(self, slot: Any, tower: VisionTower, logit_scale: float, learnable_temperature: bool, seed: int):
        super().__init__()
        self.slot = slot
        self.device = next(slot.encoder.parameters()).device
        self.fixed_projection: Optional[torch.Tensor] = None
        self.head: Optional[torch.nn.Linear] = None
        has_own = getattr(slot.encoder, "text_projection", None) is not None
        if not has_own and tower.text_projection is not None:
            self.fixed_projection = tower.text_projection
        elif not has_own:
            width, proj = slot.width, tower.projection_dim
            self.head = torch.nn.Linear(width, proj, bias=False, device=self.device)
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                if width == proj:
                    self.head.weight.copy_(torch.eye(proj))
                else:
                    torch.nn.init.orthogonal_(self.head.weight)
            self.head.requires_grad_(False)
        scale = torch.tensor(logit_scale, dtype=torch.float32, device=self.device)
        self.logit_scale = torch.nn.Parameter(scale.clone(), requires_grad=False) if learnable_temperature else None
        self.fixed_scale = scale

    @property
    def projection(self) -> str:
        if self.head is not None:
            return "learnt linear head (this encoder has no CLIP text projection)"
        if self.fixed_projection is not None:
            return "the text projection that came with the vision tower (frozen)"
        return "the encoder's own text projection"

    def scale(self) -> torch.Tensor:
        value = self.logit_scale if self.logit_scale is not None else self.fixed_scale
        # CLIP's clamp, compared in float32 so that a scale starting at the bound still gets a gradient
        return torch.minimum(value, value.new_tensor(CLIP_LOGIT_SCALE)).exp()

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        features = pooled_features(self.slot, captions, self.device)
        if self.head is not None:
            features = self.head(features.to(self.head.weight.dtype))
        elif self.fixed_projection is not None:
            features = features.float() @ self.fixed_projection.T
        return features


class ContrastiveTask:
    """The loop's view of stage 1."""

    def __init__(self, ds: Any, train_idx: list[int], features: torch.Tensor, captions: list[str],
                 tokens: ConceptTokens, text: TextSide, config: ContrastiveConfig, lora: dict[str, torch.nn.Parameter],
                 leakage: LeakagePreview):
        self.ds, self.train_idx, self.features, self.captions = ds, train_idx, features, captions
        self.tokens, self.text, self.config, self.lora, self.leakage = tokens, text, config, lora, leakage

    def param_groups(self) -> list[ParamGroup]:
        c = self.config
        groups = [ParamGroup("tokens", {self.text.slot.name: self.tokens.rows[self.text.slot.name]}, c.lr, 0.0)]
        if self.text.head is not None:
            groups.append(ParamGroup("head", {"weight": self.text.head.weight}, c.lr))
        if self.lora:
            groups.append(ParamGroup("text_lora", self.lora, c.text_lora_lr))
        if self.text.logit_scale is not None:
            groups.append(ParamGroup("temperature", {"logit_scale": self.text.logit_scale}, c.temperature_lr, 0.0))
        return groups

    def modules(self) -> list[torch.nn.Module]:
        return [self.text.slot.encoder]

    def num_samples(self) -> int:
        return len(self.train_idx)

    def epoch_order(self, epoch: int, seed: int, batch_size: int) -> list[int]:
        return data.hard_negative_order(self.ds.records, self.train_idx, epoch, seed, batch_size)

    def load_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, list[str]]:
        return self.features[list(indices)], [self.captions[i] for i in indices]

    def loss(self, batch: tuple[torch.Tensor, list[str]]) -> torch.Tensor:
        image, captions = batch
        return info_nce(image, self.text(captions), captions, self.text.scale())

    def preview(self, step: int) -> Optional[Any]:
        """The leakage grid with the tokens as trained so far and the base UNet, or None (the loss curve)."""
        return self.leakage.grid(step) if self.config.preview_steps else None


@torch.no_grad()
def image_features(ds: Any, tower: VisionTower, batch: int = 32) -> torch.Tensor:
    """The tower's embedding of every dataset image, float32 [N, D] (the tower is frozen: computed once)."""
    out = []
    for start in range(0, len(ds), batch):
        images = torch.stack([ds[i].image for i in range(start, min(len(ds), start + batch))])
        out.append(tower.encode(images))
    return torch.cat(out)


@torch.no_grad()
def text_features(text: TextSide, captions: Sequence[str], autocast: Any, batch: int = 64) -> torch.Tensor:
    out = []
    for start in range(0, len(captions), batch):
        with autocast():
            out.append(text(captions[start : start + batch]).float())
    return torch.cat(out)


def retrieval_accuracy(image: torch.Tensor, text: torch.Tensor, captions: Sequence[str]) -> dict[str, float]:
    """Top-1 caption↔image retrieval among the given pairs; retrieving an identical caption counts as right."""
    sim = F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    i2t = sum(captions[j] == captions[i] for i, j in enumerate(sim.argmax(dim=1).tolist()))
    t2i = sum(captions[i] == captions[j] for j, i in enumerate(sim.argmax(dim=0).tolist()))
    n = max(1, len(captions))
    return {"image_to_caption": i2t / n, "caption_to_image": t2i / n, "pairs": len(captions)}


def pairwise_cosine(concepts: ConceptFile | Sequence[Any], encoder: str) -> dict[str, float]:
    """Cosine similarity of every pair of concepts' flattened [k, width] embeddings of `encoder`."""
    entries = concepts.concepts if isinstance(concepts, ConceptFile) else list(concepts)
    out = {}
    for i, a in enumerate(entries):
        for b in entries[i + 1 :]:
            out[f"{a.token}|{b.token}"] = float(F.cosine_similarity(
                a.embeddings[encoder].flatten().float(), b.embeddings[encoder].flatten().float(), dim=0))
    return out


def _evaluate(task: ContrastiveTask, held: list[int], autocast: Any) -> dict[str, Any]:
    """Loss on (up to 256 of) the training pairs as one batch, and retrieval on the held-out pairs."""
    text = task.text
    sample = task.train_idx[:256]
    caps = [task.captions[i] for i in sample]
    feats = text_features(text, caps, autocast)
    out: dict[str, Any] = {
        "train_loss": float(info_nce(task.features[sample], feats, caps, text.scale().detach())),
        "concept_cosine": pairwise_cosine(task.tokens.entries(), text.slot.name),
    }
    if held:
        held_caps = [task.captions[i] for i in held]
        out["retrieval_heldout"] = retrieval_accuracy(task.features[held], text_features(text, held_caps, autocast),
                                                      held_caps)
    return out


def train_contrastive(
    base: BaseModel,
    dataset: str | Path,
    vision: str | Path | VisionTower,
    run_dir: str | Path,
    config: Optional[ContrastiveConfig] = None,
    reporter: Reporter = SILENT,
    accelerator: Any = None,
    restart: bool = False,
) -> RunResult:
    """Run stage 1 on `base` (a BaseModel, left unchanged afterwards) with the augmented `dataset` folder.

    Writes RUN/stage1.safetensors (an intermediate concept file) and RUN/metrics.json; resumes from RUN's
    checkpoints when the settings match (`restart` starts over).
    """
    config = config or ContrastiveConfig()
    config.check()
    ds = data.open_dataset(dataset)
    accelerator = accelerator or make_accelerator(config.loop, base.device)
    check_precision(base, accelerator.mixed_precision)
    tower = vision if isinstance(vision, VisionTower) else load_vision_tower(vision, base.device, base.dtype)
    slot_name, note = pair_encoder(base, tower)
    run = RunFolder(run_dir, outputs=(OUTPUT, METRICS_FILE))
    with in_use(run.path, enabled=accelerator.is_main_process):
        recipe = _recipe(base, ds, tower, config)
        open_run(run, recipe, restart, accelerator)
        reporter.log(f"stage 1: {note}")

        train_idx, held = data.holdout_split(ds.records, config.holdout, config.loop.seed)
        if not train_idx:
            raise ClifError(f"dataset {ds.root} leaves no training samples after holding out {config.holdout:.0%}")
        features = image_features(ds, tower)
        init = initial_concepts(base, data.dataset_concepts(ds), config.vectors)
        slot = base.slot(slot_name)
        with ConceptTokens(base, init, trainable=[slot_name]) as tokens, _text_lora(slot.encoder, config) as lora:
            captions = [tokens.expand(r.caption) for r in ds.records]
            logit_scale = tower.logit_scale if tower.logit_scale is not None else CLIP_LOGIT_SCALE
            text = TextSide(slot, tower, logit_scale, config.learnable_temperature, config.loop.seed)
            placeholders = [c.token for c in init.concepts]
            leakage = LeakagePreview(
                base, leakage_prompts(ds.records, placeholders), tokens.applied.tokens,
                [base.unet, *(s.encoder for s in base.text)], config.preview_steps, config.loop.seed,
                scorer=preview_scorer(base, placeholders, bool(config.preview_steps and config.loop.preview_every)),
                scores_file=run.previews_dir / SCORES_FILE)
            task = ContrastiveTask(ds, train_idx, features, captions, tokens, text, config, lora, leakage)
            before = _evaluate(task, held, accelerator.autocast)
            trained = run_training(task, config.loop, run, accelerator, reporter, label="stage 1 (contrastive)")
            after = _evaluate(task, held, accelerator.autocast)
            concepts = _stage1_file(base, tokens, slot_name, bool(lora), recipe)
        metrics = {
            "paired_encoder": slot_name, "projection": text.projection, "temperature": float(text.scale()),
            "before": before, "after": after, "final_loss": trained.final_loss,
        }
        concepts.metadata = {"stage1": {**metrics, "note": note}}
        result = RunResult(concepts, run.output(OUTPUT), run.path, metrics, [note], trained)
        result.write(run, accelerator)
        reporter.log(f"stage 1 concept cosine {before['concept_cosine']} → {after['concept_cosine']}")
        return result


def _recipe(base: BaseModel, ds: Any, tower: VisionTower, config: ContrastiveConfig) -> dict[str, Any]:
    """What must match for a run to resume: the stage, its settings, the base, the dataset and the tower's shape."""
    return {
        "stage": "contrastive", "config": config.to_dict(), "base": base_recipe(base),
        "dataset": data.dataset_fingerprint(ds), "vision": {"projection_dim": tower.projection_dim,
                                                             "hidden_size": int(tower.model.config.hidden_size)},
    }


def _stage1_file(base: BaseModel, tokens: ConceptTokens, slot_name: str, with_lora: bool,
                 recipe: dict[str, Any]) -> ConceptFile:
    """The intermediate concept file: the trained token rows and, when trained, the paired encoder's text LoRA."""
    slot = base.slot(slot_name)
    text_lora = lora_from_peft(slot.encoder, text_encoder_keys(base.family, slot_name).kohya_prefix, ADAPTER) \
        if with_lora else {}
    return ConceptFile(
        concepts=tokens.entries(), base_family=base.family, encoder_widths={s.name: s.width for s in base.text},
        base_fingerprint=base.fingerprint, base_prediction_type=base.prediction_type, text_lora=text_lora,
        recipe={"stage1": recipe}, title=", ".join(c.name for c in tokens.init.concepts) + " (stage 1)",
    )


def _text_lora(encoder: Any, config: ContrastiveConfig) -> ContextManager[dict[str, torch.nn.Parameter]]:
    """The text encoder's trainable LoRA (weights drawn from the run's seed), or none when its rank is 0."""
    if not config.text_lora_rank:
        return contextlib.nullcontext({})
    return trainable_lora(encoder, ADAPTER, config.text_lora_rank, config.text_lora_alpha or config.text_lora_rank,
                          config.text_lora_targets, config.loop.seed)
