"""How well a base model draws what its prompt says, scored by the oracle on prompts from held-out scenes.

Three prompt sets, each from scenes the pretraining never rendered: one plain object ("a red striped
circle"), two plain objects ("... on the left and ... on the right"), and figures (one or two objects, at
least one a figure). Prompts name no background and the oracle's background is not scored. An image is
fully correct when every slot holds exactly the prompted object (a figure's uncaptioned detail ignored) and
the other slots are empty.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from clif_core.models.pipeline import diffusers_pipeline
from clif_core.progress import SILENT, Reporter
from clif_core.sandbox.oracle import Oracle, attribute_agreement, scene_correct
from clif_core.sandbox.scene import Scene, caption
from clif_core.sandbox.world import WorldConfig, scene_for_seed

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

PROMPT_SEED_BASE = 3_000_000_000
PROMPT_SETS: dict[str, WorldConfig] = {
    "one_object": WorldConfig(p_two=0.0, p_figure=0.0),
    "two_objects": WorldConfig(p_two=1.0, p_figure=0.0),
    "figures": WorldConfig(p_two=0.5, p_figure=1.0, p_detail=0.0),
}


def prompt_scenes(n_per_set: int = 100, seed: int = 0) -> dict[str, list[Scene]]:
    out = {}
    for k, (name, cfg) in enumerate(PROMPT_SETS.items()):
        start = PROMPT_SEED_BASE + seed * 1_000_000 + k * 100_000
        out[name] = [scene_for_seed(start + i, cfg) for i in range(n_per_set)]
    return out


@torch.no_grad()
def generate(
    base: BaseModel,
    prompts: list[str],
    seed: int = 0,
    steps: int = 30,
    guidance: float = 5.0,
    batch_size: int = 16,
    reporter: Reporter = SILENT,
) -> np.ndarray:
    """uint8 [N, 64, 64, 3]: one image per prompt; image i uses generator seed `seed + i`."""
    pipe = diffusers_pipeline(base)
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(seed + i + j) for j in range(len(chunk))]
        images = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np").images
        out.append(np.clip(np.rint(images * 255), 0, 255).astype(np.uint8))
        reporter.progress(i + len(chunk), len(prompts), None)
        reporter.check_cancel()
    return np.concatenate(out)


def prompt_following(
    base: BaseModel,
    oracle: Optional[Oracle] = None,
    n_per_set: int = 100,
    seed: int = 0,
    steps: int = 30,
    guidance: float = 5.0,
    reporter: Reporter = SILENT,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Score `base` on the three prompt sets. Returns (report, images per set)."""
    oracle = oracle or Oracle.load()
    report: dict[str, Any] = {"steps": steps, "guidance": guidance, "seed": seed, "sets": {}}
    images_by_set = {}
    started = time.time()
    n_images = 0
    for name, scenes in prompt_scenes(n_per_set, seed).items():
        prompts = [caption(s, background=False) for s in scenes]
        reporter.log(f"generating {len(prompts)} images for '{name}' prompts ...")
        images = generate(base, prompts, seed=seed, steps=steps, guidance=guidance, reporter=reporter)
        readings = oracle.read(images)
        correct = [scene_correct(s, r) for s, r in zip(scenes, readings)]
        totals: dict[str, list[int]] = {}
        for s, r in zip(scenes, readings):
            for head, (right, counted) in attribute_agreement(s, r).items():
                if head in ("detail", "detail_colour"):
                    continue  # prompts never name a detail
                acc = totals.setdefault(head, [0, 0])
                acc[0] += right
                acc[1] += counted
        report["sets"][name] = {
            "prompts": len(prompts),
            "fully_correct": round(float(np.mean(correct)), 4),
            "attributes": {k: round(v[0] / v[1], 4) for k, v in totals.items() if v[1]},
            "examples": [{"prompt": p, "correct": bool(c)} for p, c in list(zip(prompts, correct))[:5]],
        }
        images_by_set[name] = images
        n_images += len(prompts)
    report["seconds_per_image"] = round((time.time() - started) / max(1, n_images), 3)
    return report, images_by_set


def character_following(
    base: BaseModel,
    oracle: Optional[Oracle] = None,
    characters: Any = None,
    n_per_character: int = 20,
    seed: int = 0,
    steps: int = 30,
    guidance: float = 5.0,
    reporter: Reporter = SILENT,
) -> tuple[dict, np.ndarray]:
    """Draw each character from its full caption (`n_per_character` seeds) and read it back.

    `recognised`: the centre slot holds the character's every captioned part (shapes, colours, textures,
    accessory) and the other slots are empty. The detail is left out because captions never name it (two
    characters of a pair may share a caption); `with_detail` also requires it, which a base model can only hit
    by chance. Returns (report, images [characters × n, 64, 64, 3])."""
    from clif_core.sandbox.characters import load_characters
    from clif_core.sandbox.oracle import slot_correct

    oracle = oracle or Oracle.load()
    spec = characters or load_characters()
    names = list(spec.characters)
    prompts = [spec[name].description for name in names for _ in range(n_per_character)]
    images = generate(base, prompts, seed=seed, steps=steps, guidance=guidance, reporter=reporter)
    readings = oracle.read(images)
    per: dict[str, dict] = {}
    for k, name in enumerate(names):
        chunk = readings[k * n_per_character : (k + 1) * n_per_character]
        figure = spec[name].figure
        alone = [r.slots["left"] is None and r.slots["right"] is None for r in chunk]
        per[name] = {
            "recognised": round(float(np.mean([a and slot_correct(figure, r.slots["center"]) for a, r in zip(alone, chunk)])), 4),
            "with_detail": round(float(np.mean([a and slot_correct(figure, r.slots["center"], True) for a, r in zip(alone, chunk)])), 4),
        }
    report = {
        "per_character": per,
        "min_recognised": min(v["recognised"] for v in per.values()),
        "mean_recognised": round(float(np.mean([v["recognised"] for v in per.values()])), 4),
        "n_per_character": n_per_character,
    }
    return report, images


def image_grid(images: np.ndarray, columns: int = 8, pad: int = 2) -> Any:
    """A PIL grid of uint8 [N, 64, 64, 3] images on white."""
    from PIL import Image

    n = len(images)
    rows = max(1, (n + columns - 1) // columns)
    h, w = images.shape[1:3]
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    return Image.fromarray(canvas, "RGB")
