"""CLIF training in ComfyUI: Contrastive Encoder Training (stage 1), Decoder Training (stage 2), Train
Concepts (both), Loss Plot.

Runs live in output/clif_runs/<run name>/: queueing the same graph again after a cancel (or a crash)
resumes from the last checkpoint; 'restart' starts over. The vision tower of stage 1 comes from
models/clip_vision (a .safetensors file, or a transformers folder holding config.json).
"""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from .comfy_adapter import RUNS_FOLDER
from .types import BaseModelType, ConceptsType, DatasetType

CLIP_VISION = "clip_vision"
PRECISIONS = ["auto", "bf16", "fp16", "no"]


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


def _run_dir(run_name: str) -> str:
    import folder_paths

    name = run_name.strip()
    if not name or name in (".", "..") or os.path.basename(name) != name:
        raise ValueError(f"run_name {run_name!r} is not a plain name: give a name like 'alice_bob' (no folders).")
    return os.path.join(folder_paths.get_output_directory(), RUNS_FOLDER, name)


def _loop(steps: int, batch_size: int, precision: str, seed: int, preview_every: int, checkpoint_every: int,
          gradient_checkpointing: bool = False):
    from clif_core.training.loop import LoopConfig

    return LoopConfig(steps=steps, batch_size=batch_size, mixed_precision=precision, seed=seed,
                      preview_every=preview_every, checkpoint_every=checkpoint_every,
                      gradient_checkpointing=gradient_checkpointing, log_every=max(1, min(50, steps // 20)))


def _train(clif_base, total: int, run):
    """Load the base model for training and call `run(base, reporter)` with gradients on.

    ComfyUI's cached models leave the device first; ComfyUI executes nodes in inference mode, so training
    steps out of it (and a base model loaded there gets ordinary tensors, see `trainable_weights`).
    """
    import torch

    from .comfy_adapter import free_comfy_memory, reporter, trainable_weights

    free_comfy_memory()
    with torch.inference_mode(False), torch.enable_grad():
        base = clif_base.load()
        trainable_weights(base)
        return run(base, reporter(total))


def _output(result, run_dir=None) -> io.NodeOutput:
    report = result.report()
    return io.NodeOutput(result.concepts, str(result.path), str(run_dir or result.run_dir), report,
                         ui={"text": [report]})


_OUTPUTS = [
    ConceptsType.Output(display_name="concepts"),
    io.String.Output(display_name="concept_file"),
    io.String.Output(display_name="run_dir"),
    io.String.Output(display_name="report"),
]


def _common_inputs(steps: int, batch: int) -> list:
    return [
        io.Int.Input("steps", default=steps, min=1, max=1_000_000, tooltip="training steps"),
        io.Int.Input("batch_size", default=batch, min=1, max=4096, tooltip="images per training step"),
    ]


def _run_inputs() -> list:
    return [
        io.String.Input("run_name", default="my_concepts",
                        tooltip="output/clif_runs/<run_name>: queue again to resume an interrupted run"),
        io.Boolean.Input("restart", default=False, tooltip="discard this run's checkpoints and start over"),
    ]


def _optional_loop_inputs(preview_every: int, checkpoint_every: int) -> list:
    return [
        io.Combo.Input("mixed_precision", options=PRECISIONS, default="auto", optional=True,
                       tooltip="auto: bf16 on a GPU (fp16 where unsupported), full precision on the CPU"),
        io.Int.Input("seed", default=0, min=0, max=2**31 - 1, optional=True,
                     tooltip="seed of the data order and noise"),
        io.Int.Input("preview_every", default=preview_every, min=0, max=1_000_000, optional=True,
                     tooltip="steps between leakage previews: each concept alone and all together from one "
                     "seed, drawn with the model as trained so far (Train Concepts: in stage 2; 0: none)"),
        io.Int.Input("checkpoint_every", default=checkpoint_every, min=1, max=1_000_000, optional=True,
                     tooltip="steps between resumable checkpoints in the run folder"),
    ]


def _decoder_inputs() -> list:
    return [
        io.Float.Input("token_learning_rate", default=5e-5, min=0.0, max=1.0, step=1e-6, optional=True,
                       tooltip="learning rate of the concept token rows (the UNet LoRA uses learning_rate)"),
        io.Int.Input("lora_rank", default=16, min=1, max=256, optional=True, tooltip="rank of the UNet LoRA"),
        io.Float.Input("lora_alpha", default=0.0, min=0.0, max=1024.0, step=0.5, optional=True,
                       tooltip="0: the rank"),
        io.String.Input("lora_targets", default="to_q,to_k,to_v,to_out.0", optional=True,
                        tooltip="UNet modules, comma-separated (attention projections by default)"),
        io.Boolean.Input("masked_loss", default=False, optional=True,
                         tooltip="weight the loss by the pictured items' masks (background counts 0.1)"),
        io.Float.Input("min_snr_gamma", default=0.0, min=0.0, max=100.0, step=0.5, optional=True,
                       tooltip="min-SNR loss weighting (0: off, 5 is usual)"),
        io.Float.Input("noise_offset", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="noise offset added to the training noise (0: off)"),
        io.Float.Input("prior_weight", default=0.0, min=0.0, max=10.0, step=0.05, optional=True,
                       tooltip="prior preservation with class images the base model draws (0: off)"),
        io.Int.Input("prior_images", default=8, min=1, max=1000, optional=True,
                     tooltip="class images per class word for prior preservation"),
        io.Boolean.Input("gradient_checkpointing", default=False, optional=True,
                         tooltip="less memory, slower steps"),
        io.Int.Input("preview_steps", default=20, min=0, max=200, optional=True,
                     tooltip="sampling steps of each preview and of the file's thumbnail (0: none)"),
    ]


def _decoder_config(learning_rate, vectors, loop, token_learning_rate=5e-5, lora_rank=16,
                    lora_alpha=0.0, lora_targets="to_q,to_k,to_v,to_out.0", masked_loss=False, min_snr_gamma=0.0,
                    noise_offset=0.0, prior_weight=0.0, prior_images=8, preview_steps=20):
    from clif_core.train.decoder import DecoderConfig

    return DecoderConfig(
        vectors=vectors, lr=learning_rate, token_lr=token_learning_rate, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()), masked_loss=masked_loss,
        min_snr_gamma=min_snr_gamma, noise_offset=noise_offset, prior_weight=prior_weight,
        prior_images=prior_images, preview_steps=preview_steps, loop=loop,
    )


class ContrastiveEncoderTraining(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
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
                BaseModelType.Input("clif_base"),
                DatasetType.Input("dataset"),
                io.Combo.Input("clip_vision", options=_vision_choices(),
                               tooltip="models/clip_vision: a .safetensors file or a transformers folder"),
                *_run_inputs(),
                *_common_inputs(400, 32),
                io.Float.Input("learning_rate", default=1e-4, min=0.0, max=1.0, step=1e-6,
                               tooltip="learning rate of the token rows (and the projection head, when there is "
                               "one)"),
                io.Int.Input("vectors_per_concept", default=2, min=1, max=16,
                             tooltip="token vectors per concept (the public code uses 2)"),
                *_optional_loop_inputs(0, 100),
                io.Int.Input("text_lora_rank", default=0, min=0, max=256, optional=True,
                             tooltip="0: token embeddings only"),
                io.Boolean.Input("learnable_temperature", default=False, optional=True,
                                 tooltip="learn the contrastive loss's temperature instead of keeping it fixed"),
            ],
            outputs=_OUTPUTS,
        )

    @classmethod
    def execute(cls, clif_base, dataset: str, clip_vision: str, run_name: str, restart: bool, steps: int,
                batch_size: int, learning_rate: float, vectors_per_concept: int, mixed_precision: str = "auto",
                seed: int = 0, preview_every: int = 0, checkpoint_every: int = 100, text_lora_rank: int = 0,
                learnable_temperature: bool = False) -> io.NodeOutput:
        from clif_core.train.contrastive import ContrastiveConfig, train_contrastive

        config = ContrastiveConfig(
            vectors=vectors_per_concept, lr=learning_rate, text_lora_rank=text_lora_rank,
            learnable_temperature=learnable_temperature,
            loop=_loop(steps, batch_size, mixed_precision, seed, preview_every, checkpoint_every),
        )
        config.check()
        run_dir, vision = _run_dir(run_name), _vision_path(clip_vision)
        return _output(_train(clif_base, steps, lambda base, rep: train_contrastive(
            base, dataset, vision, run_dir, config, rep, restart=restart)))


class DecoderTraining(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFDecoderTraining",
            display_name="CLIF Decoder Training",
            category="CLIF/train",
            description="Stage 2: fine-tunes a UNet LoRA and the concept tokens on the augmented dataset, "
            "starting from Contrastive Encoder Training's concepts when connected. Writes the final concept "
            "file into the run folder (save it to models/clif_concepts with Save Concept File).",
            is_output_node=True,
            inputs=[
                BaseModelType.Input("clif_base"),
                DatasetType.Input("dataset"),
                *_run_inputs(),
                *_common_inputs(1000, 1),
                io.Float.Input("learning_rate", default=2e-4, min=0.0, max=1.0, step=1e-6,
                               tooltip="learning rate of the UNet LoRA"),
                ConceptsType.Input("concepts", optional=True, tooltip="stage 1's output; without it each concept "
                                   "starts from its class word"),
                io.Int.Input("vectors_per_concept", default=2, min=1, max=16, optional=True,
                             tooltip="used when no stage-1 concepts are connected"),
                *_optional_loop_inputs(100, 250),
                *_decoder_inputs(),
            ],
            outputs=_OUTPUTS,
        )

    @classmethod
    def execute(cls, clif_base, dataset: str, run_name: str, restart: bool, steps: int, batch_size: int,
                learning_rate: float, concepts=None, vectors_per_concept: int = 2, mixed_precision: str = "auto",
                seed: int = 0, preview_every: int = 100, checkpoint_every: int = 250,
                gradient_checkpointing: bool = False, **decoder) -> io.NodeOutput:
        from clif_core.train.decoder import train_decoder

        loop = _loop(steps, batch_size, mixed_precision, seed, preview_every, checkpoint_every, gradient_checkpointing)
        config = _decoder_config(learning_rate, vectors_per_concept, loop, **decoder)
        config.check()
        run_dir = _run_dir(run_name)
        return _output(_train(clif_base, steps, lambda base, rep: train_decoder(
            base, dataset, run_dir, config, init=concepts, reporter=rep, restart=restart)))


class TrainConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFTrainConcepts",
            display_name="CLIF Train Concepts",
            category="CLIF/train",
            description="Both CLIF stages in one node: contrastive training of the concept tokens against the "
            "CLIP vision tower, then UNet LoRA + tokens on the augmented dataset. Cancel keeps the finished "
            "steps; queue again to resume (output/clif_runs/<run_name>).",
            is_output_node=True,
            inputs=[
                BaseModelType.Input("clif_base"),
                DatasetType.Input("dataset"),
                io.Combo.Input("clip_vision", options=_vision_choices(),
                               tooltip="models/clip_vision: a .safetensors file or a transformers folder"),
                *_run_inputs(),
                io.Int.Input("stage1_steps", default=400, min=1, max=1_000_000,
                             tooltip="stage 1 (contrastive) training steps"),
                io.Int.Input("stage2_steps", default=1000, min=1, max=1_000_000,
                             tooltip="stage 2 (decoder) training steps"),
                io.Int.Input("stage1_batch_size", default=32, min=1, max=4096, optional=True,
                             tooltip="stage 1 images per step"),
                io.Int.Input("stage2_batch_size", default=1, min=1, max=4096, optional=True,
                             tooltip="stage 2 images per step"),
                io.Float.Input("stage1_learning_rate", default=1e-4, min=0.0, max=1.0, step=1e-6, optional=True,
                               tooltip="stage 1 learning rate of the token rows"),
                io.Float.Input("stage2_learning_rate", default=2e-4, min=0.0, max=1.0, step=1e-6, optional=True,
                               tooltip="stage 2 learning rate of the UNet LoRA"),
                io.Int.Input("vectors_per_concept", default=2, min=1, max=16, optional=True,
                             tooltip="token vectors per concept"),
                *_optional_loop_inputs(100, 250),
                *_decoder_inputs(),
            ],
            outputs=_OUTPUTS,
        )

    @classmethod
    def execute(cls, clif_base, dataset: str, clip_vision: str, run_name: str, restart: bool, stage1_steps: int,
                stage2_steps: int, stage1_batch_size: int = 32, stage2_batch_size: int = 1,
                stage1_learning_rate: float = 1e-4, stage2_learning_rate: float = 2e-4, vectors_per_concept: int = 2,
                mixed_precision: str = "auto", seed: int = 0, preview_every: int = 100, checkpoint_every: int = 250,
                gradient_checkpointing: bool = False, **decoder) -> io.NodeOutput:
        from clif_core.train.contrastive import ContrastiveConfig
        from clif_core.train.both_stages import train_concepts

        stage1 = ContrastiveConfig(vectors=vectors_per_concept, lr=stage1_learning_rate, loop=_loop(
            stage1_steps, stage1_batch_size, mixed_precision, seed, 0, checkpoint_every))
        stage2 = _decoder_config(stage2_learning_rate, vectors_per_concept, _loop(
            stage2_steps, stage2_batch_size, mixed_precision, seed, preview_every, checkpoint_every,
            gradient_checkpointing), **decoder)
        stage1.check()
        stage2.check()
        run_dir, vision = _run_dir(run_name), _vision_path(clip_vision)
        result = _train(clif_base, stage1_steps + stage2_steps, lambda base, rep: train_concepts(
            base, dataset, vision, run_dir, stage1, stage2, rep, restart=restart))
        return _output(result, run_dir)  # the run's folder: the Loss Plot shows both stages


def _curves(run_dir: str) -> list:
    """(title, loss.csv path) of a run folder, or of its stage1/stage2 folders (Train Concepts)."""
    from clif_core.train.both_stages import STAGE_DIRS

    if os.path.isfile(os.path.join(run_dir, "loss.csv")):
        return [(os.path.basename(run_dir.rstrip(os.sep)), os.path.join(run_dir, "loss.csv"))]
    return [(f"{os.path.basename(run_dir.rstrip(os.sep))} {s}", os.path.join(run_dir, s, "loss.csv"))
            for s in STAGE_DIRS if os.path.isfile(os.path.join(run_dir, s, "loss.csv"))]


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
        try:
            curves = _curves(_resolve_run(run_dir))
        except ValueError:
            return (run_dir, None)
        return tuple((path, os.stat(path).st_mtime_ns) for _, path in curves)

    @classmethod
    def execute(cls, run_dir: str) -> io.NodeOutput:
        from pathlib import Path

        from clif_core.training.curve import draw_loss_curve, read_loss_csv

        from .comfy_adapter import pil_to_image

        folder = _resolve_run(run_dir)
        curves = _curves(folder)
        if not curves:
            raise FileNotFoundError(f"{folder} holds no loss.csv yet: give a training run's folder or run name.")
        return io.NodeOutput(pil_to_image(draw_loss_curve([(t, read_loss_csv(Path(p))) for t, p in curves])))


NODES = [ContrastiveEncoderTraining, DecoderTraining, TrainConcepts, LossPlot]
