"""Empty latents the size the user asked for, whatever the VAE's downscale factor.

ComfyUI's stock Empty Latent Image divides the pixel size by 8, the factor of Stable Diffusion's VAE. The
sandbox model's VAE folds 4x4 pixels into a latent cell, so there a 128 px request decoded to 64 px. This node
reads the factor and the latent channels from the VAE that will decode the latent.
"""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from clif_core.errors import ClifError

MAX_SIDE = 16384  # the largest side the stock latent nodes accept


def empty_latent_shape(channels: int, factor: int, width: int, height: int, batch_size: int) -> list[int]:
    """[batch, channels, height / factor, width / factor]; a side that is no multiple of `factor` is refused."""
    for name, side in (("width", width), ("height", height)):
        if side % factor:
            below, above = side - side % factor, side - side % factor + factor
            raise ClifError(f"{name} {side} px is not a multiple of {factor}, the pixels per latent cell of this "
                            f"VAE, so the image could not be {side} px: use {below or above} or {above}")
    return [batch_size, channels, height // factor, width // factor]


class EmptyLatentForModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFEmptyLatent",
            display_name="CLIF Empty Latent (model-sized)",
            category="CLIF/sample",
            description="An empty latent batch that the given VAE decodes to exactly width x height pixels (the stock "
                        "Empty Latent Image assumes Stable Diffusion's 8 pixels per latent cell; the sandbox VAE "
                        "has 4).",
            inputs=[
                io.Vae.Input("vae", tooltip="the VAE that will decode the latent: it sets the pixels per latent "
                                            "cell (Stable Diffusion 8, the sandbox model 4) and the channels"),
                io.Int.Input("width", default=512, min=8, max=MAX_SIDE, step=8,
                             tooltip="width of the decoded images in pixels"),
                io.Int.Input("height", default=512, min=8, max=MAX_SIDE, step=8,
                             tooltip="height of the decoded images in pixels"),
                io.Int.Input("batch_size", default=1, min=1, max=4096, tooltip="number of latents in the batch"),
            ],
            outputs=[io.Latent.Output(display_name="LATENT")],
        )

    @classmethod
    def execute(cls, vae, width: int, height: int, batch_size: int = 1) -> io.NodeOutput:
        import torch

        from .comfy_compat import vae_latent_layout

        channels, factor = vae_latent_layout(vae)
        return io.NodeOutput({"samples": torch.zeros(empty_latent_shape(channels, factor, width, height, batch_size))})


NODES = [EmptyLatentForModel]
