"""Erasure runs on the tiny models: the loss falls, All-but-One holds the unconditional prediction better
than ESD on the same x_t, seeds and budget, guidance moves toward the alternative, the base is left as it
was, cancel + resume gives the uninterrupted result, patches round-trip bit-exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clif_core.concepts.apply import apply_concepts
from clif_core.concepts.files import load_concept_file, save_concept_file
from clif_core.erase.conditioning import NULL, encode_prompts, unet_predict
from clif_core.erase.config import EraseConfig, EraseTarget
from clif_core.erase.objectives import target_guidance
from clif_core.erase.patch import load_erasure_patch
from clif_core.erase.pool import load_pool, pool_key
from clif_core.erase.trainer import POOL_FILE, EraseTask, _pool_recipe, erase_concepts
from clif_core.errors import Cancelled, ClifError
from clif_core.progress import Reporter
from tests.helpers.erasure import RESOLUTION, tiny_config
from tests.helpers.weights import assert_unchanged, snapshot_module

pytestmark = pytest.mark.usefixtures("one_thread")  # module-scoped: the module fixtures run on one thread too


@pytest.fixture(scope="module")
def base(tiny_sd1):
    from clif_core.models.loader import load_base_model

    return load_base_model(tiny_sd1.diffusers_dir, device="cpu")


def run_pool(base, run_dir: Path, config: EraseConfig):
    table = encode_prompts(base, load_pool_prompts(run_dir), (RESOLUTION, RESOLUTION))
    pool = load_pool(run_dir / POOL_FILE, pool_key(_pool_recipe(base, config, RESOLUTION)))
    assert pool is not None
    return table, pool


def load_pool_prompts(run_dir: Path) -> list[str]:
    import json

    from safetensors import safe_open

    with safe_open(str(run_dir / POOL_FILE), framework="pt") as f:
        return json.loads(f.metadata()["prompts"])


@torch.no_grad()
def predictions(base, table, pool, rows: torch.Tensor) -> torch.Tensor:
    return unet_predict(base, table, pool.x, pool.t, rows)


@pytest.fixture(scope="module")
def compared(base, tmp_path_factory):
    """All-but-One and ESD on the same subset (the default LoRA), seeds and budget."""
    root = tmp_path_factory.mktemp("erase_compare")
    before = snapshot_module(base.unet)
    out = {}
    for method in ("all-but-one", "esd"):
        config = tiny_config(method, "lora")
        result = erase_concepts(base, config, root / method, root / f"{method}.safetensors")
        out[method] = (config, result, *run_pool(base, root / method, config))
    return out, before


def test_both_methods_train_on_the_same_x_t(compared):
    out, _ = compared
    (_, _, _, abo_pool), (_, _, _, esd_pool) = out["all-but-one"], out["esd"]
    for name, tensor in abo_pool.tensors().items():
        assert torch.equal(tensor, esd_pool.tensors()[name]), name


def test_the_objective_falls_on_the_whole_pool(base, compared):
    out, _ = compared
    for method, (config, result, table, pool) in out.items():
        task = EraseTask(base, config, table, pool, {}, RESOLUTION)
        batch = pool.select(range(len(pool)))
        with torch.no_grad():
            before = task.loss(batch).item()
            with apply_concepts(base, [(result.file, 1.0)]):
                after = task.loss(batch).item()
        assert after < 0.7 * before, (method, before, after)


def test_all_but_one_keeps_the_unconditional_prediction_closer_than_esd(base, compared):
    """The paper's central claim, as a norm over the fixed x_t of the pool."""
    out, _ = compared
    drift = {}
    for method, (_, result, table, pool) in out.items():
        null_rows = torch.full((len(pool),), NULL)
        with apply_concepts(base, [(result.file, 1.0)]):
            patched = predictions(base, table, pool, null_rows)
        drift[method] = float((patched - pool.eps_null).norm() / pool.eps_null.norm())
    assert drift["all-but-one"] < 0.5 * drift["esd"], drift
    assert out["all-but-one"][1].metrics["uncond_drift"] == pytest.approx(drift["all-but-one"], rel=1e-3)


def test_the_erased_guidance_moves_toward_the_alternative(base, compared):
    out, _ = compared
    config, result, table, pool = out["all-but-one"]
    rows = torch.cat([torch.full((len(pool),), NULL), pool.target])
    goal = target_guidance(pool.eps_null, pool.eps_target, pool.eps_alt, pool.alt >= 0, 1.0, 0.0)
    gap_before = (pool.eps_target - pool.eps_null - goal).norm()
    with apply_concepts(base, [(result.file, 1.0)]):
        null, target = unet_predict(base, table, pool.x.repeat(2, 1, 1, 1), pool.t.repeat(2), rows).chunk(2)
    gap_after = (target - null - goal).norm()
    assert gap_after < 0.8 * gap_before, (gap_before, gap_after)
    assert result.metrics["guidance_to_goal"] < 0.8


def test_base_model_is_left_exactly_as_it_was(base, compared):
    _, before = compared
    assert_unchanged(base.unet, before)


def test_patch_file_round_trips_bit_exactly(compared, tmp_path):
    out, _ = compared
    _, result, _, _ = out["all-but-one"]
    loaded = load_erasure_patch(result.path)
    assert loaded.kind == "erasure" and loaded.erased_pairs() == [("a photo of a pig", "a photo of a cow")]
    assert loaded.metadata == result.file.metadata and loaded.recipe == result.file.recipe
    assert sorted(loaded.unet_lora) == sorted(result.file.unet_lora)
    for key, value in result.file.unet_lora.items():
        assert loaded.unet_lora[key].dtype == value.dtype and torch.equal(loaded.unet_lora[key], value), key
    save_concept_file(loaded, tmp_path / "again.safetensors")
    again, original = split_safetensors(tmp_path / "again.safetensors"), split_safetensors(result.path)
    assert again == original  # same header entries (safetensors writes metadata in hash order) and same bytes
    assert loaded.metadata["method"] == "all-but-one" and loaded.metadata["steps"] == 20
    assert loaded.base_fingerprint and loaded.thumbnail is not None


def split_safetensors(path: Path) -> tuple[dict, bytes]:
    import json
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


class StopAt:
    def __init__(self, step: int):
        self.step, self.seen = step, 0

    def reporter(self) -> Reporter:
        def progress(step, total, preview=None):
            self.seen = step

        return Reporter(progress=progress, should_stop=lambda: self.seen >= self.step, log=lambda m: None)


def test_cancel_then_resume_gives_the_uninterrupted_patch_and_restores_the_base(base, tmp_path):
    """Weight subset (cross-attention K/V) with the SVD factorisation; checkpoints every 5 steps."""
    config = tiny_config("all-but-one", "kv", steps=12)
    straight = erase_concepts(base, config, tmp_path / "straight", tmp_path / "straight.safetensors")
    before = snapshot_module(base.unet)
    stop = StopAt(6 + 1 * 6)  # progress counts the 6 pool steps first: stop after 6 training steps
    with pytest.raises(Cancelled):
        erase_concepts(base, config, tmp_path / "cut", tmp_path / "cut.safetensors", reporter=stop.reporter())
    assert_unchanged(base.unet, before)
    assert not (tmp_path / "cut.safetensors").exists()
    resumed = erase_concepts(base, config, tmp_path / "cut", tmp_path / "cut.safetensors")
    assert resumed.train.resumed_from == 6
    assert_unchanged(base.unet, before)
    assert sorted(resumed.file.unet_lora) == sorted(straight.file.unet_lora)
    for key, value in straight.file.unet_lora.items():
        assert torch.equal(resumed.file.unet_lora[key], value), key
    assert resumed.file.metadata["patch"]["factorised"] is True
    assert resumed.file.metadata["patch"]["max_relative_error"] <= config.patch_tolerance + 1e-6


def test_several_concepts_with_preservation_in_one_run(base, tmp_path):
    targets = [EraseTarget("a photo of a pig", "a photo of a cow"), EraseTarget("van gogh")]
    config = tiny_config("all-but-one", "xattn", targets=targets, preserve=["a photo of a dog"], steps=6)
    result = erase_concepts(base, config, tmp_path / "run", tmp_path / "multi.safetensors")
    assert result.file.erased_pairs() == [("a photo of a pig", "a photo of a cow"), ("van gogh", None)]
    assert result.file.metadata["preserve"] == ["a photo of a dog"]
    assert "preserve_drift" in result.metrics
    report = result.report()  # the node's and the CLI's text: what the patch erases, where it is, the metrics
    assert "erases 'van gogh' (no alternative)" in report and "preserves 'a photo of a dog'" in report
    assert f"written to {tmp_path / 'multi.safetensors'}" in report and "preserve_drift: " in report
    table, pool = run_pool(base, tmp_path / "run", config)
    assert sorted(set(pool.concept.tolist())) == [0, 1] and (pool.keep == table.index("a photo of a dog")).all()
    assert set(pool.alt[pool.concept == 1].tolist()) == {-1}
    assert all(".attn2." in k or "attn2" in k for k in result.file.unet_lora)


def test_an_existing_patch_of_another_run_is_not_replaced(base, tmp_path):
    config = tiny_config("all-but-one", "lora", steps=2)
    path = tmp_path / "patch.safetensors"
    erase_concepts(base, config, tmp_path / "a", path)
    first = path.read_bytes()
    other = tiny_config("all-but-one", "lora", steps=2, eta=0.5)
    with pytest.raises(ClifError, match="not made by this run"):
        erase_concepts(base, other, tmp_path / "b", path)
    assert path.read_bytes() == first
    more = tiny_config("all-but-one", "lora", steps=3)  # the same run, continued: replacing is fine
    erase_concepts(base, more, tmp_path / "a", path)
    assert load_concept_file(path).metadata["steps"] == 3


def test_esd_u_patch_with_convolutions_applies_like_its_merged_delta(base, tmp_path):
    """ESD-u trains resnet convolutions too: their factorised LoRA (down keeps the kernel) must load through
    apply_concepts exactly as the plain delta adds into the weights."""
    from clif_core.erase.patch import merged

    result = erase_concepts(base, tiny_config("esd-u", "auto", steps=2), tmp_path / "run", tmp_path / "u.safetensors")
    modules = sorted({k.split(".", 1)[0] for k in result.file.unet_lora})
    assert any(m.endswith("_conv1") for m in modules) and not any("attn2" in m for m in modules)
    table = encode_prompts(base, ["", "a photo of a pig"], (RESOLUTION, RESOLUTION))
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t, rows = torch.tensor(400), torch.tensor([0, 1])
    with torch.no_grad():
        plain = unet_predict(base, table, x, t, rows)
        with apply_concepts(base, [(result.file, 1.0)]):
            applied = unet_predict(base, table, x, t, rows)
        with merged(base, result.file):
            added = unet_predict(base, table, x, t, rows)
    assert (applied - added).abs().max() < 1e-4 < (applied - plain).abs().max()


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_v_prediction_and_sdxl_models_erase_too(family, request, tmp_path):
    from clif_core.models.loader import load_base_model

    paths = request.getfixturevalue(f"tiny_{family}")
    model = load_base_model(paths.diffusers_dir, device="cpu")
    config = tiny_config("all-but-one", "lora", steps=3)
    config.sample_steps = 3
    result = erase_concepts(model, config, tmp_path / "run", tmp_path / "p.safetensors")
    loaded = load_erasure_patch(tmp_path / "p.safetensors", model)
    assert loaded.base_family == family and loaded.base_prediction_type == model.prediction_type
    assert result.metrics["uncond_drift"] >= 0
