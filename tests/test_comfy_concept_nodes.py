"""Issue-2 nodes in the real ComfyUI server: documented inputs, concepts on the native path, bad files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from clif_core.concepts.files import save_concept_file
from clif_core.models.loader import load_base_model
from tests.comfyui.rig import ExecutionFailed
from tests.helpers.concept_files import make_concept_file
from tests.helpers.node_docs import documented_nodes

pytestmark = pytest.mark.comfy

def test_object_info_lists_every_pack_node_with_its_documented_inputs(comfy_server):
    info = comfy_server.object_info()
    pack = {name: node for name, node in info.items() if node.get("python_module", "").endswith("comfyui-clif")}
    docs = documented_nodes()
    assert sorted(pack) == sorted(docs), "docs/nodes.md and the registered nodes differ"
    for name, node in pack.items():
        inputs = [*node["input"].get("required", {}), *node["input"].get("optional", {})]
        assert inputs == docs[name]["inputs"], name
        assert list(node["output_name"]) == docs[name]["outputs"], name
        assert node["category"].startswith("CLIF/"), name


def test_every_widget_of_every_pack_node_has_a_tooltip(comfy_server):
    widgets = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
    missing = []
    for name, node in comfy_server.object_info().items():
        if not node.get("python_module", "").endswith("comfyui-clif"):
            continue
        for group in ("required", "optional"):
            for field, spec in node["input"].get(group, {}).items():
                is_widget = isinstance(spec[0], list) or spec[0] in widgets
                if is_widget and not (len(spec) > 1 and str(spec[1].get("tooltip", "")).strip()):
                    missing.append(f"{name}.{field}")
    assert not missing, f"widgets without a tooltip: {', '.join(missing)}"


@pytest.fixture(scope="module")
def installed(comfy_server, tiny_sd1):
    """The tiny SD1 checkpoint and a concept file made for it, in the server's model folders."""
    checkpoints = comfy_server.models_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_sd1.single_file, checkpoints / "tiny_sd1.safetensors")
    base = load_base_model(tiny_sd1.single_file)
    concepts = make_concept_file(base, seed=3, text_lora=False)
    save_concept_file(concepts, comfy_server.models_dir / "clif_concepts" / "alice_bob.safetensors")
    return concepts


def native_graph(prompt: str, prefix: str, concepts: str | None, strength_model: float = 1.0,
                 strength_clip: float = 1.0) -> dict:
    graph = {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": "checkpoints/tiny_sd1.safetensors"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 2]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 2]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 1], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
            "seed": 7, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 3]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }
    if concepts is not None:
        graph["2"] = {"class_type": "CLIFLoadConceptFile", "inputs": {"concept_file": concepts}}
        graph["3"] = {"class_type": "CLIFApplyConcepts", "inputs": {
            "model": ["1", 1], "clip": ["1", 2], "concepts": ["2", 0],
            "strength_model": strength_model, "strength_clip": strength_clip}}
        graph["4"]["inputs"]["clip"] = ["3", 1]
        graph["5"]["inputs"]["clip"] = ["3", 1]
        graph["7"]["inputs"]["model"] = ["3", 0]
    return graph


def render(server, graph: dict) -> np.ndarray:
    [path] = server.output_files(server.run(graph, timeout=180))
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_apply_concepts_changes_the_native_ksampler_image(comfy_server, installed):
    prompt = "a photo of <alice> on the left and <bob> on the right"
    plain = render(comfy_server, native_graph(prompt, "concepts/plain", None))
    again = render(comfy_server, native_graph(prompt, "concepts/plain_again", None))
    assert np.array_equal(plain, again), "the native graph is not deterministic for a fixed seed"
    applied = render(comfy_server, native_graph(prompt, "concepts/applied", "alice_bob.safetensors"))
    assert np.abs(applied - plain).mean() > 1.0
    # The placeholder tokens alone (LoRA at strength 0) change the image too, and so does the LoRA alone.
    tokens_only = render(comfy_server, native_graph(prompt, "concepts/tokens", "alice_bob.safetensors", 0.0, 0.0))
    assert np.abs(tokens_only - plain).mean() > 1.0
    no_placeholder = "a photo of a person"
    lora_plain = render(comfy_server, native_graph(no_placeholder, "concepts/np_plain", None))
    lora_only = render(comfy_server, native_graph(no_placeholder, "concepts/np_lora", "alice_bob.safetensors", 1.0, 0.0))
    assert np.abs(lora_only - lora_plain).mean() > 1.0


def test_corrupt_concept_file_fails_on_its_node_and_server_goes_on(comfy_server, installed):
    broken = comfy_server.models_dir / "clif_concepts" / "broken.safetensors"
    good = (comfy_server.models_dir / "clif_concepts" / "alice_bob.safetensors").read_bytes()
    broken.write_bytes(good[: len(good) // 2])  # truncated in transit
    with pytest.raises(ExecutionFailed) as caught:
        comfy_server.run(native_graph("<alice>", "concepts/broken", "broken.safetensors"), timeout=120)
    assert caught.value.node_type == "CLIFLoadConceptFile"
    assert "broken.safetensors" in caught.value.exception_message
    render(comfy_server, native_graph("<alice>", "concepts/after_broken", "alice_bob.safetensors"))


@pytest.mark.every_comfyui
def test_save_and_export_nodes_write_files_the_stock_nodes_render_like_apply(comfy_server, installed):
    from clif_core.concepts.files import load_concept_file

    graph = {
        "1": {"class_type": "CLIFLoadConceptFile", "inputs": {"concept_file": "alice_bob.safetensors"}},
        "2": {"class_type": "CLIFSaveConceptFile", "inputs": {"concepts": ["1", 0], "filename": "copy",
                                                             "overwrite": False}},
        "3": {"class_type": "CLIFExportConcepts", "inputs": {"concepts": ["1", 0], "name": "alice_bob",
                                                            "overwrite": True}},
    }
    comfy_server.run(graph, timeout=120)
    models = comfy_server.models_dir
    copy = load_concept_file(models / "clif_concepts" / "copy.safetensors")
    assert [c.token for c in copy.concepts] == ["<alice>", "<bob>"]
    for a, b in zip(copy.concepts, installed.concepts):
        assert all(a.embeddings[k].equal(b.embeddings[k]) for k in b.embeddings)
    assert (models / "loras" / "alice_bob.safetensors").is_file()
    assert (models / "embeddings" / "alice.safetensors").is_file()

    # Saving again without overwrite is refused on the Save node; nothing is replaced.
    before = (models / "clif_concepts" / "copy.safetensors").read_bytes()
    with pytest.raises(ExecutionFailed) as caught:
        comfy_server.run({"1": graph["1"], "2": graph["2"]}, timeout=120)
    assert caught.value.node_type == "CLIFSaveConceptFile" and "overwrite" in caught.value.exception_message
    assert (models / "clif_concepts" / "copy.safetensors").read_bytes() == before

    # Stock path: LoraLoader + embedding:<name> renders what Apply Concepts renders.
    stock = native_graph("a photo of embedding:alice on the left", "concepts/stock", None)
    stock["3"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 1], "clip": ["1", 2],
                                                        "lora_name": "alice_bob.safetensors",
                                                        "strength_model": 1.0, "strength_clip": 1.0}}
    stock["4"]["inputs"]["clip"] = ["3", 1]
    stock["5"]["inputs"]["clip"] = ["3", 1]
    stock["7"]["inputs"]["model"] = ["3", 0]
    via_stock = render(comfy_server, stock)
    via_apply = render(comfy_server, native_graph("a photo of <alice> on the left", "concepts/apply_cmp",
                                                  "alice_bob.safetensors"))
    assert np.abs(via_stock - via_apply).max() <= 1
