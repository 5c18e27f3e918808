"""CcGAN pieces: rule-of-thumb sigma against numpy, kappa from label gaps, soft vicinal weights
against hand-computed values, vicinal batches' invariants, hinge losses, DiffAugment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xkd.gan.augment import colour, diff_augment, translate
from xkd.gan.losses import hinge_d_loss, hinge_g_loss
from xkd.gan.vicinal import (SOFT_THRESHOLD, kappa_from_gaps, rule_of_thumb_sigma,
                              sample_vicinal_batch, soft_weights, vicinity_radius)
from xkd.errors import UserError


def test_rule_of_thumb_matches_numpy() -> None:
    y = np.random.default_rng(0).random(777)
    want = 1.06 * np.std(y) * len(y) ** (-1 / 5)
    assert rule_of_thumb_sigma(torch.from_numpy(y).float()) == pytest.approx(want, rel=1e-6)
    # hand-worked: y = (0, 1): std .5, n^(-1/5) = 2^(-.2)
    assert rule_of_thumb_sigma(torch.tensor([0.0, 1.0])) == pytest.approx(1.06 * 0.5 * 2 ** -0.2)


def test_kappa_is_a_multiple_of_the_largest_gap() -> None:
    y = torch.tensor([0.0, 0.1, 0.1, 0.25, 0.3, 1.0, 0.3])  # distinct gaps .1 .15 .05 .7
    assert kappa_from_gaps(y, 5.0) == pytest.approx(3.5)
    assert kappa_from_gaps(y, 0.5) == pytest.approx(0.35)
    with pytest.raises(UserError, match="at least two distinct"):
        kappa_from_gaps(torch.ones(5), 5.0)


def test_soft_weights_hand_computed() -> None:
    # nu = 1 / kappa^2 with kappa = 0.5 -> nu = 4; d = .25 -> exp(-.25); d = .5 -> exp(-1)
    w = soft_weights(torch.tensor([0.5, 0.75, 0.0, 1.0]), torch.tensor(0.5), nu=4.0)
    assert torch.allclose(w, torch.tensor([1.0, math.exp(-0.25), math.exp(-1.0), math.exp(-1.0)]))
    assert vicinity_radius("hard", 0.2) == 0.2
    r = vicinity_radius("soft", 0.2)
    assert math.exp(-(r ** 2) / 0.2 ** 2) == pytest.approx(SOFT_THRESHOLD)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_vicinal_batch_invariants(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(200, generator=g)
    kappa, sigma = 0.05, 0.03
    b = sample_vicinal_batch(labels, 512, kind, kappa, sigma, g)
    assert ((b.target >= 0) & (b.target <= 1)).all()
    d_real = (labels[b.real_index] - b.target).abs()
    assert (d_real <= vicinity_radius(kind, kappa) + 1e-6).all()
    assert ((b.fake_labels - b.target).abs() <= kappa + 1e-6).all()
    assert ((b.fake_labels >= 0) & (b.fake_labels <= 1)).all()
    if kind == "hard":
        assert (b.w_real == 1).all() and (b.w_fake == 1).all()
    else:
        nu = 1 / kappa ** 2
        assert torch.allclose(b.w_real, torch.exp(-nu * d_real ** 2), atol=1e-6)
        assert torch.allclose(b.w_fake, torch.exp(-nu * (b.fake_labels - b.target) ** 2), atol=1e-6)
    # noise was added: targets are not just the real labels
    assert float((b.target[:, None] - labels[None]).abs().min(1).values.mean()) > 1e-3


def test_hinge_losses_hand_computed() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    lr, lf = hinge_d_loss(real, fake)
    assert float(lr) == pytest.approx((0 + 0.5 + 2) / 3) and float(lf) == pytest.approx((0 + 1 + 2) / 3)
    w = torch.tensor([1.0, 0.5, 0.0])
    lr, lf = hinge_d_loss(real, fake, w, w)
    # self-normalised: sum(w l) / sum(w) with sum(w) = 1.5
    assert float(lr) == pytest.approx(0.25 / 1.5) and float(lf) == pytest.approx(0.5 / 1.5)
    lr, _ = hinge_d_loss(real, fake, 10 * w, w)
    assert float(lr) == pytest.approx(0.25 / 1.5)  # invariant to the weights' scale
    assert float(hinge_g_loss(fake)) == pytest.approx(1 / 3)


def test_translate_shifts_with_zero_fill_and_is_differentiable() -> None:
    x = torch.arange(1, 2 * 3 * 8 * 8 + 1, dtype=torch.float32).view(2, 3, 8, 8).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    out = translate(x, g, ratio=0.25)
    g2 = torch.Generator().manual_seed(0)
    ty, tx = torch.randint(-2, 3, (2, 1), generator=g2), torch.randint(-2, 3, (2, 1), generator=g2)
    for i in range(2):
        dy, dx = int(ty[i]), int(tx[i])
        ref = torch.zeros(3, 8, 8)
        ys, xs = slice(max(dy, 0), 8 + min(dy, 0)), slice(max(dx, 0), 8 + min(dx, 0))
        ref[:, ys, xs] = x[i, :, max(-dy, 0): 8 - max(dy, 0), max(-dx, 0): 8 - max(dx, 0)].detach()
        assert torch.equal(out[i].detach(), ref)
    out.sum().backward()
    assert x.grad is not None and set(x.grad.unique().tolist()) <= {0.0, 1.0}


def test_colour_and_diff_augment_are_seeded_and_keep_shape() -> None:
    x = torch.randn(4, 3, 8, 8)
    a = diff_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, diff_augment(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, diff_augment(x, torch.Generator().manual_seed(2)))
    # a grey image (all channels equal, constant) only gets the brightness shift in [-.5, .5]
    c = colour(torch.zeros(5, 3, 4, 4), torch.Generator().manual_seed(0))
    assert (c.flatten(1).std(1) < 1e-6).all() and (c.abs() <= 0.5).all()
