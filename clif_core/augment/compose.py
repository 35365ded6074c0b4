"""CLIF's compositions: two slots on a white canvas with a caption that says what is where.

Kinds, as in the paper's dataset figure (reference §1):
  G (Global)  a whole concept beside a common concept   "a photo of V_a on the left and chef on the right"
  R (Region)  a concept's part beside a common concept or another part
                                                        "a photo of jean jacket on the left and V_a's dress on the right"
  M (Mix)     two whole concepts                        "a photo of V_b on the left and V_a on the right"
  single      one whole concept, centred                "a photo of V_a"
Each draw is rendered in both slot orders (by default), with its own random scale and jitter per
sample; with layout "both", draws alternate between left/right and top/bottom. Every random choice comes from a generator seeded by (seed, kind, draw), so the same seed and
inputs give the same pictures, and changing one kind's count leaves the other kinds' samples as they were.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from ..concepts.spec import Concept
from ..errors import ClifError
from ..options import AUGMENT
from .common_concepts import CommonConcept
from .segment import Segmentation, mask_box

KINDS = ("G", "R", "M", "single")
LAYOUTS = ("left_right", "top_bottom")
_KIND_CODE = {k: i for i, k in enumerate(KINDS)}


@dataclass
class CaptionTemplates:
    """Caption pieces. `{first}`/`{second}`: the slot texts in reading order (left/top first)."""

    pair_left_right: str = "a photo of {first} on the left and {second} on the right"
    pair_top_bottom: str = "a photo of {first} at the top and {second} at the bottom"
    single: str = "a photo of {first}"
    concept: str = "{token}"
    part: str = "{token}'s {part}"
    common: str = "{word}"

    def check(self) -> None:
        # template name -> (placeholders it must contain, placeholders it may contain)
        spec = {
            "pair_left_right": (("first", "second"), ()),
            "pair_top_bottom": (("first", "second"), ()),
            "single": (("first",), ()),
            "concept": (("token",), ("class_word",)),
            "part": (("token", "part"), ("class_word",)),
            "common": (("word",), ()),
        }
        for name, (required, optional) in spec.items():
            text = getattr(self, name)
            for key in required:
                if "{" + key + "}" not in text:
                    raise ClifError(f"caption template {name} = {text!r} must contain {{{key}}}.")
            allowed = required + optional
            try:
                text.format(**{k: "" for k in allowed})
            except (KeyError, IndexError, ValueError) as exc:
                raise ClifError(
                    f"caption template {name} = {text!r} is not valid ({exc!r}); it may use only "
                    + ", ".join("{" + k + "}" for k in allowed) + "."
                ) from exc


@dataclass
class AugmentConfig:
    """How many samples of each kind, and how they look.

    `scale_range`: an item's size as a fraction of the largest size that fits its slot. `jitter`: how
    far (0..1 of the free space) an item may move off the slot's centre. `region_partners`: what may
    stand beside a part in Region samples: "common" (a common concept) and/or "part" (another concept's
    part, or another part of the same concept when there is one concept). Defaults, limits and help of the
    user-facing fields: `options.AUGMENT`.
    """

    resolution: int = AUGMENT.field("resolution")
    n_global: int = AUGMENT.field("n_global")
    n_region: int = AUGMENT.field("n_region")
    n_mix: int = AUGMENT.field("n_mix")
    n_single: int = AUGMENT.field("n_single")
    layout: str = AUGMENT.field("layout")
    both_orders: bool = AUGMENT.field("both_orders")
    scale_range: tuple[float, float] = (0.75, 0.95)
    jitter: float = 0.5
    n_parts: int = AUGMENT.field("n_parts")
    region_partners: tuple[str, ...] = ("common", "part")
    templates: CaptionTemplates = field(default_factory=CaptionTemplates)
    seed: int = AUGMENT.field("seed")

    @classmethod
    def from_ratios(
        cls, total: int, global_: float = 0.4, region: float = 0.3, mix: float = 0.2, single: float = 0.1, **kw: Any
    ) -> "AugmentConfig":
        """Counts from a total and ratios (normalised); rounding leftovers go to the largest ratio."""
        ratios = np.array([global_, region, mix, single], dtype=np.float64)
        if total < 0 or (ratios < 0).any() or ratios.sum() <= 0:
            raise ClifError(f"augmentation ratios {tuple(ratios)} and total {total} must be non-negative, with some ratio > 0.")
        ratios = ratios / ratios.sum()
        counts = np.floor(ratios * total).astype(int)
        counts[int(np.argmax(ratios))] += total - int(counts.sum())
        return cls(n_global=int(counts[0]), n_region=int(counts[1]), n_mix=int(counts[2]), n_single=int(counts[3]), **kw)

    def counts(self) -> dict[str, int]:
        return {"G": self.n_global, "R": self.n_region, "M": self.n_mix, "single": self.n_single}

    def check(self) -> None:
        if self.resolution < 32:
            raise ClifError(f"resolution {self.resolution} is too small; use at least 32 (512 for SD1.x, 1024 for SDXL).")
        for kind, n in self.counts().items():
            if n < 0:
                raise ClifError(f"sample count for kind {kind} is {n}; counts cannot be negative.")
        if sum(self.counts().values()) == 0:
            raise ClifError("every sample count is 0; ask for at least one Global, Region, Mix or single sample.")
        if self.layout not in LAYOUTS + ("both",):
            raise ClifError(f"layout {self.layout!r} is unknown; use 'left_right', 'top_bottom' or 'both'.")
        lo, hi = self.scale_range
        if not (0 < lo <= hi <= 1):
            raise ClifError(f"scale_range {self.scale_range} must satisfy 0 < low <= high <= 1.")
        if not 0 <= self.jitter <= 1:
            raise ClifError(f"jitter {self.jitter} must be between 0 and 1.")
        if self.n_parts < 1:
            raise ClifError(f"n_parts {self.n_parts} must be at least 1.")
        bad = [p for p in self.region_partners if p not in ("common", "part")]
        if bad or not self.region_partners:
            raise ClifError(f"region_partners {self.region_partners} must name 'common' and/or 'part'.")
        self.templates.check()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale_range"] = list(self.scale_range)
        d["region_partners"] = list(self.region_partners)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AugmentConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "templates" in kw:
            kw["templates"] = CaptionTemplates(**kw["templates"])
        if "scale_range" in kw:
            kw["scale_range"] = tuple(kw["scale_range"])
        if "region_partners" in kw:
            kw["region_partners"] = tuple(kw["region_partners"])
        return cls(**kw)


@dataclass
class Item:
    """A cut-out ready to paste: RGB crop and its bool mask, with what it shows."""

    image: Image.Image
    mask: np.ndarray
    source: str  # "concept" | "common"
    name: str
    text: str
    token: Optional[str] = None
    part: Optional[str] = None
    source_index: int = 0


@dataclass
class Slot:
    item: Item
    slot: str  # "left" | "right" | "top" | "bottom" | "center"
    box: tuple[int, int, int, int]
    mask: np.ndarray  # bool [H, W] on the canvas


@dataclass
class Composite:
    image: Image.Image
    caption: str
    kind: str
    layout: str
    group: int
    slots: list[Slot]


def _cutout(image: Image.Image, mask: np.ndarray, max_side: int) -> tuple[Image.Image, np.ndarray]:
    """Crop to the mask's box; shrink to at most `max_side` (no slot is larger) so each paste resizes less."""
    x0, y0, x1, y1 = mask_box(mask)
    crop, m = image.crop((x0, y0, x1, y1)), mask[y0:y1, x0:x1]
    w, h = crop.size
    if max(w, h) > max_side:
        size = (max(1, round(w * max_side / max(w, h))), max(1, round(h * max_side / max(w, h))))
        crop = crop.resize(size, Image.LANCZOS)
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.BILINEAR)) > 127
    return crop, m


@dataclass
class ItemBank:
    """Every cut-out the compositions draw from."""

    wholes: list[list[Item]]  # per concept
    parts: list[list[Item]]  # per concept
    commons: list[list[Item]]  # per common word

    @classmethod
    def build(
        cls,
        concepts: Sequence[Concept],
        segmentations: Sequence[Sequence[Segmentation]],
        commons: Sequence[CommonConcept],
        common_masks: Sequence[Sequence[np.ndarray]],
        templates: CaptionTemplates,
        max_side: int,
    ) -> "ItemBank":
        wholes, parts = [], []
        for c, segs in zip(concepts, segmentations):
            w_items, p_items = [], []
            for i, (img, seg) in enumerate(zip(c.images, segs)):
                crop, m = _cutout(img, seg.mask, max_side)
                text = templates.concept.format(token=c.token, class_word=c.class_word)
                w_items.append(Item(crop, m, "concept", c.name, text, token=c.token, source_index=i))
                for pm, pname in zip(seg.parts, seg.part_names):
                    crop, m = _cutout(img, pm, max_side)
                    text = templates.part.format(token=c.token, part=pname, class_word=c.class_word)
                    p_items.append(Item(crop, m, "concept", c.name, text, token=c.token, part=pname, source_index=i))
            wholes.append(w_items)
            parts.append(p_items)
        common_items = []
        for cc, masks in zip(commons, common_masks):
            items = []
            for i, (img, m) in enumerate(zip(cc.images, masks)):
                crop, cm = _cutout(img, m, max_side)
                items.append(Item(crop, cm, "common", cc.word, templates.common.format(word=cc.word), source_index=i))
            common_items.append(items)
        return cls(wholes, parts, common_items)


def check_requirements(config: AugmentConfig, concepts: Sequence[Concept], bank: ItemBank) -> None:
    """Say up front, naming the option, when a requested kind cannot be made from the inputs."""
    if config.n_global and not bank.commons:
        raise ClifError(
            f"n_global={config.n_global} Global samples need common concepts (e.g. 'chef', 'dog'); add common "
            f"words with pictures, or set n_global to 0."
        )
    if config.n_mix and len(concepts) < 2:
        raise ClifError(
            f"n_mix={config.n_mix} Mix samples need at least two concepts (got {len(concepts)}); add a concept, "
            f"or set n_mix to 0."
        )
    if config.n_region:
        for ci, (c, p_items) in enumerate(zip(concepts, bank.parts)):
            if not p_items:
                raise ClifError(
                    f"concept {c.name!r} has no part regions, which n_region={config.n_region} Region samples need. "
                    f"Give part masks (masks/<stem>.<part>.png), use the 'fallback' or 'sam' segmenter, or set "
                    f"n_region to 0."
                )
            if not _region_partner_kinds(config, bank, ci):
                raise ClifError(
                    f"concept {c.name!r}: Region samples have nothing to put beside its parts with region_partners="
                    f"{list(config.region_partners)}; add common words, another concept, or more parts."
                )


def _region_partner_kinds(config: AugmentConfig, bank: ItemBank, ci: int) -> list[str]:
    kinds = []
    if "common" in config.region_partners and bank.commons:
        kinds.append("common")
    if "part" in config.region_partners:
        others = [j for j in range(len(bank.parts)) if j != ci and bank.parts[j]]
        own_names = {it.part for it in bank.parts[ci]}
        if others or len(own_names) > 1:
            kinds.append("part")
    return kinds


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _draw(kind: str, d: int, rng: np.random.Generator, bank: ItemBank, config: AugmentConfig) -> list[Item]:
    """The items of draw number d of `kind`; the subject concept cycles so each gets its share."""
    nc = len(bank.wholes)
    ci = d % nc
    if kind == "single":
        return [_pick(rng, bank.wholes[ci])]
    if kind == "G":
        return [_pick(rng, bank.wholes[ci]), _pick(rng, _pick(rng, bank.commons))]
    if kind == "M":
        other = _pick(rng, [j for j in range(nc) if j != ci])
        return [_pick(rng, bank.wholes[ci]), _pick(rng, bank.wholes[other])]
    part = _pick(rng, bank.parts[ci])
    partner_kind = _pick(rng, _region_partner_kinds(config, bank, ci))
    if partner_kind == "common":
        return [part, _pick(rng, _pick(rng, bank.commons))]
    others = [j for j in range(nc) if j != ci and bank.parts[j]]
    if others:
        return [part, _pick(rng, bank.parts[_pick(rng, others)])]
    return [part, _pick(rng, [it for it in bank.parts[ci] if it.part != part.part])]


def _slot_boxes(layout: str, r: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    half = r // 2
    if layout == "left_right":
        return [("left", (0, 0, half, r)), ("right", (half, 0, r, r))]
    return [("top", (0, 0, r, half)), ("bottom", (0, half, r, r))]


def _place(canvas: Image.Image, item: Item, box: tuple[int, int, int, int], rng: np.random.Generator, config: AugmentConfig):
    x0, y0, x1, y1 = box
    sw, sh = x1 - x0, y1 - y0
    cw, ch = item.image.size
    fit = min(sw / cw, sh / ch)
    scale = fit * float(rng.uniform(*config.scale_range))
    nw, nh = max(1, min(sw, round(cw * scale))), max(1, min(sh, round(ch * scale)))
    fx, fy = sw - nw, sh - nh
    px = x0 + int(round(fx / 2 * (1 + config.jitter * rng.uniform(-1, 1))))
    py = y0 + int(round(fy / 2 * (1 + config.jitter * rng.uniform(-1, 1))))
    alpha = Image.fromarray(item.mask.astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR)
    canvas.paste(item.image.resize((nw, nh), Image.LANCZOS), (px, py), alpha)
    slot_mask = np.zeros((canvas.size[1], canvas.size[0]), dtype=bool)
    slot_mask[py : py + nh, px : px + nw] = np.asarray(alpha) > 0  # every pixel the item touched
    return (px, py, px + nw, py + nh), slot_mask


def render(items: Sequence[Item], kind: str, layout: str, group: int, rng: np.random.Generator, config: AugmentConfig) -> Composite:
    r = config.resolution
    canvas = Image.new("RGB", (r, r), (255, 255, 255))
    t = config.templates
    if len(items) == 1:
        placed = [("center", (0, 0, r, r))]
        caption = t.single.format(first=items[0].text)
    else:
        placed = _slot_boxes(layout, r)
        template = t.pair_left_right if layout == "left_right" else t.pair_top_bottom
        caption = template.format(first=items[0].text, second=items[1].text)
    slots = []
    for item, (name, box) in zip(items, placed):
        pbox, m = _place(canvas, item, box, rng, config)
        slots.append(Slot(item, name, pbox, m))
    return Composite(canvas, caption, kind, layout if len(items) > 1 else "single", group, slots)


def plan_size(config: AugmentConfig) -> int:
    return sum(config.counts().values())


def compose(bank: ItemBank, config: AugmentConfig) -> Iterator[Composite]:
    """Yield every composite, kind by kind (G, R, M, single), in a fixed order."""
    group = 0
    for kind, n in config.counts().items():
        made = 0
        d = 0
        while made < n:
            rng = np.random.default_rng([config.seed, _KIND_CODE[kind], d])
            items = _draw(kind, d, rng, bank, config)
            layout = config.layout if config.layout != "both" else LAYOUTS[d % 2]
            orders = [items] if len(items) == 1 or not config.both_orders else [items, items[::-1]]
            for ordered in orders:
                if made == n:
                    break
                yield render(ordered, kind, layout, group, rng, config)
                made += 1
            d += 1
            group += 1
