"""The augmented dataset on disk: build it (atomically), read it back, preview it.

Layout (a Hugging Face `imagefolder` under train/, so `datasets.load_dataset("imagefolder",
data_dir=OUT/"train")` reads images and captions as well)::

    OUT/manifest.json             format, version, config, concepts, common words, segmenter, counts
    OUT/train/metadata.jsonl      one JSON object per image (see SampleRecord)
    OUT/train/images/000000.png
    OUT/masks/000000_left.png     one mask per slot (white = the slot's item), outside train/ so that
                                  imagefolder does not take masks for images

Everything is written into a temporary sibling folder and renamed into place at the end, so a crash
or a cancel leaves any previous dataset untouched. Files carry no time stamps and PNG encoding is
deterministic: the same inputs and seed give a bit-identical folder.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..concepts.file_format import embedding_name
from ..concepts.spec import Concept, validate_concepts
from ..errors import ClifError
from ..fileio import atomic_dir
from ..progress import SILENT, Reporter
from ..sheets import load_font
from ..validation import field_of, inside_folder, parse_json, read_json
from .common_concepts import CommonConcept
from .compose import (
    AugmentConfig,
    Composite,
    ItemBank,
    check_requirements,
    compose,
    plan_size,
)
from .segment import Segmentation, Segmenter, segment_concept_image, segment_whole

FORMAT = "clif-augmented-dataset"
VERSION = 1
SPLIT = "train"


@dataclass
class SlotRecord:
    """One slot of a sample. `source` is "concept" or "common"; `name` the concept name or common word;
    `token` the concept's placeholder (None for common words); `part` the part name for Region items;
    `text` what the caption says for this slot; `source_index` which input picture it was cut from;
    `box` (x0, y0, x1, y1) on the canvas; `mask` a path relative to the metadata file."""

    slot: str
    source: str
    name: str
    text: str
    box: list[int]
    mask: str
    token: Optional[str] = None
    part: Optional[str] = None
    source_index: int = 0


@dataclass
class SampleRecord:
    """One line of metadata.jsonl. `kind`: "G", "R", "M" or "single". `group`: samples drawn together
    (the same pair in both slot orders) share it, which gives stage 1 its hard negatives."""

    file_name: str
    caption: str
    kind: str
    layout: str
    group: int
    slots: list[SlotRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("file_name", "caption", "kind", "layout", "group")}
        d["slots"] = [vars(s) for s in self.slots]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "sample record") -> "SampleRecord":
        """A record from one parsed metadata.jsonl line; ClifError names `where` and the bad field."""
        slots = []
        for i, s in enumerate(field_of(d, "slots", list, where)):
            at = f"{where}, slot {i}"
            if not isinstance(s, dict):
                raise ClifError(f"{at}: a slot must be a JSON object")
            box = field_of(s, "box", list, at)
            if len(box) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
                raise ClifError(f"{at}: field 'box' is {box!r}; it must be four whole numbers")
            slots.append(SlotRecord(
                slot=field_of(s, "slot", str, at), source=field_of(s, "source", str, at),
                name=field_of(s, "name", str, at), text=field_of(s, "text", str, at), box=box,
                mask=field_of(s, "mask", str, at), token=_optional(s, "token", str, at),
                part=_optional(s, "part", str, at), source_index=field_of(s, "source_index", int, at)))
        return cls(
            file_name=field_of(d, "file_name", str, where), caption=field_of(d, "caption", str, where),
            kind=field_of(d, "kind", str, where), layout=field_of(d, "layout", str, where),
            group=field_of(d, "group", int, where), slots=slots,
        )


def _optional(record: dict[str, Any], key: str, expected: type, where: str) -> Any:
    return None if record.get(key) is None else field_of(record, key, expected, where)


def input_key(
    concepts: Sequence[Concept], config: AugmentConfig, segmenter: Segmenter, common: Sequence[CommonConcept] = ()
) -> str:
    """A hash of everything a dataset is built from: pixels, masks, names, config, segmenter, format version.

    The same key means `build_dataset` would write the same folder again (builds are deterministic), so a
    dataset whose manifest holds it can be reused instead of rebuilt.
    """
    h = hashlib.sha256()

    def add(obj: Any) -> None:
        if isinstance(obj, Image.Image):
            h.update(f"image {obj.mode} {obj.size}".encode())
            h.update(obj.tobytes())
        elif isinstance(obj, np.ndarray):
            h.update(f"array {obj.dtype} {obj.shape}".encode())
            h.update(np.ascontiguousarray(obj).tobytes())
        else:
            h.update(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\0")

    settings = [asdict(x) for x in (segmenter, getattr(segmenter, "options", None)) if is_dataclass(x)]
    add([FORMAT, VERSION, config.to_dict(), segmenter.describe(), settings])
    for c in concepts:
        add(["concept", c.name, c.token, c.class_word, list(c.parts), len(c.images)])
        for img, mask, named in zip(c.images, c.masks, c.part_masks):
            add(img)
            add(mask if mask is None else mask.astype(bool))
            for part in sorted(named):
                add(part)
                add(named[part].astype(bool))
    for cc in common:
        add(["common", cc.word, cc.generated, len(cc.images)])
        for img, mask in zip(cc.images, cc.masks):
            add(img)
            add(mask if mask is None else mask.astype(bool))
    return h.hexdigest()


def _reusable(out: Path, key: str) -> bool:
    """True when `out` is a complete dataset built from inputs with this key."""
    try:
        ds = load_dataset(out)
    except ClifError:
        return False
    return ds.manifest.get("input_key") == key


def _save_png(image: Image.Image, path: Path) -> None:
    # Level 1 encodes ~3x faster than the default 6 (it dominated the build time); files ~25% larger.
    image.save(path, format="PNG", optimize=False, compress_level=1)


def build_dataset(
    concepts: Sequence[Concept],
    out_dir: str | Path,
    config: AugmentConfig,
    segmenter: Segmenter,
    common: Sequence[CommonConcept] = (),
    reporter: Reporter = SILENT,
    overwrite: bool = False,
    reuse: bool = False,
) -> Path:
    """Segment the inputs, compose every sample and write the dataset folder atomically; returns its path.

    Progress: one step per segmented picture, then one per sample (the preview is the sample).
    An existing `out_dir` is only replaced with `overwrite=True`, and only once the new one is complete.
    With `reuse=True` an existing complete dataset built from the same inputs (`input_key`) is returned
    as it is, without building.
    """
    out = Path(out_dir)
    config.check()
    validate_concepts(concepts)
    words = [c.word for c in common]
    clash = [c.token for c in concepts if c.token in words]
    if clash:
        raise ClifError(f"placeholder token(s) {clash} are also common words; use a new word for each concept's token.")
    key = input_key(concepts, config, segmenter, common)
    if reuse and _reusable(out, key):
        reporter.log(f"dataset {out} is up to date (built from the same inputs); reusing it")
        return out
    if out.exists() and not overwrite:
        raise ClifError(f"dataset folder {out} already exists; choose another folder or allow overwriting it.")
    if out.exists() and not (out / "manifest.json").is_file():
        raise ClifError(f"{out} exists and is not a dataset folder (no manifest.json); it is left alone. Choose another folder.")

    n_pictures = sum(len(c.images) for c in concepts) + sum(len(c.images) for c in common)
    tick = _Ticker(reporter, n_pictures + plan_size(config))
    segs = _segment_concepts(concepts, segmenter, config, reporter, tick)
    common_masks = _segment_common(common, segmenter, reporter, tick)
    bank = ItemBank.build(concepts, segs, common, common_masks, config.templates, config.resolution)
    check_requirements(config, concepts, bank)

    with atomic_dir(out) as tmp:
        counts, n_samples = _write_samples(tmp, bank, config, reporter, tick)
        manifest = _manifest(concepts, segs, common, config, segmenter, counts, n_samples, key)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    reporter.log(f"wrote {n_samples} samples ({', '.join(f'{k}: {v}' for k, v in counts.items())}) to {out}")
    return out


class _Ticker:
    """Progress over the whole build: one step per segmented picture, then one per sample."""

    def __init__(self, reporter: Reporter, total: int):
        self.reporter, self.total, self.step = reporter, total, 0

    def __call__(self, preview: Optional[Image.Image] = None) -> None:
        self.step += 1
        self.reporter.progress(self.step, self.total, preview)


def _segment_concepts(concepts: Sequence[Concept], segmenter: Segmenter, config: AugmentConfig,
                      reporter: Reporter, tick: _Ticker) -> list[list[Segmentation]]:
    """Every concept picture segmented into the concept and its parts, a note where the part count differs."""
    segs = []
    for c in concepts:
        per = []
        for i in range(len(c.images)):
            reporter.check_cancel()
            seg = segment_concept_image(c, i, segmenter, n_parts=config.n_parts)
            if c.parts and seg.parts and not c.part_masks[i] and len(seg.parts) != len(c.parts):
                reporter.log(
                    f"note: concept {c.name!r}: {c.sources[i]} gave {len(seg.parts)} part region(s) for the "
                    f"{len(c.parts)} part names {c.parts}; generic names ({', '.join(seg.part_names)}) are used for it."
                )
            per.append(seg)
            tick()
        segs.append(per)
    return segs


def _segment_common(common: Sequence[CommonConcept], segmenter: Segmenter, reporter: Reporter,
                    tick: _Ticker) -> list[list]:
    """The mask of every common-concept picture (the whole picture where a generated one fails)."""
    common_masks = []
    for cc in common:
        masks = []
        for img, m, src in zip(cc.images, cc.masks, cc.sources):
            reporter.check_cancel()
            masks.append(segment_whole(img, m, src, segmenter, whole_on_failure=cc.generated, reporter=reporter))
            tick()
        common_masks.append(masks)
    return common_masks


def _write_samples(tmp: Path, bank: ItemBank, config: AugmentConfig, reporter: Reporter,
                   tick: _Ticker) -> tuple[dict[str, int], int]:
    """Compose and write every sample and metadata.jsonl into `tmp`; (samples per kind, total)."""
    (tmp / SPLIT / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    lines = []
    counts = {k: 0 for k in config.counts()}
    for index, comp in enumerate(compose(bank, config)):
        reporter.check_cancel()
        lines.append(json.dumps(_write_sample(tmp, index, comp).to_json(), ensure_ascii=False, sort_keys=True))
        counts[comp.kind] += 1
        tick(comp.image)
    (tmp / SPLIT / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return counts, len(lines)


def _manifest(concepts: Sequence[Concept], segs: list[list[Segmentation]], common: Sequence[CommonConcept],
              config: AugmentConfig, segmenter: Segmenter, counts: dict[str, int], n_samples: int,
              key: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "seed": config.seed,
        "config": config.to_dict(),
        "segmenter": segmenter.describe(),
        "concepts": [
            {
                "name": c.name, "token": c.token, "class_word": c.class_word, "parts": list(c.parts),
                "part_names": sorted({n for s in seg for n in s.part_names}),
                "images": [Path(s).name for s in c.sources],
            }
            for c, seg in zip(concepts, segs)
        ],
        "common": [{"word": cc.word, "images": len(cc.images)} for cc in common],
        "counts": counts,
        "n_samples": n_samples,
        "split": SPLIT,
        "input_key": key,
    }


def _write_sample(root: Path, index: int, comp: Composite) -> SampleRecord:
    stem = f"{index:06d}"
    file_name = f"images/{stem}.png"
    _save_png(comp.image, root / SPLIT / file_name)
    record = SampleRecord(file_name, comp.caption, comp.kind, comp.layout, comp.group)
    for s in comp.slots:
        mask_rel = f"masks/{stem}_{s.slot}.png"
        _save_png(Image.fromarray(s.mask.astype(bool)), root / mask_rel)  # 1-bit PNG
        it = s.item
        record.slots.append(
            SlotRecord(
                slot=s.slot, source=it.source, name=it.name, text=it.text, box=list(s.box), mask=f"../{mask_rel}",
                token=it.token, part=it.part, source_index=it.source_index,
            )
        )
    return record


# ------------------------------------------------------------------------------------------- reading


@dataclass
class Sample:
    """`image`: float32 [3, H, W] in 0..1. `masks`: bool [n_slots, H, W] in slot order."""

    image: Any
    caption: str
    kind: str
    masks: Any
    record: SampleRecord


class AugmentedDataset:
    """A built dataset: `len()`, indexing gives `Sample`s (a torch map-style dataset)."""

    def __init__(self, root: Path, manifest: dict[str, Any], records: list[SampleRecord]) -> None:
        self.root = root
        self.manifest = manifest
        self.records = records

    @property
    def config(self) -> AugmentConfig:
        return AugmentConfig.from_dict(self.manifest["config"])

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, i: int) -> Path:
        return self.root / SPLIT / self.records[i].file_name

    def mask_paths(self, i: int) -> list[Path]:
        return [(self.root / SPLIT / s.mask).resolve() for s in self.records[i].slots]

    def load_image(self, i: int) -> Image.Image:
        with Image.open(self.image_path(i)) as im:
            return im.convert("RGB")

    def __getitem__(self, i: int) -> Sample:
        import torch

        if i < 0:
            i += len(self)
        rec = self.records[i]
        image = torch.from_numpy(np.asarray(self.load_image(i), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        masks = []
        for path in self.mask_paths(i):
            with Image.open(path) as im:
                masks.append(np.asarray(im.convert("L")) > 127)
        return Sample(image, rec.caption, rec.kind, torch.from_numpy(np.stack(masks)), rec)

    def indices(self, kinds: Sequence[str]) -> list[int]:
        return [i for i, r in enumerate(self.records) if r.kind in kinds]


def load_dataset(folder: str | Path) -> AugmentedDataset:
    """Open a dataset folder made by `build_dataset`; checks the format, the version and every file."""
    root = Path(folder)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise ClifError(f"{root} is not an augmented dataset: {manifest_path.name} is missing. Build it with the Augment step.")
    fix = "build the dataset again."
    manifest = read_json(manifest_path, dict, fix)
    if manifest.get("format") != FORMAT:
        raise ClifError(f"{manifest_path} has format {manifest.get('format')!r}, not {FORMAT!r}.")
    if manifest.get("version") != VERSION:
        raise ClifError(
            f"{manifest_path} is dataset version {manifest.get('version')}, this pack reads version {VERSION}; "
            f"build the dataset again with this version."
        )
    for i, c in enumerate(field_of(manifest, "concepts", list, str(manifest_path))):
        at = f"{manifest_path}: concept {i}"
        if not isinstance(c, dict):
            raise ClifError(f"{at} is not a JSON object; {fix}")
        embedding_name(field_of(c, "name", str, at))  # a name that cannot name files is refused before training
        field_of(c, "token", str, at), field_of(c, "class_word", str, at)
    meta = root / SPLIT / "metadata.jsonl"
    if not meta.is_file():
        raise ClifError(f"dataset {root} is incomplete: {meta} is missing. Build it again.")
    try:
        text = meta.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ClifError(f"{meta} is not UTF-8 text (byte {err.start}); {fix}") from None
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{meta} line {n}"
        record = SampleRecord.from_json(parse_json(line, dict, where, fix), where)
        inside_folder(root / SPLIT, record.file_name, f"{where}: file_name")
        for i, slot in enumerate(record.slots):
            inside_folder(root, slot.mask, f"{where}: slot {i} mask", start=root / SPLIT)
        records.append(record)
    ds = AugmentedDataset(root, manifest, records)
    missing = [str(p) for i in range(len(ds)) for p in [ds.image_path(i), *ds.mask_paths(i)] if not p.is_file()]
    if missing:
        raise ClifError(f"dataset {root} is incomplete: {len(missing)} file(s) missing, e.g. {missing[:3]}. Build it again.")
    return ds


# ------------------------------------------------------------------------------------------- preview


def preview_grid(
    dataset: AugmentedDataset, n: int = 8, columns: int = 4, cell: int = 256, kinds: Sequence[str] = ()
) -> Image.Image:
    """`n` samples spread over the dataset (so every kind shows), each with its kind and caption below.

    `kinds` limits the choice to samples of those kinds ("G", "R", "M", "single"); empty means all.
    """
    pool = dataset.indices(kinds) if kinds else list(range(len(dataset)))
    if not pool:
        what = f" of kind {', '.join(kinds)}" if kinds else ""
        raise ClifError(f"dataset {dataset.root} has no samples{what} to preview.")
    n = max(1, min(n, len(pool)))
    picks = [pool[i] for i in sorted({int(round(x)) for x in np.linspace(0, len(pool) - 1, n)})]
    font = load_font(max(10, cell // 18))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_w = max(1.0, probe.textlength("abcdefghijklmnopqrstuvwxyz", font=font) / 26)
    width_chars = max(8, int((cell - 8) / char_w))
    texts = [textwrap.wrap(f"[{dataset.records[i].kind}] {dataset.records[i].caption}", width_chars) for i in picks]
    line_h = int(probe.textbbox((0, 0), "Ag", font=font)[3]) + 3
    text_h = max(len(t) for t in texts) * line_h + 6
    columns = max(1, min(columns, len(picks)))
    rows = (len(picks) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell, rows * (cell + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, (i, lines) in enumerate(zip(picks, texts)):
        x, y = (k % columns) * cell, (k // columns) * (cell + text_h)
        thumb = dataset.load_image(i)
        thumb.thumbnail((cell, cell), Image.LANCZOS)
        grid.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=(200, 200, 200))
        for j, line in enumerate(lines):
            draw.text((x + 4, y + cell + 3 + j * line_h), line, fill=(0, 0, 0), font=font)
    return grid
