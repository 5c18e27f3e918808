"""Alignment and prediction metrics against scipy, plain float64 references and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import rel_entr, softmax
from scipy.stats import kendalltau, spearmanr

import xkd.metrics as M


def maps(n: int = 6, hw: int = 8, seed: int = 0, decimals: int | None = None):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 1, hw, hw, generator=g)
    b = 0.5 * a + torch.rand(n, 1, hw, hw, generator=g)
    if decimals is not None:  # many ties, including a zero plateau as in ReLU'd Grad-CAM maps
        a = torch.clamp(torch.round(a * 10**decimals) / 10**decimals - 0.3, min=0)
        b = torch.clamp(torch.round(b * 10**decimals) / 10**decimals - 0.4, min=0)
    return a, b


@pytest.mark.parametrize("decimals", [None, 1])
def test_spearman_and_kendall_match_scipy(decimals):
    a, b = maps(decimals=decimals)
    rho = M.spearman(a, b).values
    tau = M.kendall(a, b, size=None).values
    for n in range(a.shape[0]):
        x, y = a[n].double().numpy().ravel(), b[n].double().numpy().ravel()
        assert float(rho[n]) == pytest.approx(spearmanr(x, y).statistic, abs=1e-10)
        assert float(tau[n]) == pytest.approx(kendalltau(x, y, variant="b").statistic, abs=1e-10)
    rho_abs = M.spearman(a - 0.5, b, absolute=True).values
    ref = spearmanr(np.abs(a[0].double().numpy().ravel() - 0.5), b[0].double().numpy().ravel())
    assert float(rho_abs[0]) == pytest.approx(ref.statistic, abs=1e-10)


def test_rank_correlations_of_constant_maps_are_nan_and_pooling_is_applied():
    a, b = maps()
    a[1] = 0.0
    assert math.isnan(float(M.spearman(a, b).values[1])) and M.spearman(a, b).n_nan == 1
    assert math.isnan(float(M.kendall(a, b).values[1]))
    pooled = M.kendall(a[:1], b[:1], size=4).values
    pa, pb = F.adaptive_avg_pool2d(a[:1].double(), 4), F.adaptive_avg_pool2d(b[:1].double(), 4)
    ref = kendalltau(pa.numpy().ravel(), pb.numpy().ravel()).statistic
    assert float(pooled[0]) == pytest.approx(ref, abs=1e-10)


def test_cosine_matches_numpy_and_zero_map_gives_zero():
    a, b = maps()
    a[2] = 0.0
    res = M.cosine(a, b)
    for n in range(a.shape[0]):
        x, y = a[n].double().numpy().ravel(), b[n].double().numpy().ravel()
        ref = 0.0 if n == 2 else x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
        assert float(res.values[n]) == pytest.approx(ref, abs=1e-12)
    assert res.extras["zero_map"].tolist() == [False, False, True, False, False, False]
    # a coarser second map is resized bilinearly to the first map's size
    small = F.avg_pool2d(b, 2)
    up = F.interpolate(small.double(), size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(M.cosine(a, small).values, M.cosine(a, up).values)


def ssim_plain(x: np.ndarray, y: np.ndarray, win: int = 11, sigma: float = 1.5) -> float:
    """Wang et al. SSIM: Gaussian window, valid positions, min-max maps, L = 1 (float64 loops)."""
    def mm(m):
        return (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)
    x, y = mm(x), mm(y)
    h, w = x.shape
    win = min(win, h, w)
    win -= 1 - win % 2
    r = np.arange(win) - (win - 1) / 2
    g = np.exp(-r**2 / (2 * sigma**2))
    g = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(h - win + 1):
        for j in range(w - win + 1):
            px, py = x[i:i + win, j:j + win], y[i:i + win, j:j + win]
            mx, my = (g * px).sum(), (g * py).sum()
            vx, vy = (g * (px - mx) ** 2).sum(), (g * (py - my) ** 2).sum()
            cxy = (g * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


@pytest.mark.parametrize("hw", [16, 8])
def test_ssim_matches_plain_reference(hw):
    a, b = maps(n=3, hw=hw, seed=2)
    got = M.ssim(a, b).values
    for n in range(3):
        assert float(got[n]) == pytest.approx(ssim_plain(a[n, 0].double().numpy(), b[n, 0].double().numpy()),
                                               abs=1e-10)
    assert torch.allclose(M.ssim(a, a).values, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(M.ssim(a, 3 * a + 1).values, torch.ones(3, dtype=torch.float64))  # min-max


def test_ssim_hand_worked_inverse_spike():
    # 3x3 maps: the window shrinks to 3; a = centre spike, b = 1 - a.
    a = torch.zeros(1, 1, 3, 3)
    a[0, 0, 1, 1] = 1.0
    g1 = 1.0 / (1.0 + 2.0 * math.exp(-1.0 / (2 * 1.5**2)))
    wc = g1 * g1  # Gaussian weight of the centre
    v = wc * (1 - wc)  # variance of each map; covariance is -v; means wc and 1 - wc
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * wc * (1 - wc) + c1) * (-2 * v + c2) / ((wc**2 + (1 - wc) ** 2 + c1) * (2 * v + c2))
    assert float(M.ssim(a, 1 - a).values) == pytest.approx(expected, abs=1e-12)


def test_topk_iou_matches_sets_and_ties_use_expectation():
    a, b = maps(n=4, hw=8, seed=3)
    ks = [0.05, 0.25, 0.5]
    res = M.topk_iou(a, b, k_fractions=ks)
    for n in range(4):
        oa = np.argsort(-a[n].numpy().ravel())
        ob = np.argsort(-b[n].numpy().ravel())
        for j, f in enumerate(ks):
            k = max(1, round(f * 64))
            sa, sb = set(oa[:k]), set(ob[:k])
            assert float(res.curves[n, j]) == pytest.approx(len(sa & sb) / len(sa | sb), abs=1e-12)
    assert torch.allclose(res.values, res.curves.mean(1))
    assert res.curve_x.tolist() == ks
    z = torch.zeros(1, 1, 8, 8)
    k = round(0.25 * 64)
    expected = (k * k / 64) / (2 * k - k * k / 64)  # chance level, not 1 from index-order ties
    assert float(M.topk_iou(z, z, k_fractions=[0.25]).values) == pytest.approx(expected)
    assert torch.allclose(M.topk_iou(a, a, k_fractions=[0.25]).values, torch.ones(4, dtype=torch.float64))


def test_prediction_agreement_and_kl_match_scipy():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    t[0] = s[0] * 2  # same argmax
    agree = M.agreement(s, t).values
    assert agree.tolist() == (s.argmax(1) == t.argmax(1)).double().tolist() and agree[0] == 1
    for temp in (1.0, 4.0):
        kl = M.kl_divergence(s, t, temperature=temp).values
        ref = rel_entr(softmax(t.double().numpy() / temp, 1), softmax(s.double().numpy() / temp, 1)).sum(1)
        np.testing.assert_allclose(kl.numpy(), ref, atol=1e-12)
    assert torch.allclose(M.kl_divergence(s, s).values, torch.zeros(5, dtype=torch.float64))
