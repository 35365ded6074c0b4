"""The sandbox base model's shape: Stable Diffusion 1.x classes, small.

- VAE: diffusers `AutoencoderKL`, 64×64 RGB ↔ 16×16×4 latents (three levels, two downsamplings).
- UNet: diffusers `UNet2DConditionModel` on the 16×16 latents, so all attention (cross and self) runs at
  16×16 and below; v-prediction.
- Text: transformers `CLIPTextModel` on the real CLIP BPE tokenizer (49,408 ids, 77 positions). Being one
  OpenAI-style encoder (quick_gelu, "<|endoftext|>" padding) it loads as the "sd1" family.
- Vision: transformers `CLIPVisionModelWithProjection` whose `image_embeds` live in the text encoder's
  pooled-output space (projection width = text width), trained contrastively with it. CLIF's stage 1 compares
  `pooler_output` of the text encoder with `image_embeds`; `contrastive.json` in the vision folder says so and
  carries the learned logit scale.

`SandboxArch()` is the full model (pretrained on a GPU); `SandboxArch.smoke()` the smaller one the CPU smoke
pretraining trains; `SandboxArch.test()` a miniature for fast tests of the code paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clif_core.models.clip_bpe import EOS_TOKEN, clip_tokenizer
from clif_core.sandbox.attributes import IMAGE_SIZE

LATENT_SIZE = 16
LATENT_CHANNELS = 4


@dataclass(frozen=True)
class SandboxArch:
    vae_channels: tuple[int, ...] = (32, 64, 128)
    vae_groups: int = 16
    unet_channels: tuple[int, ...] = (48, 96, 128)
    unet_layers: int = 1
    unet_heads: int = 4
    unet_groups: int = 16
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_patch: int = 8

    @classmethod
    def smoke(cls) -> "SandboxArch":
        """A smaller model for the CPU smoke pretraining. Its VAE is narrower still: in a measured four CPU
        minutes a 16/32/64 VAE had not yet learned colour at all, an 8/16/32 one had."""
        return cls(
            vae_channels=(8, 16, 32), vae_groups=8, unet_channels=(32, 64, 96), unet_heads=2, unet_groups=8,
            text_width=64, text_layers=2, text_heads=2, vision_width=64, vision_layers=2, vision_heads=2,
        )

    @classmethod
    def test(cls) -> "SandboxArch":
        """A miniature with the same structure, for tests that exercise the pretraining code in seconds."""
        return cls(
            vae_channels=(8, 16, 16), vae_groups=4, unet_channels=(16, 32, 32), unet_heads=2, unet_groups=8,
            text_width=16, text_layers=1, text_heads=2, vision_width=16, vision_layers=1, vision_heads=2,
            vision_patch=16,
        )

    def vae_config(self, scaling_factor: float = 1.0) -> dict[str, Any]:
        assert IMAGE_SIZE // 2 ** (len(self.vae_channels) - 1) == LATENT_SIZE
        n = len(self.vae_channels)
        return dict(
            in_channels=3,
            out_channels=3,
            latent_channels=LATENT_CHANNELS,
            block_out_channels=list(self.vae_channels),
            down_block_types=["DownEncoderBlock2D"] * n,
            up_block_types=["UpDecoderBlock2D"] * n,
            layers_per_block=1,
            norm_num_groups=self.vae_groups,
            sample_size=IMAGE_SIZE,
            scaling_factor=float(scaling_factor),
        )

    def unet_config(self) -> dict[str, Any]:
        n = len(self.unet_channels)
        return dict(
            sample_size=LATENT_SIZE,
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            layers_per_block=self.unet_layers,
            block_out_channels=list(self.unet_channels),
            down_block_types=["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1),
            mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=self.text_width,
            attention_head_dim=self.unet_heads,
            norm_num_groups=self.unet_groups,
        )

    def text_config(self) -> dict[str, Any]:
        return dict(
            vocab_size=49408,
            hidden_size=self.text_width,
            intermediate_size=4 * self.text_width,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=self.text_width,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )

    def vision_config(self) -> dict[str, Any]:
        return dict(
            hidden_size=self.vision_width,
            intermediate_size=4 * self.vision_width,
            num_hidden_layers=self.vision_layers,
            num_attention_heads=self.vision_heads,
            image_size=IMAGE_SIZE,
            patch_size=self.vision_patch,
            projection_dim=self.text_width,
            hidden_act="quick_gelu",
        )


def scheduler_config() -> dict[str, Any]:
    """Stable Diffusion's noise schedule with v-prediction (as SD 2.x 768 px ships it)."""
    return {
        "_class_name": "DDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
    }


def build_vae(arch: SandboxArch, scaling_factor: float = 1.0) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**arch.vae_config(scaling_factor))


def build_unet(arch: SandboxArch) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**arch.unet_config())


def build_text_encoder(arch: SandboxArch) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**arch.text_config()))


def build_vision_tower(arch: SandboxArch) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(**arch.vision_config()))


def tokenizer() -> Any:
    return clip_tokenizer(EOS_TOKEN)
