"""What a sampling run is asked to do: `SampleConfig`, and the `Region`s of an optional regional layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from clif_core.errors import ClifError
from clif_core.images import check_min_side
from clif_core.options import MAX_SEED, Options, opt
from clif_core.validation import MAX_GUIDANCE, check_number, check_whole

SCHEDULERS = ("euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras")
"""Scheduler names `SampleConfig.scheduler` accepts (see `schedulers.make_scheduler`)."""

LAYOUTS = ("left_right", "top_bottom", "grid")
"""Named regional layouts (see `regional.layout_boxes`); "boxes" and "masks" place regions explicitly."""

REGION_STRENGTH = 0.8
"""Default share of a region prompt inside its region: the global (scene) prompt keeps the rest."""

ISOLATION_EDGE = 0.05
"""Default soft edge of a LoRA isolated to a region: the blur's sigma as a fraction of the latent's shorter side
(see `isolation.soft_mask`)."""

MAX_SIDE = 4096
"""Largest width or height sampled, in pixels: 4x SDXL's native side; beyond it the UNet's attention alone needs
tens of GB, and the models make repeated, broken compositions long before."""
MAX_BATCH = 64
"""Most images one run draws; image i uses seed + i, so more images are more runs with later seeds."""
MAX_STEPS = 1000
"""Most denoising steps: the models are trained on 1000 timesteps, more steps only repeat them."""
MAX_RUN_PIXELS = 64 * 2**20
"""Most pixels one run draws (width × height × batch); the latents and activations grow with it."""


SAMPLE = Options(
    "sample",
    negative_prompt=opt("", "what the images should not show"),
    seed=opt(0, "seed of the first image; image i of the batch uses seed + i", 0, MAX_SEED),
    steps=opt(30, "denoising steps", 1, MAX_STEPS),
    cfg=opt(7.0, "classifier-free guidance scale (1 or less: off)", 0, MAX_GUIDANCE, step=0.1),
    scheduler=opt("euler", "the noise scheduler", choices=SCHEDULERS),
    width=opt(None, "image width in pixels (the CLI's default: the model's native size)", 8, MAX_SIDE, step=8,
              kind=int, widget_default=512),
    height=opt(None, "image height in pixels (the CLI's default: the model's native size)", 8, MAX_SIDE, step=8,
               kind=int, widget_default=512),
    batch=opt(1, "images per run", 1, MAX_BATCH),
    isolation_edge=opt(ISOLATION_EDGE, "soft edge of a concept LoRA isolated to a region, as a fraction of the "
                       "image's shorter side", 0, 0.5),
)
"""Defaults, limits and help of `SampleConfig` (see clif_core.options)."""

REGION = Options(
    "region",
    strength=opt(REGION_STRENGTH, "how much a region prompt replaces the global prompt inside its region", 0, 1,
                 step=0.05),
)
"""Defaults, limits and help of `Region`."""


def check_region_mask(mask: Any, where: str) -> None:
    """A region mask is 2-D (height × width), at least MIN_SIDE on each side, with finite values."""
    import numpy as np

    if getattr(mask, "ndim", 0) != 2:
        raise ClifError(f"{where}: the mask must be 2-D (height × width); it has shape "
                        f"{tuple(getattr(mask, 'shape', ()))}")
    height, width = (int(s) for s in mask.shape)
    check_min_side((width, height), f"{where}: the mask")
    if not np.isfinite(np.asarray(mask, dtype=np.float32)).all():
        raise ClifError(f"{where}: the mask holds NaN or infinite values; use values from 0 to 1")


@dataclass(frozen=True)
class Region:
    """One region of a regional composition: the prompt that applies there, and where.

    `box` is (x0, y0, x1, y1) in fractions of the image width and height (0,0 is the top-left corner);
    `mask` a 2-D array or tensor with values in 0..1, of any size (it is resized to each attention
    resolution). Give exactly one of them. `strength` (0..1) is how much the region prompt replaces the
    global prompt inside the region (the default keeps a little of the scene prompt everywhere); where regions
    overlap their weights are scaled to sum to at most 1.
    """

    prompt: str
    box: Optional[tuple[float, float, float, float]] = None
    mask: Optional[Any] = field(default=None, compare=False)
    strength: float = REGION.field("strength")

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for the recipe (a mask is described by its size only)."""
        where: dict[str, Any] = {"box": list(self.box)} if self.box is not None else {
            "mask": f"custom {'x'.join(str(int(s)) for s in self.mask.shape[-2:])}"
        }
        return {"prompt": self.prompt, **where, "strength": self.strength}


@dataclass
class SampleConfig:
    """One sampling run. `width`/`height` None take the model's native size (UNet sample size × VAE factor).

    Image i of a batch is drawn from seed `seed + i`, so any single image is reproduced by its own seed with
    batch 1. `cfg` ≤ 1 turns classifier-free guidance off (one UNet pass per step, no negative prompt), as in
    diffusers. `regions` empty (the default) is plain sampling, the paper's setting. `preview_every` > 0
    sends a preview image to the reporter every that many steps. `isolation_edge` is the soft edge of concept
    LoRAs bound to a region (`ConceptUse.region`; see `isolation.soft_mask`).
    """

    prompt: str
    negative_prompt: str = SAMPLE.field("negative_prompt")
    seed: int = SAMPLE.field("seed")
    steps: int = SAMPLE.field("steps")
    cfg: float = SAMPLE.field("cfg")
    scheduler: str = SAMPLE.field("scheduler")
    width: Optional[int] = SAMPLE.field("width")
    height: Optional[int] = SAMPLE.field("height")
    batch: int = SAMPLE.field("batch")
    regions: tuple[Region, ...] = ()
    preview_every: int = 0
    isolation_edge: float = SAMPLE.field("isolation_edge")

    def check(self) -> None:
        """Raise ClifError naming the field for values no model could sample with."""
        if self.scheduler not in SCHEDULERS:
            raise ClifError(f"scheduler {self.scheduler!r} is not supported; use one of {', '.join(SCHEDULERS)}")
        check_whole(self.steps, "steps", 1, MAX_STEPS)
        check_whole(self.batch, "batch", 1, MAX_BATCH)
        check_number(self.cfg, "cfg", 0, MAX_GUIDANCE)
        check_whole(self.seed, "seed", 0, 2**63 - 1)
        check_whole(self.preview_every, "preview_every", 0)
        check_number(self.isolation_edge, "isolation_edge", 0.0, 0.5)
        for name in ("width", "height"):
            if getattr(self, name) is not None:
                check_whole(getattr(self, name), name, 8, MAX_SIDE)
        pixels = (self.width or 1024) * (self.height or 1024) * self.batch
        if pixels > MAX_RUN_PIXELS:
            raise ClifError(
                f"width × height × batch is {pixels / 2**20:.0f} megapixels; one run may draw at most "
                f"{MAX_RUN_PIXELS // 2**20} (e.g. a batch of 64 at 1024×1024), because the latents and the UNet's "
                "activations grow with it until memory runs out. Lower the batch and run again with the next seed"
            )
        for i, region in enumerate(self.regions, 1):
            where = f"region {i} ({region.prompt!r})"
            if (region.box is None) == (region.mask is None):
                raise ClifError(f"{where}: give either a box or a mask, not {'both' if region.box else 'neither'}")
            check_number(region.strength, f"{where}: strength", 0.0, 1.0)
            if region.box is not None:
                x0, y0, x1, y1 = region.box
                if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                    raise ClifError(
                        f"{where}: box {tuple(region.box)} is not (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1 and "
                        "0 <= y0 < y1 <= 1 (fractions of the image width and height)"
                    )
            else:
                check_region_mask(region.mask, where)
