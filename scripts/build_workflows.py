"""Build the shipped workflows (workflows/*.json) and their thumbnails from the compact descriptions below.

    .venv/bin/python scripts/build_workflows.py            # JSON + thumbnails
    .venv/bin/python scripts/build_workflows.py --no-run   # JSON only
    .venv/bin/python scripts/build_workflows.py --shipped-steps   # thumbnails from the step counts as shipped

Starts the test rig's real ComfyUI server with the pack (tests/comfyui/rig.py), reads its live /object_info for
widget order, socket types and combo options, writes each workflow in the editor's UI format, then converts it
with comfy-cli's converter, runs it (step counts lowered unless --shipped-steps) and saves its first output images as
the same-name .jpg thumbnail (erasure and purification: a grid labelled "before" / "after: circle erased"). A
workflow whose nodes the pack does not register yet is skipped and named.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.workflow_tools import (  # noqa: E402
    CONCEPT_FILE,
    ISOLATED_FILES,
    SHIPPED_CONCEPT_FILES,
    WORKFLOWS_DIR,
    Group,
    Node,
    Workflow,
    build_ui_workflow,
    default_base_model,
    default_vision,
    ensure_concept_files,
    lower_steps,
    prepare_server,
)

PAIR = "a photo of <ada> on the left and <ida> on the right"
NEGATIVE = "blurry, deformed"
ERASE_TARGET = "circle -> square"
SAVED_PATCH = "erase_circle"
# Workflows whose thumbnail is a labelled before/after grid: the node titles of what "before" and "after" show
# (a Load Image's picture or a save node's images), and how they pair up.
BEFORE_AFTER = {"clif_4_erase_a_concept": ("Save: before", "Save: after", "row"),
                "clif_5_purify_an_image": ("Picture with a circle", "Save: purified", "column")}
THUMB_SIDE = 192


def stock_sampler(prefix: str, key: str, title: str, model: tuple[str, str], seed: int, prompt_key: str,
                  negative_key: str, latent_key: str, vae: tuple[str, str], out_title: str) -> list[Node]:
    return [
        Node(f"{key}_ks", "KSampler", title, {"seed": seed, "steps": 25, "cfg": 6.0},
             {"model": model, "positive": (prompt_key, "CONDITIONING"), "negative": (negative_key, "CONDITIONING"),
              "latent_image": (latent_key, "LATENT")}),
        Node(f"{key}_dec", "VAEDecode", f"Decode ({title.lower()})", links={"samples": (f"{key}_ks", "LATENT"),
                                                                             "vae": vae}),
        Node(f"{key}_save", "SaveImage", out_title, {"filename_prefix": prefix},
             {"images": (f"{key}_dec", "IMAGE")}),
    ]


def concept_nodes(name: str) -> list[Node]:
    return [
        Node(f"{name}_concept", "CLIFConceptFromFolder", f"Concept pictures: {name}",
             {"folder": f"clif_examples/{name}", "name": name, "token": f"<{name}>", "class_word": "figure",
              "parts": "head, body, accessory"}),
        Node(f"{name}_seg", "CLIFSegmentConcept", f"Segment {name} (masks and parts)", {"n_parts": 3},
             {"concept": (f"{name}_concept", "concept"), "segmenter": ("sam", "segmenter")}),
    ]


def training_workflow(load: Node, vision: str) -> Workflow:
    stage = {"clif_base": ("base", "clif_base"), "dataset": ("augment", "dataset")}
    return Workflow("clif_1_train_two_concepts", note="Train two confusable sandbox characters (ada, ida) with "
                    "CLIF: pictures -> segmentation -> Global/Region/Mix augmentation -> contrastive stage -> "
                    "decoder stage -> concept file in models/clif_concepts. Queue again after a cancel to resume.",
                    groups=[
        Group("1. Base model and segmenter", [
            load, Node("sam", "CLIFLoadSAM", "Segmenter (weight-free; your masks win)"),
        ]),
        Group("2. Concept pictures (bundled examples)", [*concept_nodes("ada"), *concept_nodes("ida")], "#2a6f3a"),
        Group("3. Augmented training set", [
            Node("augment", "CLIFAugment", "Augment: Global, Region, Mix, single",
                 {"dataset_name": "sandbox_ada_ida", "common_words": "circle, square", "n_global": 24,
                  "n_region": 24, "n_mix": 16, "n_single": 8, "resolution": 64, "n_parts": 3, "common_images": 2},
                 {"concept_1": ("ada_seg", "concept"), "concept_2": ("ida_seg", "concept"),
                  "segmenter": ("sam", "segmenter"), "base_model": ("base", "clif_base")}),
            Node("preview", "CLIFPreviewDataset", "Preview the training set", {"n_samples": 8},
                 {"dataset": ("augment", "dataset")}),
        ], "#6f4a2a"),
        Group("4. Stage 1: contrastive", [
            Node("stage1", "CLIFContrastiveTraining", "Stage 1: contrastive token training",
                 {"clip_vision": vision, "run_name": "sandbox_ada_ida_stage1", "steps": 400, "batch_size": 32},
                 stage),
            Node("loss1", "CLIFLossPlot", "Loss curve, stage 1", links={"run_dir": ("stage1", "run_dir")}),
            Node("loss1_show", "PreviewImage", "Show loss, stage 1", links={"images": ("loss1", "IMAGE")}),
        ], "#4a2a6f"),
        Group("5. Stage 2: decoder, save", [
            Node("stage2", "CLIFDecoderTraining", "Stage 2: UNet LoRA + tokens",
                 {"run_name": "sandbox_ada_ida_stage2", "steps": 1000, "batch_size": 1, "preview_every": 100},
                 {**stage, "concepts": ("stage1", "concepts")}),
            Node("loss2", "CLIFLossPlot", "Loss curve, stage 2", links={"run_dir": ("stage2", "run_dir")}),
            Node("loss2_show", "PreviewImage", "Show loss, stage 2", links={"images": ("loss2", "IMAGE")}),
            Node("save", "CLIFSaveConceptFile", "Save the concept file",
                 {"filename": CONCEPT_FILE.removesuffix(".safetensors"), "overwrite": True},
                 {"concepts": ("stage2", "concepts")}),
        ], "#7a2a2a"),
    ])


def isolation_workflow(load: Node) -> Workflow:
    files = [Node(f"{name}_file", "CLIFLoadConceptFile", f"Concept file: {name} alone", {"concept_file": file})
             for name, file in zip(("ada", "ida"), ISOLATED_FILES)]
    return Workflow("clif_6_isolated_concepts", note="Each character's LoRA only in its own half: CLIF Apply "
                    "Concepts (Regional) binds ada's file to the left region and ida's to the right (their LoRAs "
                    "as ComfyUI hooks on that region's masked conditioning, their tokens only in that region's "
                    "prompt), for the stock KSampler with the plain MODEL. Needs one concept file per character: "
                    "train each alone (workflow 1 with one concept) and save them as sandbox_ada / sandbox_ida.",
                    groups=[
        Group("1. Model, one concept file each", [load, *files]),
        Group("2. Regional prompts, isolated", [
            Node("regional", "CLIFApplyConceptsRegional", "Apply concepts (regional): ada left, ida right",
                 {"global_prompt": "a photo of two figures side by side", "layout": "left_right",
                  "region_prompts": "a photo of <ada>\na photo of <ida>", "region_1": 1, "region_2": 2},
                 {"clip": ("base", "CLIP"), "concepts_1": ("ada_file", "concepts"),
                  "concepts_2": ("ida_file", "concepts")}),
            Node("neg", "CLIPTextEncode", "Negative prompt", {"text": NEGATIVE}, {"clip": ("base", "CLIP")}),
            Node("latent", "CLIFEmptyLatent", "Empty latent (64 px images)",
                 {"width": 64, "height": 64, "batch_size": 2}, {"vae": ("base", "VAE")}),
        ], "#2a6f3a"),
        Group("3. Native sampling (plain MODEL)",
              stock_sampler("clif/isolated_concepts", "s", "KSampler", ("base", "MODEL"), 7, "regional", "neg",
                            "latent", ("base", "VAE"), "Save image"), "#6f4a2a"),
    ])


def workflows(base: str, vision: str) -> list[Workflow]:
    load = Node("base", "CLIFLoadBaseModel", "Base model (sandbox)", {"base_model": base})
    concepts = Node("concepts", "CLIFLoadConceptFile", "Concept file: ada + ida",
                    {"concept_file": CONCEPT_FILE})
    # the same erasure run in workflows 4 and 5: workflow 5 resumes workflow 4's run when it exists
    erase = Node("erase", "CLIFEraseConcepts", "Erase 'circle' (alternative: square)",
                 {"targets": ERASE_TARGET, "preserve": "a red triangle", "method": "all-but-one", "steps": 200,
                  "filename": SAVED_PATCH, "run_name": SAVED_PATCH, "overwrite": True},
                 {"clif_base": ("base", "clif_base")})
    return [
        training_workflow(load, vision),
        Workflow("clif_2_multi_concept_sampling", note="Two trained concepts in one picture with the CLIF Sampler: "
                 "a plain prompt and the same prompt with a left/right regional layout, same seed.", groups=[
            Group("1. Model and concepts", [load, concepts]),
            Group("2. Plain prompt", [
                Node("plain", "CLIFSampler", "CLIF Sampler: plain prompt",
                     {"prompt": PAIR, "negative_prompt": NEGATIVE, "seed": 7, "steps": 30, "cfg": 6.0,
                      "width": 64, "height": 64, "batch_size": 2},
                     {"clif_base": ("base", "clif_base"), "concepts_1": ("concepts", "concepts")}),
                Node("plain_save", "CLIFSaveImage", "Save: plain", {"filename_prefix": "clif/sampling_plain"},
                     {"images": ("plain", "IMAGE"), "recipe": ("plain", "recipe")}),
            ], "#2a6f3a"),
            Group("3. Regional layout (left / right)", [
                Node("regional", "CLIFSampler", "CLIF Sampler: regional layout",
                     {"prompt": PAIR, "negative_prompt": NEGATIVE, "seed": 7, "steps": 30, "cfg": 6.0,
                      "width": 64, "height": 64, "batch_size": 2, "layout": "left_right",
                      "region_prompts": "a photo of <ada>\na photo of <ida>"},
                     {"clif_base": ("base", "clif_base"), "concepts_1": ("concepts", "concepts")}),
                Node("regional_save", "CLIFSaveImage", "Save: regional",
                     {"filename_prefix": "clif/sampling_regional"},
                     {"images": ("regional", "IMAGE"), "recipe": ("regional", "recipe")}),
            ], "#6f4a2a"),
        ]),
        Workflow("clif_3_concepts_in_stock_graph", note="Trained concepts in ComfyUI's own graph: CLIF Apply "
                 "Concepts patches MODEL and CLIP, then the stock CLIPTextEncode, KSampler, VAEDecode, SaveImage. "
                 "CLIF Empty Latent (model-sized) reads the VAE's factor, so 64 px typed are 64 px pictures.",
                 groups=[
            Group("1. Model and concepts", [
                load, concepts,
                Node("apply", "CLIFApplyConcepts", "Apply concepts to MODEL and CLIP", {},
                     {"model": ("base", "MODEL"), "clip": ("base", "CLIP"), "concepts": ("concepts", "concepts")}),
            ]),
            Group("2. Prompt", [
                Node("pos", "CLIPTextEncode", "Prompt with the concept tokens", {"text": PAIR},
                     {"clip": ("apply", "CLIP")}),
                Node("neg", "CLIPTextEncode", "Negative prompt", {"text": NEGATIVE}, {"clip": ("apply", "CLIP")}),
                Node("latent", "CLIFEmptyLatent", "Empty latent (64 px images)",
                     {"width": 64, "height": 64, "batch_size": 2}, {"vae": ("base", "VAE")}),
            ], "#2a6f3a"),
            Group("3. Native sampling", stock_sampler("clif/stock_graph", "s", "KSampler with concepts",
                                                      ("apply", "MODEL"), 7, "pos", "neg", "latent",
                                                      ("base", "VAE"), "Save image"), "#6f4a2a"),
        ]),
        isolation_workflow(load),
        Workflow("clif_4_erase_a_concept", note="All-but-One erasure of 'circle', steered to 'square'; the same "
                 "seeds render before (base MODEL) and after (patched MODEL).", groups=[
            Group("1. Erase", [
                load, erase,
                Node("patch", "CLIFApplyErasurePatch", "Apply the erasure patch", {},
                     {"model": ("base", "MODEL"), "erasure_patch": ("erase", "erasure_patch")}),
            ], "#7a2a2a"),
            Group("2. Same prompt, same seed", [
                Node("pos", "CLIPTextEncode", "Prompt naming the erased concept", {"text": "a blue circle"},
                     {"clip": ("base", "CLIP")}),
                Node("neg", "CLIPTextEncode", "Negative prompt", {"text": ""}, {"clip": ("base", "CLIP")}),
                Node("latent", "CLIFEmptyLatent", "Empty latent (64 px images)",
                     {"width": 64, "height": 64, "batch_size": 4}, {"vae": ("base", "VAE")}),
            ], "#2a6f3a"),
            Group("3. Before (original model)", stock_sampler("clif/erase_before", "before", "KSampler before",
                                                              ("base", "MODEL"), 11, "pos", "neg", "latent",
                                                              ("base", "VAE"), "Save: before")),
            Group("4. After (erased model)", stock_sampler("clif/erase_after", "after", "KSampler after",
                                                           ("patch", "MODEL"), 11, "pos", "neg", "latent",
                                                           ("base", "VAE"), "Save: after"), "#6f4a2a"),
        ]),
        Workflow("clif_5_purify_an_image", note="Purification: the picture is inverted with DDIM under the "
                 "original model and regenerated with the erased model, keeping the layout and dropping the "
                 "concept. The erasure node resumes the run of workflow 4 when it exists.", groups=[
            Group("1. Erasure patch", [load, erase], "#7a2a2a"),
            Group("2. Picture to purify", [
                Node("image", "LoadImage", "Picture with a circle", {"image": "clif_example_circle.png"}),
            ], "#2a6f3a"),
            Group("3. Purify", [
                Node("purify", "CLIFPurifyImage", "Purify (DDIM inversion + erased model)", {"steps": 50},
                     {"clif_base": ("base", "clif_base"), "erasure_patch": ("erase", "erasure_patch"),
                      "image": ("image", "IMAGE")}),
                Node("save", "SaveImage", "Save: purified", {"filename_prefix": "clif/purified"},
                     {"images": ("purify", "IMAGE")}),
            ], "#6f4a2a"),
        ]),
    ]


def thumbnail(paths: list[Path], out: Path) -> None:
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in paths[:4]]
    sheet = Image.new("RGB", (THUMB_SIDE * len(images), THUMB_SIDE), "white")
    for i, im in enumerate(images):
        sheet.paste(im.resize((THUMB_SIDE, THUMB_SIDE), Image.NEAREST), (i * THUMB_SIDE, 0))
    _save_jpeg(sheet, out)


def before_after_thumbnail(before: list[Path], after: list[Path], by: str, out: Path) -> None:
    """The images labelled "before" and "after: circle erased" in the picture itself."""
    from PIL import Image

    from clif_core.sheets import before_after_grid

    def opened(paths: list[Path]) -> list:
        return [Image.open(p).convert("RGB") for p in paths[:4]]

    erased = ERASE_TARGET.split("->")[0].strip()
    _save_jpeg(before_after_grid(opened(before), opened(after), erased, cell=THUMB_SIDE, by=by), out)


def _save_jpeg(sheet, out: Path) -> None:
    buf = io.BytesIO()
    sheet.save(buf, format="JPEG", quality=88)
    out.write_bytes(buf.getvalue())


def titled_images(server, entry: dict, ui: dict, title: str) -> list[Path]:
    """The pictures of the node titled `title`: a Load Image's input file, or what a save node wrote."""
    [node] = [n for n in ui["nodes"] if n.get("title") == title]
    if node["type"] == "LoadImage":
        return [server.input_dir / node["widgets_values"][0]]
    return server.output_files({"outputs": {str(node["id"]): entry["outputs"][str(node["id"])]}})


def main() -> None:
    from comfy_cli.workflow_to_api import convert_ui_to_api

    from tests.comfyui.rig import ComfyServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="write the JSON only, no thumbnails")
    parser.add_argument("--only", nargs="*", default=None, help="names to build (default: all)")
    parser.add_argument("--shipped-steps", action="store_true",
                        help="run with the workflows' own step counts (slower; the thumbnails show what a user gets)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ComfyServer(Path(tmp)) as server:
        prepare_server(server, Path(tmp) / "models-src")
        info = server.object_info()
        base, vision = default_base_model(info), default_vision(info)
        skipped = []
        for wf in workflows(base, vision):
            if args.only and wf.name not in args.only:
                continue
            named = sorted({n.widgets["concept_file"] for g in wf.groups for n in g.nodes
                            if n.type == "CLIFLoadConceptFile"} & set(SHIPPED_CONCEPT_FILES))
            if named:  # written by the training workflow when it ran first, else synthetic stand-ins
                ensure_concept_files(server, base, files=named)
            info = server.object_info()  # the concept files are options now
            missing = sorted({n.type for g in wf.groups for n in g.nodes} - set(info))
            if missing:
                skipped.append(f"{wf.name} (needs {', '.join(missing)})")
                continue
            ui = build_ui_workflow(wf, info)
            path = WORKFLOWS_DIR / f"{wf.name}.json"
            path.write_text(json.dumps(ui, indent=1) + "\n", encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)}: {len(ui['nodes'])} nodes, {len(ui['groups'])} groups")
            if args.no_run:
                continue
            prompt = convert_ui_to_api(ui, info)
            if not args.shipped_steps:
                lower_steps(prompt)
            entry = server.run(prompt, timeout=3600)
            saved = {str(n["id"]) for n in ui["nodes"] if n["type"] in ("SaveImage", "CLIFSaveImage")}
            images = [p for p in server.output_files(entry) if p.suffix == ".png"]  # previews too (training)
            images = [p for p in server.output_files({"outputs": {k: v for k, v in entry["outputs"].items()
                                                                  if k in saved}})] or images
            if wf.name in BEFORE_AFTER:
                before, after, by = BEFORE_AFTER[wf.name]
                before_after_thumbnail(titled_images(server, entry, ui, before),
                                       titled_images(server, entry, ui, after), by, path.with_suffix(".jpg"))
            else:
                thumbnail(images, path.with_suffix(".jpg"))
            print(f"  thumbnail from {len(images)} output image(s)")
        for s in skipped:
            print(f"skipped {s}")


if __name__ == "__main__":
    main()
