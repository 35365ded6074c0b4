"""CLIF training in ComfyUI: Contrastive Encoder Training (stage 1), Decoder Training (stage 2), Train
Concepts (both), Loss Plot.

Runs live in output/clif_runs/<run name>/: queueing the same graph again after a cancel (or a crash)
resumes from the last checkpoint; 'restart' starts over. The vision tower of stage 1 comes from
models/clip_vision (a .safetensors file, or a transformers folder holding config.json).
"""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from .comfy_adapter import run_dir as _run_dir
from .types import BaseModelType, ConceptsType, DatasetType
from .widgets import settings, widget, widgets

CLIP_VISION = "clip_vision"

# Node input name → setting of the stage's config (clif_core.options.STAGE1 / STAGE2): the widgets and the
# configs are both built from these, so a widget's default, limits and tooltip are the setting's own.
_STEPS = {"steps": "loop.steps", "batch_size": "loop.batch_size"}
_LOOP = {"mixed_precision": "loop.mixed_precision", "seed": "loop.seed", "preview_every": "loop.preview_every",
         "checkpoint_every": "loop.checkpoint_every"}
_STAGE1 = {"text_lora_rank": "text_lora_rank", "learnable_temperature": "learnable_temperature",
           "preview_steps": "preview_steps"}
_DECODER = {"token_learning_rate": "token_lr", "lora_rank": "lora_rank", "lora_alpha": "lora_alpha",
            "lora_targets": "lora_targets", "masked_loss": "masked_loss", "min_snr_gamma": "min_snr_gamma",
            "noise_offset": "noise_offset", "prior_weight": "prior_weight", "prior_images": "prior_images",
            "gradient_checkpointing": "loop.gradient_checkpointing", "preview_steps": "preview_steps"}
_TWO_STAGES = {1: {"stage1_steps": "loop.steps", "stage1_batch_size": "loop.batch_size",
                   "stage1_learning_rate": "lr", "vectors_per_concept": "vectors"},
               2: {"stage2_steps": "loop.steps", "stage2_batch_size": "loop.batch_size",
                   "stage2_learning_rate": "lr", "vectors_per_concept": "vectors"}}
_SHARED_LOOP = {"mixed_precision": "loop.mixed_precision", "seed": "loop.seed", "preview_every": "loop.preview_every",
                "checkpoint_every": "loop.checkpoint_every", "preview_steps": "preview_steps"}
"""Train Concepts' widgets that also set stage 1: the leakage previews follow both stages with the same cadence."""


def _vision_choices() -> list[str]:
    """The bundled sandbox vision tower, models/clip_vision files, and transformers folders there (shown with
    a trailing '/')."""
    import folder_paths

    from clif_core.models.bundled import SANDBOX_VISION_CHOICE, sandbox_available

    names = [SANDBOX_VISION_CHOICE] if sandbox_available() else []
    names += list(folder_paths.get_filename_list(CLIP_VISION))
    for root in folder_paths.get_folder_paths(CLIP_VISION):
        if os.path.isdir(root):
            names += sorted(d + "/" for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "config.json")))
    return names


def _vision_path(choice: str) -> str:
    import folder_paths

    from clif_core.models.bundled import SANDBOX_VISION, SANDBOX_VISION_CHOICE

    if choice == SANDBOX_VISION_CHOICE:
        return str(SANDBOX_VISION)
    if choice.endswith("/"):
        for root in folder_paths.get_folder_paths(CLIP_VISION):
            if os.path.isfile(os.path.join(root, choice, "config.json")):
                return os.path.join(root, choice.rstrip("/"))
        raise FileNotFoundError(f"CLIP vision folder {choice!r} is not in models/{CLIP_VISION}; refresh the list.")
    return folder_paths.get_full_path_or_raise(CLIP_VISION, choice)


def _config(default, names: dict[str, str], inputs: dict):
    """`default` (a stage's config) with the node's inputs set; the log cadence follows the number of steps."""
    from clif_core.options import configure

    config = configure(default, settings(names, inputs))
    config = configure(config, {"loop.log_every": max(1, min(50, config.loop.steps // 20))})
    config.check()
    return config


def _output(result, run_dir=None) -> io.NodeOutput:
    report = result.report()
    return io.NodeOutput(result.file, str(result.path), str(run_dir or result.run_dir), report,
                         ui={"text": [report]})


_OUTPUTS = [
    ConceptsType.Output(display_name="concepts"),
    io.String.Output(display_name="concept_file"),
    io.String.Output(display_name="run_dir"),
    io.String.Output(display_name="report"),
]

_BASE_TIP = "the base model to train on (CLIF Load Base Model)"
_DATASET_TIP = "the augmented training set (CLIF Augment)"
_VISION_TIP = "models/clip_vision: a .safetensors file or a transformers folder"


def _run_inputs(vision: bool) -> list:
    """The inputs every training node starts with: base, dataset, the CLIP vision tower (for the contrastive stage), the run."""
    return [
        BaseModelType.Input("clif_base", tooltip=_BASE_TIP),
        DatasetType.Input("dataset", tooltip=_DATASET_TIP),
        *([io.Combo.Input("clip_vision", options=_vision_choices(), tooltip=_VISION_TIP)] if vision else []),
        io.String.Input("run_name", default="my_concepts",
                        tooltip="output/clif_runs/<run_name>: queue again to resume an interrupted run"),
        io.Boolean.Input("restart", default=False, tooltip="discard this run's checkpoints and start over"),
    ]


class ContrastiveEncoderTraining(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from clif_core.options import STAGE1

        return io.Schema(
            node_id="CLIFContrastiveTraining",
            display_name="CLIF Contrastive Encoder Training",
            category="CLIF/train",
            description="Stage 1: trains the concept token embeddings (optionally a text LoRA) contrastively "
            "against a frozen CLIP vision tower, so concepts stop being confused. Outputs an intermediate "
            "concept file for Decoder Training. SD1.x: ViT-L/14 tower, SD2.x: ViT-H/14, SDXL: ViT-bigG/14 "
            "(with a ViT-L/14 only the first text encoder is trained; the report says so).",
            is_output_node=True,
            inputs=[
                *_run_inputs(vision=True),
                *widgets(STAGE1, _STEPS),
                widget(STAGE1, "lr", "learning_rate"),
                widget(STAGE1, "vectors", "vectors_per_concept"),
                *widgets(STAGE1, {**_LOOP, **_STAGE1}, optional=True),
            ],
            outputs=_OUTPUTS,
        )

    @classmethod
    def execute(cls, clif_base, dataset: str, clip_vision: str, run_name: str, restart: bool,
                **inputs) -> io.NodeOutput:
        from clif_core.train.contrastive import ContrastiveConfig, train_contrastive

        from .comfy_adapter import train_with

        names = {**_STEPS, "learning_rate": "lr", "vectors_per_concept": "vectors", **_LOOP, **_STAGE1}
        config = _config(ContrastiveConfig(), names, inputs)
        run_dir, vision = _run_dir(run_name), _vision_path(clip_vision)
        return _output(train_with(clif_base, config.loop.steps, lambda base, rep: train_contrastive(
            base, dataset, vision, run_dir, config, rep, restart=restart)))


class DecoderTraining(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from clif_core.options import STAGE2

        return io.Schema(
            node_id="CLIFDecoderTraining",
            display_name="CLIF Decoder Training",
            category="CLIF/train",
            description="Stage 2: fine-tunes a UNet LoRA and the concept tokens on the augmented dataset, "
            "starting from Contrastive Encoder Training's concepts when connected. Writes the final concept "
            "file into the run folder (save it to models/clif_concepts with Save Concept File).",
            is_output_node=True,
            inputs=[
                *_run_inputs(vision=False),
                *widgets(STAGE2, _STEPS),
                widget(STAGE2, "lr", "learning_rate"),
                ConceptsType.Input("concepts", optional=True, tooltip="stage 1's output; without it each concept "
                                   "starts from its class word"),
                widget(STAGE2, "vectors", "vectors_per_concept", optional=True),
                *widgets(STAGE2, {**_LOOP, **_DECODER}, optional=True),
            ],
            outputs=_OUTPUTS,
        )

    @classmethod
    def execute(cls, clif_base, dataset: str, run_name: str, restart: bool, concepts=None,
                **inputs) -> io.NodeOutput:
        from clif_core.train.decoder import DecoderConfig, train_decoder

        from .comfy_adapter import train_with

        names = {**_STEPS, "learning_rate": "lr", "vectors_per_concept": "vectors", **_LOOP, **_DECODER}
        config = _config(DecoderConfig(), names, inputs)
        run_dir = _run_dir(run_name)
        return _output(train_with(clif_base, config.loop.steps, lambda base, rep: train_decoder(
            base, dataset, run_dir, config, init=concepts, reporter=rep, restart=restart)))


class TrainConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from clif_core.options import STAGE1, STAGE2

        s1, s2 = "stage 1 (contrastive): ", "stage 2 (decoder): "
        return io.Schema(
            node_id="CLIFTrainConcepts",
            display_name="CLIF Train Concepts",
            category="CLIF/train",
            description="Both CLIF stages in one node: contrastive training of the concept tokens against the "
            "CLIP vision tower, then UNet LoRA + tokens on the augmented dataset. Cancel keeps the finished "
            "steps; queue again to resume (output/clif_runs/<run_name>).",
            is_output_node=True,
            inputs=[
                *_run_inputs(vision=True),
                widget(STAGE1, "loop.steps", "stage1_steps", s1),
                widget(STAGE2, "loop.steps", "stage2_steps", s2),
                widget(STAGE1, "loop.batch_size", "stage1_batch_size", s1, optional=True),
                widget(STAGE2, "loop.batch_size", "stage2_batch_size", s2, optional=True),
                widget(STAGE1, "lr", "stage1_learning_rate", s1, optional=True),
                widget(STAGE2, "lr", "stage2_learning_rate", s2, optional=True),
                widget(STAGE2, "vectors", "vectors_per_concept", optional=True),
                *widgets(STAGE2, {**_LOOP, **_DECODER}, optional=True),
            ],
            outputs=_OUTPUTS,
        )

    @classmethod
    def execute(cls, clif_base, dataset: str, clip_vision: str, run_name: str, restart: bool,
                **inputs) -> io.NodeOutput:
        from clif_core.train.both_stages import train_concepts
        from clif_core.train.contrastive import ContrastiveConfig
        from clif_core.train.decoder import DecoderConfig

        from .comfy_adapter import train_with

        stage1 = _config(ContrastiveConfig(), {**_TWO_STAGES[1], **_SHARED_LOOP}, inputs)
        stage2 = _config(DecoderConfig(), {**_TWO_STAGES[2], **_LOOP, **_DECODER}, inputs)
        run_dir, vision = _run_dir(run_name), _vision_path(clip_vision)
        result = train_with(clif_base, stage1.loop.steps + stage2.loop.steps, lambda base, rep: train_concepts(
            base, dataset, vision, run_dir, stage1, stage2, rep, restart=restart))
        return _output(result, run_dir)  # the run's folder: the Loss Plot shows both stages


def _resolve_run(run_dir: str) -> str:
    """A run folder path, or a run name under output/clif_runs."""
    return run_dir if os.path.isabs(run_dir) else _run_dir(run_dir)


class LossPlot(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFLossPlot",
            display_name="CLIF Loss Plot",
            category="CLIF/train",
            description="The loss curve of a training run as an image (raw loss and its running mean); for Train "
            "Concepts one panel per stage. Takes a training node's run_dir or a run name.",
            inputs=[io.String.Input("run_dir", default="my_concepts",
                                    tooltip="a run folder (a training node's run_dir output) or a run name")],
            outputs=[io.Image.Output(display_name="IMAGE")],
        )

    @classmethod
    def fingerprint_inputs(cls, run_dir: str | None = None, **_) -> tuple | float:
        if run_dir is None:  # linked to a training node: the folder is known only when the node runs
            return float("nan")  # never equal to itself, so the cheap plot is always drawn afresh
        from clif_core.errors import ClifError
        from clif_core.runs import loss_curves

        try:
            curves = loss_curves(_resolve_run(run_dir))
        except ClifError:
            return (run_dir, None)
        return tuple((path, os.stat(path).st_mtime_ns) for _, path in curves)

    @classmethod
    def execute(cls, run_dir: str) -> io.NodeOutput:
        from pathlib import Path

        from clif_core.runs import loss_curves
        from clif_core.training.curve import draw_loss_curve, read_loss_csv

        from .comfy_adapter import pil_to_image

        folder = _resolve_run(run_dir)
        curves = loss_curves(folder)
        if not curves:
            raise FileNotFoundError(f"{folder} holds no loss.csv yet: give a training run's folder or run name.")
        return io.NodeOutput(pil_to_image(draw_loss_curve([(t, read_loss_csv(Path(p))) for t, p in curves])))


NODES = [ContrastiveEncoderTraining, DecoderTraining, TrainConcepts, LossPlot]
