"""The erasure objectives and the weight-delta → LoRA factorisation, on plain tensors."""

from __future__ import annotations

import torch

from clif_core.concepts import lora_keys
from clif_core.erase import objectives
from clif_core.erase.subsets import lora_deltas, lora_from_deltas


def _g(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_target_guidance_goes_to_the_alternative_or_to_zero_or_away():
    null, target, alt = _g(0, 3, 4, 2, 2), _g(1, 3, 4, 2, 2), _g(2, 3, 4, 2, 2)
    has_alt = torch.tensor([True, False, False])
    goal = objectives.target_guidance(null, target, alt, has_alt, eta=0.5, negative_eta=0.0)
    assert torch.allclose(goal[0], 0.5 * (alt[0] - null[0]))
    assert torch.equal(goal[1:], torch.zeros_like(goal[1:]))
    away = objectives.target_guidance(null, target, alt, has_alt, eta=0.5, negative_eta=2.0)
    assert torch.allclose(away[1:], -2.0 * (target[1:] - null[1:]))


def test_all_but_one_is_zero_exactly_at_its_goal_and_weighs_the_unconditional_hold():
    null, goal = _g(0, 2, 4, 3, 3), _g(1, 2, 4, 3, 3)
    loss, parts = objectives.all_but_one_loss(null + goal, null, null, goal, lam=3.0)
    assert loss.item() < 1e-12  # (null + goal) − null rounds
    drift = _g(2, 2, 4, 3, 3) * 0.1
    loss, parts = objectives.all_but_one_loss(null + drift + goal, null + drift, null, goal, lam=3.0)
    assert torch.isclose(parts["guidance"], torch.tensor(0.0), atol=1e-7)
    assert torch.isclose(loss, 3.0 * drift.square().mean())


def test_esd_pulls_the_concept_to_negative_guidance():
    null, target = _g(0, 2, 4, 3, 3), _g(1, 2, 4, 3, 3)
    goal = null - 1.5 * (target - null)
    loss, _ = objectives.esd_loss(goal, null, target, eta=1.5)
    assert loss.item() == 0.0
    loss, _ = objectives.esd_loss(target, null, target, eta=1.5)
    assert torch.isclose(loss, (2.5 * (target - null)).square().mean())


def test_svd_factorisation_is_exact_at_zero_tolerance_for_linear_and_conv_deltas():
    deltas = {
        "lora_unet_a_to_k": _g(0, 12, 8),
        "lora_unet_b_conv1": _g(1, 6, 4, 3, 3),
        "lora_unet_c_to_v": torch.zeros(5, 5),  # unchanged: left out
    }
    lora, stats = lora_from_deltas(deltas, tolerance=0.0)
    assert lora_keys.lora_modules(lora) == ["lora_unet_a_to_k", "lora_unet_b_conv1"]
    lora_keys.check_lora_structure(lora, "test")
    assert lora["lora_unet_b_conv1.lora_down.weight"].shape == (6, 4, 3, 3)
    assert lora["lora_unet_b_conv1.lora_up.weight"].shape == (6, 6, 1, 1)
    for module, delta in lora_deltas(lora):
        assert torch.allclose(delta, deltas[module], atol=1e-5)
    assert stats["max_relative_error"] < 1e-6 and stats["rank_max"] == 8


def test_svd_factorisation_keeps_the_smallest_rank_within_tolerance():
    low = _g(0, 40, 3) @ _g(1, 3, 30)  # rank 3
    noisy = low + 0.01 * _g(2, 40, 30)
    lora, stats = lora_from_deltas({"lora_unet_m_to_k": noisy}, tolerance=0.05)
    assert lora["lora_unet_m_to_k.lora_down.weight"].shape[0] == 3
    [(_, approx)] = list(lora_deltas(lora))
    assert (approx - noisy).norm() / noisy.norm() <= 0.05
    assert abs(stats["max_relative_error"] - float((approx - noisy).norm() / noisy.norm())) < 1e-4
    capped, stats = lora_from_deltas({"lora_unet_m_to_k": noisy}, tolerance=0.0, max_rank=2)
    assert capped["lora_unet_m_to_k.lora_down.weight"].shape[0] == 2 and stats["max_relative_error"] > 0.05
