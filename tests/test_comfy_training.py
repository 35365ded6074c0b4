"""The training nodes in the real ComfyUI server: a Train Concepts graph writes a concept file that the
concept nodes load, the Loss Plot draws its curve; cancelling through /interrupt stops within one step,
writes no partial file, and the server goes on: queueing the run again resumes and finishes it."""

from __future__ import annotations

import shutil
import time

import pytest
from PIL import Image

from clif_core.concepts.files import load_concept_file
from clif_core.models.loader import load_base_model
from clif_core.models.tiny import build_tiny_vision_tower
from clif_core.train.vision import save_vision_tower_file
from clif_core.training.checkpoint import list_checkpoints
from tests.comfyui.rig import ExecutionInterrupted
from tests.helpers.comfy_progress import progress_listener
from tests.helpers.datasets import make_dataset
from tests.helpers.node_docs import documented_nodes

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def installed(comfy_server, tiny_sd1, tmp_path_factory):
    """The tiny SD1 checkpoint, its vision tower in models/clip_vision, and a dataset folder."""
    checkpoints = comfy_server.models_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    if not (checkpoints / "tiny_sd1.safetensors").exists():
        shutil.copy(tiny_sd1.single_file, checkpoints / "tiny_sd1.safetensors")
    vision = comfy_server.models_dir / "clip_vision" / "tiny_l.safetensors"
    save_vision_tower_file(build_tiny_vision_tower("sd1"), vision)
    small = make_dataset(tmp_path_factory.mktemp("ds") / "small", resolution=32, n_global=2, n_region=0, n_mix=2,
                         n_single=2)
    big = make_dataset(tmp_path_factory.mktemp("ds") / "big", resolution=64, n_global=2, n_region=0, n_mix=2,
                       n_single=2)
    return {"small": str(small), "big": str(big)}


def test_training_nodes_match_docs(comfy_server):
    docs = documented_nodes()
    for name in ("CLIFContrastiveTraining", "CLIFDecoderTraining", "CLIFTrainConcepts", "CLIFLossPlot"):
        node = comfy_server.object_info(name)
        assert node["category"] == "CLIF/train"
        assert [*node["input"]["required"], *node["input"].get("optional", {})] == docs[name]["inputs"], name
        assert list(node["output_name"]) == docs[name]["outputs"], name


def train_graph(dataset: str, run_name: str, stage1_steps: int, stage2_steps: int, batch: int = 2) -> dict:
    return {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": "checkpoints/tiny_sd1.safetensors"}},
        "2": {"class_type": "CLIFTrainConcepts", "inputs": {
            "clif_base": ["1", 0], "dataset": dataset, "clip_vision": "tiny_l.safetensors", "run_name": run_name,
            "restart": False, "stage1_steps": stage1_steps, "stage2_steps": stage2_steps, "stage1_batch_size": batch,
            "stage2_batch_size": batch, "lora_rank": 2, "preview_every": 2, "preview_steps": 2,
            "checkpoint_every": 1000}},
        "3": {"class_type": "CLIFLossPlot", "inputs": {"run_dir": ["2", 2]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"loss/{run_name}"}},
    }


def test_train_concepts_graph_writes_a_concept_file(comfy_server, installed, tiny_sd1):
    log_start = comfy_server.log_size()
    entry = comfy_server.run(train_graph(installed["small"], "graph", 3, 3), timeout=300)
    run = comfy_server.output_dir / "clif_runs" / "graph"
    cf = load_concept_file(run / "stage2" / "concepts.safetensors", base=load_base_model(tiny_sd1.single_file))
    assert [c.token for c in cf.concepts] == ["<alice>", "<bob>"] and cf.unet_lora
    assert cf.metadata["stage1"]["paired_encoder"] == "clip_l"
    # both stages' leakage previews (each concept alone, both together), drawn in the server with the trained model
    for stage in ("stage1", "stage2"):
        assert sorted(p.name for p in (run / stage / "previews").iterdir()) == ["step-000002.png"], stage
    with Image.open(run / "stage2" / "previews" / "step-000002.png") as im:
        assert im.width == 48 + 3 * 66 + 2  # three 64 px cells and the row label
    assert cf.thumbnail is not None
    report = entry["outputs"]["2"]["text"][0]
    assert str(run / "stage2" / "concepts.safetensors") in report and "concept_cosine" in report
    [plot] = comfy_server.output_files(entry)
    with Image.open(plot) as im:
        assert im.size == (768, 640)  # one panel per stage
    # Loss Plot's run_dir is linked here: its fingerprint gets no folder and must not fail on that.
    assert "PathLike" not in comfy_server.log_text(log_start), comfy_server.log_tail(start=log_start)


def test_cancel_stops_within_one_step_writes_nothing_and_the_run_resumes(comfy_server, installed):
    run = comfy_server.output_dir / "clif_runs" / "cancel"
    graph = train_graph(installed["big"], "cancel", 1, 500, batch=4)  # 64 px: steps slow enough to time
    del graph["3"], graph["4"]
    ws, seen = progress_listener(comfy_server, "2")
    try:
        prompt_id = comfy_server.submit(graph)
        deadline = time.monotonic() + 240
        while not any(v >= 3 for v in seen):  # stage 1 (1 step) and two steps of stage 2 are done
            assert time.monotonic() < deadline, "no training progress arrived"
            time.sleep(0.01)
        at_interrupt = max(seen)
        comfy_server.interrupt(prompt_id)
        with pytest.raises(ExecutionInterrupted):
            comfy_server.wait(prompt_id, timeout=120)
    finally:
        ws.close()
    saved = list_checkpoints(run / "stage2" / "checkpoints")
    assert saved, "the finished steps were not kept"
    stopped_at = 1 + saved[-1][0]  # progress counts stage 1's step too
    assert at_interrupt <= stopped_at <= at_interrupt + 1, (at_interrupt, stopped_at)
    assert not (run / "stage2" / "concepts.safetensors").exists()
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]

    # The server goes on: the same run, queued again with a few more steps, resumes and finishes.
    graph["2"]["inputs"]["stage2_steps"] = saved[-1][0] + 2
    entry = comfy_server.run(graph, timeout=300)
    assert "resuming" not in entry["outputs"]["2"]["text"][0]  # the report is the result, not the log
    cf = load_concept_file(run / "stage2" / "concepts.safetensors")
    assert cf.recipe["stage2"]["config"]["loop"]["steps"] == saved[-1][0] + 2
    assert "stage 2 (decoder): resuming from step" in comfy_server.log_text()
