"""The shared losses: InfoNCE (with hard negatives) and the min-SNR weights, against their definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from clif_core.training.losses import info_nce, min_snr_weight


def _features(n: int, width: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def test_info_nce_with_hard_negatives_is_the_textbook_loss_over_captions_and_negatives():
    image, text, negatives = _features(4, seed=1), _features(4, seed=2), _features(4, seed=3)
    scale = torch.tensor(20.0)
    i, t, n = (F.normalize(x, dim=-1) for x in (image, text, negatives))
    target = torch.arange(4)
    expected = 0.5 * (F.cross_entropy(scale * i @ torch.cat([t, n]).T, target) + F.cross_entropy(scale * t @ i.T, target))
    got = info_nce(image, text, ["a", "b", "c", "d"], scale, negatives=negatives)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # a negative that matches its image better than the caption raises the loss; the text → image side ignores it
    worse = info_nce(image, text, ["a", "b", "c", "d"], scale, negatives=image.clone())
    assert worse > got


def test_info_nce_hard_negatives_leave_duplicate_captions_positives():
    image = torch.eye(3, 8)
    text = torch.stack([image[0], image[0], image[2]])  # captions 0 and 1 are the same caption
    far = -image.sum(dim=0, keepdim=True).repeat(3, 1)  # cosine -0.58 with every image: no competition
    plain = info_nce(image, text, ["x", "x", "y"], torch.tensor(50.0))
    with_far_negatives = info_nce(image, text, ["x", "x", "y"], torch.tensor(50.0), negatives=far)
    assert with_far_negatives.item() == pytest.approx(plain.item(), abs=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weight_matches_its_definition(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    t = torch.tensor([0, 10, 200, 500, 999])
    alphas = scheduler.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    capped = snr.clamp(max=5.0)
    expected = {"epsilon": capped / snr, "v_prediction": capped / (snr + 1), "sample": capped}[prediction_type]
    torch.testing.assert_close(min_snr_weight(scheduler, t, 5.0, prediction_type), expected, rtol=1e-4, atol=1e-6)
    assert min_snr_weight(scheduler, t[-1:], 5.0, "epsilon").item() == pytest.approx(1.0)  # low SNR: uncapped
