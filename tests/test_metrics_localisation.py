"""Localisation metrics: hand-worked 4x4 cases, edge cases, and plain per-sample references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import xkd.metrics as M

RAMP = torch.arange(16.0).view(1, 1, 4, 4)  # value = 4*row + col


def mask_of(*pixels: tuple[int, int], size: int = 4) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    for r, c in pixels:
        m[0, 0, r, c] = 1.0
    return m


TOP_LEFT = mask_of((0, 0), (0, 1), (1, 0), (1, 1))


def test_hand_worked_mass_metrics():
    # EPG: (0 + 1 + 4 + 5) / (0 + ... + 15) = 10 / 120
    assert float(M.energy_pointing_game(RAMP, TOP_LEFT).values) == pytest.approx(10 / 120)
    signed = RAMP - 6  # values -6..9
    # RMA uses |a|: (6 + 5 + 2 + 1) / sum |v - 6| = 14 / 66
    assert float(M.relevance_mass_accuracy(signed, TOP_LEFT).values) == pytest.approx(14 / 66)
    # EPG uses the positive part: nothing positive inside the mask -> 0, and it is not flagged
    epg = M.energy_pointing_game(signed, TOP_LEFT)
    assert float(epg.values) == 0.0 and not bool(epg.extras["zero_map"])
    bottom_right = mask_of((2, 2), (2, 3), (3, 2), (3, 3))
    assert float(M.energy_pointing_game(RAMP, bottom_right).values) == pytest.approx(50 / 120)


def test_hand_worked_rank_metrics():
    # top-4 of the ramp is the bottom row
    assert float(M.relevance_rank_accuracy(RAMP, TOP_LEFT).values) == 0.0
    assert float(M.relevance_rank_accuracy(RAMP, mask_of(*[(3, c) for c in range(4)])).values) == 1.0
    mixed = mask_of((3, 3), (0, 0), (0, 1), (0, 2))
    assert float(M.relevance_rank_accuracy(RAMP, mixed).values) == pytest.approx(0.25)
    bottom_right = mask_of((2, 2), (2, 3), (3, 2), (3, 3))
    # k = 0.25 * 16 = 4: top-4 {12,13,14,15} and the mask share {14, 15}
    assert float(M.top_k_intersection(RAMP, bottom_right, k_fraction=0.25).values) == pytest.approx(0.5)
    # k = round(0.125 * 16) = 2: {14, 15}, both inside
    assert float(M.top_k_intersection(RAMP, bottom_right, k_fraction=0.125).values) == 1.0


def test_hand_worked_pointing_game_tolerance():
    corner = mask_of((0, 0))  # the maximiser (3,3) is at distance sqrt(18) = 4.243
    assert float(M.pointing_game(RAMP, corner, tolerance=4.0).values) == 0.0
    assert float(M.pointing_game(RAMP, corner, tolerance=4.3).values) == 1.0
    assert float(M.pointing_game(RAMP, mask_of((3, 3)), tolerance=0).values) == 1.0
    assert float(M.pointing_game(RAMP, mask_of((3, 2)), tolerance=0).values) == 0.0
    assert float(M.pointing_game(RAMP, mask_of((3, 1)), tolerance=2.0).values) == 1.0  # closed disc
    assert float(M.pointing_game(RAMP, mask_of((3, 1)), tolerance=1.9).values) == 0.0


def test_ties_are_resolved_in_expectation():
    two_max = torch.zeros(1, 1, 4, 4)
    two_max[0, 0, 0, 0] = two_max[0, 0, 3, 3] = 1.0
    assert float(M.pointing_game(two_max, mask_of((0, 0)), tolerance=0).values) == 0.5
    # K = 2: the 3 is in; one slot left for three tied 2's, one of them in the mask: (1 + 1/3) / 2
    a = torch.tensor([3.0, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).view(1, 1, 4, 4)
    m = mask_of((0, 0), (0, 2))
    assert float(M.relevance_rank_accuracy(a, m).values) == pytest.approx(2 / 3)
    uniform = M.uniform_attribution((1, 1, 4, 4))
    chance = 4 / 16
    for fn in (M.relevance_rank_accuracy, M.energy_pointing_game, M.relevance_mass_accuracy):
        assert float(fn(uniform, TOP_LEFT).values) == pytest.approx(chance)
    assert float(M.top_k_intersection(uniform, TOP_LEFT, k_fraction=0.5).values) == pytest.approx(chance)
    assert float(M.pointing_game(uniform, TOP_LEFT, tolerance=0).values) == pytest.approx(chance)


@pytest.mark.parametrize("name", ["pointing_game", "energy_pointing_game", "relevance_mass_accuracy",
                                  "relevance_rank_accuracy", "top_k_intersection"])
def test_empty_mask_is_nan_and_zero_map_is_zero(name):
    metric = M.METRICS.build(name)
    maps = torch.cat([RAMP, torch.zeros(1, 1, 4, 4), RAMP])
    masks = torch.cat([torch.zeros(1, 1, 4, 4), TOP_LEFT, mask_of((3, 3))])
    res = metric.compute(attribution=maps, mask=masks)
    assert math.isnan(float(res.values[0])) and res.n_nan == 1
    assert res.extras["empty_mask"].tolist() == [True, False, False]
    assert float(res.values[1]) == 0.0 and res.extras["zero_map"].tolist() == [False, True, False]
    assert float(res.values[2]) > 0
    assert res.mean() == pytest.approx(float(res.values[1:].mean()))
    assert metric.higher_is_better and metric.category == "localisation"


def plain_reference(a: np.ndarray, m: np.ndarray, tol: float, k: int) -> dict[str, float]:
    """Per-sample numpy versions on a tie-free map."""
    h, w = a.shape
    r, c = divmod(int(np.argmax(a)), w)
    d2 = min((r - i) ** 2 + (c - j) ** 2 for i, j in zip(*np.nonzero(m)))
    order = np.argsort(-a.ravel())
    K = int(m.sum())
    pos = np.clip(a, 0, None)
    return {
        "pointing_game": float(d2 <= tol**2),
        "energy_pointing_game": pos[m > 0].sum() / pos.sum(),
        "relevance_mass_accuracy": np.abs(a)[m > 0].sum() / np.abs(a).sum(),
        "relevance_rank_accuracy": m.ravel()[order[:K]].sum() / K,
        "top_k_intersection": m.ravel()[order[:k]].sum() / k,
    }


def test_batched_equals_plain_reference_on_random_maps():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 1, 16, 16, generator=g)
    m = (torch.rand(12, 1, 16, 16, generator=g) > 0.97).float()
    m[:, 0, 5:7, 4:8] = 1.0
    tol, frac = 1.5, 0.1
    k = round(frac * 256)
    got = {
        "pointing_game": M.pointing_game(a, m, tolerance=tol).values,
        "energy_pointing_game": M.energy_pointing_game(a, m).values,
        "relevance_mass_accuracy": M.relevance_mass_accuracy(a, m).values,
        "relevance_rank_accuracy": M.relevance_rank_accuracy(a, m).values,
        "top_k_intersection": M.top_k_intersection(a, m, k_fraction=frac).values,
    }
    assert 0 < float(got["pointing_game"].mean()) < 1  # both outcomes occur
    for n in range(12):
        ref = plain_reference(a[n, 0].double().numpy(), m[n, 0].numpy(), tol, k)
        for name, val in ref.items():
            assert float(got[name][n]) == pytest.approx(val, abs=1e-12), name


def test_mask_shape_mismatch_is_a_user_error():
    from xkd.errors import UserError
    with pytest.raises(UserError, match="mask shape"):
        M.pointing_game(RAMP, torch.zeros(1, 1, 3, 3))
