"""cGAN-KD M2: per-class CE quantile filter, absolute-error filter and relabelling on hand-made
fixtures (cutoffs checked against numpy's linear-interpolation quantile)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from xkd.gan.config import FilterConfig
from xkd.gan.filtering import filter_classification, filter_regression
from xkd.config import _error_from_validation
from xkd.errors import ConfigError


def _two_class_logits(p_true: list[float], labels: list[int]) -> torch.Tensor:
    """Logits whose softmax gives probability p to the assigned label: CE = -log p exactly."""
    rows = []
    for p, y in zip(p_true, labels):
        row = [math.log(1 - p), math.log(1 - p)]
        row[y] = math.log(p)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


P = [0.9, 0.3, 0.8, 0.6, 0.5, 0.2, 0.9, 0.1]
Y = [0, 1, 0, 1, 0, 0, 1, 0]
# class 0: rows 0,2,4,5,7 with CE -log(.9,.8,.5,.2,.1) = .105,.223,.693,1.609,2.303
# class 1: rows 1,3,6     with CE -log(.3,.6,.9)      = 1.204,.511,.105


@pytest.mark.parametrize("q, expected", [
    # median: class 0 cutoff .693 -> rows 0,2,4; class 1 cutoff .511 -> rows 3,6
    (0.5, [0, 2, 4, 3, 6]),
    # q=.6: class 0 position 2.4 -> .693 + .4 (1.609 - .693) = 1.06 -> rows 0,2,4;
    #       class 1 position 1.2 -> .511 + .2 (1.204 - .511) = .650 -> rows 3,6
    (0.6, [0, 2, 4, 3, 6]),
    # q=.75: class 0 position 3 -> 1.609 (inclusive) -> rows 0,2,4,5; class 1 position 1.5 -> .857
    (0.75, [0, 2, 4, 5, 3, 6]),
    (1.0, list(range(8))),
    # a tiny quantile keeps only each class's best sample (position ~0 -> the minimum)
    (1e-9, [0, 6]),
])
def test_classification_keeps_the_hand_worked_set(q: float, expected: list[int]) -> None:
    keep = filter_classification(_two_class_logits(P, Y), torch.tensor(Y), q)
    assert keep.dtype == torch.bool
    assert sorted(keep.nonzero().flatten().tolist()) == sorted(expected)


def test_classification_cutoff_matches_numpy_per_class() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(5, (300,), generator=g)
    keep = filter_classification(logits, labels, 0.8)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none").numpy()
    for c in range(5):
        rows = labels.numpy() == c
        cut = np.quantile(ce[rows], 0.8)  # numpy's default is linear interpolation too
        np.testing.assert_array_equal(keep.numpy()[rows], ce[rows] <= cut)


def test_regression_filter_and_relabel_hand_worked() -> None:
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    labels = torch.tensor([1.1, 2.5, 2.0, 4.0, 9.0])
    # errors .1 .5 1 0 4 -> sorted 0 .1 .5 1 4 -> median .5 -> keep rows 0, 1, 3
    keep, new = filter_regression(pred, labels, 0.5, relabel=True)
    assert keep.tolist() == [True, True, False, True, False]
    assert torch.allclose(new, torch.tensor([1.0, 2.0, 2.0, 4.0, 9.0]))
    keep2, same = filter_regression(pred, labels, 0.5, relabel=False)
    assert keep2.tolist() == keep.tolist() and torch.equal(same, labels)
    # q = .7: position 2.8 -> .5 + .8 (1 - .5) = .9 -> still rows 0, 1, 3; q = .8 -> 1.0 keeps row 2
    assert filter_regression(pred, labels, 0.7, relabel=False)[0].tolist() == keep.tolist()
    assert filter_regression(pred, labels, 0.8, relabel=False)[0].tolist() == [True, True, True, True, False]


def test_regression_clip_applies_before_error_and_relabel() -> None:
    pred = torch.tensor([1.4, 0.5, -0.3])
    labels = torch.tensor([1.0, 0.9, 0.0])
    # clipped to [0, 1]: 1.0, .5, 0.0 -> errors 0, .4, 0 -> median 0 -> keep rows 0 and 2
    keep, new = filter_regression(pred, labels, 0.5, relabel=True, clip=(0.0, 1.0))
    assert keep.tolist() == [True, False, True]
    assert torch.allclose(new, torch.tensor([1.0, 0.9, 0.0]))


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5, float("nan")])
def test_bad_quantile_is_one_config_error_line(q: float) -> None:
    with pytest.raises(ConfigError) as e:
        filter_classification(torch.zeros(2, 2), torch.tensor([0, 1]), q)
    assert "\n" not in str(e.value) and "(0, 1]" in str(e.value) and "quantile" in str(e.value)
    with pytest.raises(ConfigError):
        filter_regression(torch.zeros(2), torch.zeros(2), q, relabel=True)
    with pytest.raises(ValidationError) as v:
        FilterConfig(quantile=q)
    msg = str(_error_from_validation(v.value, "cgan.filter"))
    assert msg.startswith("cgan.filter.quantile:") and "(0, 1]" in msg and "\n" not in msg
