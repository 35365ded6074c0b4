"""The sandbox pretraining's settings: the stages' lengths and batches, the losses' weights, and the presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from clif_core.sandbox.model_arch import SandboxArch
from clif_core.sandbox.pretrain_losses import VaeObjective

STAGES = ("vae", "clip", "unet")


@dataclass(frozen=True)
class StageConfig:
    """One stage's length, batch and learning rate (linear warm-up, then a cosine to zero)."""

    steps: int
    batch_size: int
    lr: float
    warmup: int = 100


@dataclass(frozen=True)
class PretrainConfig:
    """A whole pretraining; a work folder resumes only with the same one (stages not finished may change length)."""

    arch: SandboxArch
    n_images: int
    vae: StageConfig
    clip: StageConfig
    unet: StageConfig
    seed: int = 0
    quality: str = "full"  # written into the model's metadata: "full", "smoke" or "test"
    kl_weight: float = 1e-6
    vae_objective: VaeObjective = VaeObjective()
    text_dropout: float = 0.1
    p_background_caption: float = 0.5
    min_snr_gamma: float = 5.0
    ema_power: float = 2 / 3  # diffusers EMAModel warm-up: decay = 1 - (1 + step)^-power, capped at 0.9999
    checkpoint_every: int = 500  # steps; a stage also checkpoints at its end, on a stop and when time runs out
    ceiling_renders: int = 1000  # fresh renders the VAE ceiling is measured on after the VAE stage

    def stage(self, name: str) -> StageConfig:
        return getattr(self, name)

    def to_json(self) -> dict:
        return asdict(self)


PRESETS: dict[str, PretrainConfig] = {
    # One H100: pre-rendered set and latents on the GPU, bf16 autocast, large batches. About 40 minutes in all,
    # run as several `--max-minutes 9` commands, the work folder carried between them (see docs/sandbox.md).
    "gpu": PretrainConfig(
        arch=SandboxArch(),
        n_images=200_000,
        vae=StageConfig(steps=8_000, batch_size=256, lr=1e-3, warmup=200),
        clip=StageConfig(steps=5_000, batch_size=1024, lr=5e-4, warmup=200),
        unet=StageConfig(steps=30_000, batch_size=512, lr=4e-4, warmup=500),
        quality="full",
        checkpoint_every=1_000,
    ),
    # Two CPU cores, at most six hours of wall-clock time in all: the smaller architecture, a VAE objective that
    # keeps what the oracle reads (docs/sandbox.md, "the VAE ceiling"), long UNet training. Run as several
    # `--max-minutes` commands across sessions.
    # The UNet stage is 12,000 steps: measured on two quiet cores a step takes 1.2-1.3 s, not the 0.8 s first
    # estimated, so 20,000 would have cost 7 hours alone (the shipped model's run was rescheduled at step 4,876).
    "cpu": PretrainConfig(
        arch=SandboxArch.smoke(),
        n_images=60_000,
        vae=StageConfig(steps=5_000, batch_size=32, lr=2e-3, warmup=50),
        clip=StageConfig(steps=2_000, batch_size=128, lr=1e-3, warmup=50),
        unet=StageConfig(steps=12_000, batch_size=64, lr=5e-4, warmup=200),
        vae_objective=VaeObjective(object_weight=8.0, gradient_weight=1.0, spectrum_weight=1.0),
        quality="cpu",
    ),
    # Two CPU cores, about 15 minutes of CPU time: a smaller model, trained far too briefly to be good.
    "cpu-smoke": PretrainConfig(
        arch=SandboxArch.smoke(),
        n_images=5_000,
        vae=StageConfig(steps=1_200, batch_size=16, lr=2e-3, warmup=25),
        clip=StageConfig(steps=250, batch_size=64, lr=1e-3, warmup=25),
        unet=StageConfig(steps=650, batch_size=32, lr=1e-3, warmup=25),
        quality="smoke",
        checkpoint_every=200,
    ),
    # Seconds: exercises every code path (tests).
    "test": PretrainConfig(
        arch=SandboxArch.test(),
        n_images=48,
        vae=StageConfig(steps=3, batch_size=8, lr=1e-3, warmup=1),
        clip=StageConfig(steps=3, batch_size=8, lr=1e-3, warmup=1),
        unet=StageConfig(steps=4, batch_size=8, lr=1e-3, warmup=1),
        quality="test",
        checkpoint_every=2,
        ceiling_renders=16,
    ),
}


def config_from_json(data: dict) -> PretrainConfig:
    """The config `to_json` wrote (a work folder's record)."""
    return PretrainConfig(
        arch=SandboxArch(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["arch"].items()}),
        **{k: StageConfig(**v) if k in STAGES else VaeObjective(**v) if k == "vae_objective" else v
           for k, v in data.items() if k != "arch"},
    )

