"""KD loss, HCL and saliency-weighted HCL against hand-worked values and independent formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xkd.losses import hcl, kd_loss, task_loss, warmup_factor, weighted_hcl
from xkd.distill.reviewkd.weights import level_weights, normalised_entropy, resize_map


def _np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_kd_loss_matches_numpy_hand_computation():
    s = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    t = np.array([[2.0, 0.0, 1.0], [0.0, 0.0, 4.0]])
    T = 2.0
    p_s, p_t = _np_softmax(s / T), _np_softmax(t / T)
    # KL(p_t || p_s) per row, mean over the 2 rows ("batchmean"), times T^2
    expected = T * T * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    got = kd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), T)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_single_row_by_hand():
    # T = 1, s = [0, 0] -> p_s = [.5, .5]; t = [log 3, 0] -> p_t = [.75, .25]
    # KL = .75 ln(.75/.5) + .25 ln(.25/.5) = .75 ln 1.5 - .25 ln 2
    expected = 0.75 * math.log(1.5) - 0.25 * math.log(2.0)
    got = kd_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), 1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]]), 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_sample_weights_leave_out_missing_teacher_inputs():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    present = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # weighted mean over the present rows == the plain batchmean of those rows alone
    assert kd_loss(s, t, 3.0, present).item() == pytest.approx(kd_loss(s[[0, 2]], t[[0, 2]], 3.0).item(), rel=1e-6)
    assert kd_loss(s, t, 3.0, torch.ones(4)).item() == pytest.approx(kd_loss(s, t, 3.0).item(), rel=1e-6)
    assert kd_loss(s, t, 3.0, torch.zeros(4)).item() == 0.0


def test_kd_distiller_skips_clips_without_audio_in_the_kd_term():
    from xkd.distill import DistillContext, build_distiller

    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(6, 3), torch.nn.Linear(5, 3)
    ctx = DistillContext(example=torch.zeros(1, 6), num_classes=3,
                         extras={"student_key": "video", "teacher_key": "audio"})
    d = build_distiller("kd", student, teacher, {"T": 2.0, "alpha": 1.0}, ctx)
    batch = {"video": torch.randn(4, 6), "audio": torch.randn(4, 5), "label": torch.tensor([0, 1, 2, 0]),
             "audio_mask": torch.tensor([1.0, 1.0, 0.0, 0.0])}
    got = d(batch, 0).losses["kd"]
    with torch.no_grad():
        expected = kd_loss(student(batch["video"][:2]), teacher(batch["audio"][:2]), 2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_task_loss_regression_uses_mse_or_l1():
    out = torch.tensor([[1.0], [3.0]])
    y = torch.tensor([0.0, 1.0])
    assert task_loss(out, y, "regression").item() == pytest.approx((1 + 4) / 2)
    assert task_loss(out, y, "regression", "l1").item() == pytest.approx((1 + 2) / 2)


def _pool(x: np.ndarray, size: int) -> np.ndarray:
    """Average pooling by reshaping (exact when size divides h and w)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def _plain_hcl(u: np.ndarray, t: np.ndarray) -> float:
    """The ReviewKD table (notes 1.4): h >= 5: 1, 1/2, 1/4, 1/8 (full, 4, 2, 1); h in 3..4:
    1, 1/2, 1/4 (full, 2, 1); h = 2: 1, 1/2 (full, 1); h = 1: full only."""
    h = u.shape[2]
    table = {1: [(0, 1.0)], 2: [(0, 1.0), (1, 0.5)], 4: [(0, 1.0), (2, 0.5), (1, 0.25)],
             8: [(0, 1.0), (4, 0.5), (2, 0.25), (1, 0.125)]}[h]
    num = 0.0
    for size, w in table:
        a, b = (u, t) if size == 0 else (_pool(u, size), _pool(t, size))
        num += w * np.mean((a - b) ** 2)
    return num / sum(w for _, w in table)


@pytest.mark.parametrize("h", [1, 2, 4, 8])
def test_hcl_matches_per_level_formula(h):
    g = torch.Generator().manual_seed(h)
    u, t = torch.randn(3, 5, h, h, generator=g), torch.randn(3, 5, h, h, generator=g)
    assert hcl(u, t).item() == pytest.approx(_plain_hcl(u.numpy().astype(np.float64),
                                                        t.numpy().astype(np.float64)), rel=1e-5)


@pytest.mark.parametrize("h", [2, 4, 8])
def test_weighted_hcl_with_mix_zero_equals_plain(h):
    g = torch.Generator().manual_seed(10 + h)
    u, t = torch.randn(4, 6, h, h, generator=g), torch.randn(4, 6, h, h, generator=g)
    m = torch.rand(4, 1, 32, 32, generator=g) ** 4  # random, peaked maps
    w = level_weights(m, (h, h), mix=0.0)
    assert torch.equal(w, torch.ones_like(w))
    assert abs(weighted_hcl(u, t, w).item() - hcl(u, t).item()) < 1e-6


def test_constant_maps_give_plain_hcl_for_any_mix():
    g = torch.Generator().manual_seed(3)
    u, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    m = torch.full((2, 1, 32, 32), 0.37)
    for mix in (0.3, 1.0):
        w = level_weights(m, (8, 8), mix)
        assert torch.allclose(w, torch.ones_like(w), atol=1e-6)
        assert weighted_hcl(u, t, w).item() == pytest.approx(hcl(u, t).item(), rel=1e-6)


def test_weighted_hcl_hand_example_2x2():
    # U = [[1,0],[0,0]], T = 0 (1 channel): e = [[1,0],[0,0]]. h = 2: terms full (w 1) and 1x1
    # (w 1/2); norm 1.5. M = [[3,1],[0,0]] has mean 1, so W_hat = M.
    # mix 1: full = mean(W*e) = 3/4; pooled: P1 U = 1/4 -> e1 = 1/16, W1 = mean(W) = 1.
    #        total = (3/4 + 1/2 * 1/16) / 1.5 = 0.78125 / 1.5
    # mix .5: W = .5 + .5*M = [[2,1],[.5,.5]]; full = 2/4 = .5; total = (.5 + 1/32) / 1.5
    # plain: (1/4 + 1/32) / 1.5
    u = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    t = torch.zeros_like(u)
    m = torch.tensor([[[[3.0, 1.0], [0.0, 0.0]]]])
    assert weighted_hcl(u, t, level_weights(m, (2, 2), 1.0)).item() == pytest.approx(0.78125 / 1.5)
    assert weighted_hcl(u, t, level_weights(m, (2, 2), 0.5)).item() == pytest.approx(0.53125 / 1.5)
    assert hcl(u, t).item() == pytest.approx(0.28125 / 1.5)


def test_weighted_hcl_hand_example_4x4_from_8x8_map():
    # M (8x8) = 1 on its top-left 4x4 quadrant -> area-pooled to 4x4: 1 on the top-left 2x2, else 0;
    # mean 1/4 -> W_hat = 4 there, 0 elsewhere (mix 1).
    # U - T: channel 0 = 1 at (0,0), channel 1 = 1 at (3,3); e = mean_c = .5 at (0,0) and (3,3).
    # h = 4: terms full (1), 2x2 (1/2), 1x1 (1/4); the 4x4 pool is skipped (4 >= 4); norm 1.75.
    # full: (4 * .5) / 16 = .125
    # 2x2: block means .25 (ch0, block 00) and .25 (ch1, block 11) -> e2 = .0625/2 = .03125 at
    #      blocks 00 and 11; W2 = 4 at block 00 -> mean(W2*e2) = 4*.03125/4 = .03125
    # 1x1: means 1/16 per channel -> e1 = 1/256; W1 = 1 -> 1/256
    # total = (.125 + .5*.03125 + .25/256) / 1.75
    m = torch.zeros(1, 1, 8, 8)
    m[..., :4, :4] = 1.0
    w = level_weights(m, (4, 4), 1.0)
    expected_w = torch.zeros(1, 1, 4, 4)
    expected_w[..., :2, :2] = 4.0
    assert torch.allclose(w, expected_w)
    u, t = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)
    u[0, 0, 0, 0] = 1.0
    u[0, 1, 3, 3] = 1.0
    expected = (0.125 + 0.5 * 0.03125 + 0.25 / 256) / 1.75
    assert weighted_hcl(u, t, w).item() == pytest.approx(expected, rel=1e-6)


def test_all_zero_map_falls_back_to_uniform():
    m = torch.zeros(2, 1, 16, 16)
    m[1, 0, 3, 3] = 5.0
    w = level_weights(m, (4, 4), 0.8)
    assert torch.equal(w[0], torch.ones(1, 4, 4))
    assert w[1].mean().item() == pytest.approx(1.0, rel=1e-6) and w[1].max() > 1.5
    gated = level_weights(m, (4, 4), 0.8, uniform=torch.tensor([False, True]))
    assert torch.equal(gated[1], torch.ones(1, 4, 4))


def test_resize_map_is_area_pooling_when_shrinking():
    m = torch.arange(16.0).view(1, 1, 4, 4)
    got = resize_map(m, (2, 2))
    assert torch.equal(got, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_normalised_entropy_extremes():
    m = torch.zeros(3, 1, 4, 4)
    m[0] = 1.0                     # uniform -> 1
    m[1, 0, 2, 2] = 7.0            # one pixel -> 0
    m[2, 0, :2, :2] = 1.0          # 4 of 16 pixels -> log 4 / log 16 = .5
    ent = normalised_entropy(m)
    assert ent.tolist() == pytest.approx([1.0, 0.0, 0.5], abs=1e-6)


def test_warmup_factor_zero_indexed():
    assert warmup_factor(0, 20) == 0.0
    assert warmup_factor(10, 20) == 0.5
    assert warmup_factor(25, 20) == 1.0
    assert warmup_factor(0, 0) == 1.0
