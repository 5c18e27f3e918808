"""``digits`` with a Decoy-MNIST patch (Ross et al. 2017) and ``train_fraction`` (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from xkd.config import DataConfig
from xkd.data.digit_decoy import COLOURS, DigitDecoyParams
from xkd.data.digits import DigitsParams, digits

S, Q = 16, 2


def _bundle(seed: int = 0, channels: int = 1, **kw):
    p = DigitsParams(image_size=S, channels=channels, decoy={"size": Q, "probability": 0.9}, **kw)
    return digits(p, DataConfig(name="digits"), seed)


def _corners(images: torch.Tensor) -> torch.Tensor:
    """(N,4,C) colour of each corner patch (its top-left pixel) and (N,4) whether it is painted
    uniformly (every pixel equal and not background)."""
    sl = [(slice(0, Q), slice(0, Q)), (slice(0, Q), slice(S - Q, S)),
          (slice(S - Q, S), slice(0, Q)), (slice(S - Q, S), slice(S - Q, S))]
    return torch.stack([images[:, :, r, c].flatten(2) for r, c in sl], dim=1)  # (N,4,C,Q*Q)


def _patch_class(images: torch.Tensor) -> torch.Tensor:
    """Class whose shade fills a corner (-1 = no patch), read back from the pixels."""
    px = _corners(images).long()
    painted = (px.amax(dim=3) > 0).any(dim=2)  # (N,4); the digit never reaches the corners
    assert int(painted.sum(dim=1).max()) <= 1
    out = torch.full((len(images),), -1)
    for i, j in zip(*torch.nonzero(painted, as_tuple=True)):
        grey = int(px[i, j, 0, 0])
        assert (px[i, j] == px[i, j, :, :1]).all()  # one uniform shade
        out[i] = (255 - grey) // 25 if images.shape[1] == 1 else \
            [k for k, c in enumerate(COLOURS) if list(c) == px[i, j, :, 0].tolist()][0]
    return out


def test_training_patches_encode_the_label_and_shuffled_test_patches_never_do():
    b = _bundle()
    train_cls = _patch_class(b.train.images)
    has = train_cls >= 0
    assert 0.85 < has.float().mean() < 0.95  # probability 0.9
    assert torch.equal(train_cls[has], b.train.labels[has])  # shade = class, exactly
    shuffled = b.extra_tests["test_decoy_shuffled"]
    test_cls = _patch_class(shuffled.images)
    assert (test_cls >= 0).all() and (test_cls != shuffled.labels).all()
    # patch class independent of the label beyond "not the own class": uniform over the other 9
    shift = (test_cls - shuffled.labels) % 10
    counts = np.bincount(shift.numpy(), minlength=10)[1:]
    assert stats.chisquare(counts).pvalue > 1e-3
    assert (_patch_class(b.test.images) == -1).all()  # the plain test set is clean
    # corners are spread at random over the four positions
    painted = (_corners(b.train.images).amax(dim=3) > 0).any(dim=2)[has]
    assert stats.chisquare(painted.sum(dim=0).numpy()).pvalue > 1e-3


def test_three_channel_patches_use_the_class_colour():
    b = _bundle(channels=3)
    cls = _patch_class(b.train.images)
    has = cls >= 0
    assert torch.equal(cls[has], b.train.labels[has])


def test_masks_follow_the_ink_and_never_the_patch():
    b = _bundle()
    for split in (b.train, b.test, b.extra_tests["test_decoy_shuffled"]):
        corner_mask = _corners(split.masks.expand(-1, 1, -1, -1)).sum()
        assert corner_mask == 0
        # inside the digit's square the mask is the thresholded ink (threshold 0.35)
        inner = split.images[:, :1, Q:S - Q, Q:S - Q].float() / 255
        differ = split.masks[:, :, Q:S - Q, Q:S - Q].bool() != (inner > 0.35)
        assert ((inner - 0.35).abs()[differ] <= 0.5 / 255).all()  # only uint8 rounding at the edge
        assert differ.float().mean() < 1e-3
    assert torch.equal(b.test.masks, b.extra_tests["test_decoy_shuffled"].masks)


def test_deterministic_per_seed_and_different_across_seeds():
    a, a2, c = _bundle(0), _bundle(0), _bundle(1)
    assert torch.equal(a.train.images, a2.train.images) and torch.equal(a.train.labels, a2.train.labels)
    assert not torch.equal(a.train.labels, c.train.labels)


def test_train_fraction_keeps_a_stratified_subset_of_the_same_split():
    full = digits(DigitsParams(image_size=8), DataConfig(name="digits"), 3)
    part = digits(DigitsParams(image_size=8, train_fraction=0.25), DataConfig(name="digits"), 3)
    n = len(full.train.labels)
    assert len(part.train.labels) == round(0.25 * n)
    rows = {tuple(x.flatten().tolist()) for x in full.train.images}
    assert all(tuple(x.flatten().tolist()) in rows for x in part.train.images)
    share = torch.bincount(part.train.labels, minlength=10).float() / len(part.train.labels)
    ref = torch.bincount(full.train.labels, minlength=10).float() / n
    assert (share - ref).abs().max() < 0.02  # every class keeps its share
    assert torch.equal(part.test.images, full.test.images)


def test_a_patch_larger_than_a_quarter_of_the_image_is_a_config_error():
    with pytest.raises(ValueError, match="decoy.size 5 must be <= image_size // 4 = 4"):
        DigitsParams(image_size=16, decoy=DigitDecoyParams(size=5))
