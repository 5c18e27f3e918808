"""xkd.data.placement and the moving-object decoy benchmarks of issue 15: a decoy square at a
random place clear of the object, a digit at a random place per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xkd.config import DataConfig
from xkd.data import build_data
from xkd.data.digit_decoy import COLOURS
from xkd.data.placement import corner_positions, free_positions, paint_squares
from xkd.data.shapes import MARKER_COLOURS
from xkd.errors import ConfigError


def _square(s: int, r: int, c: int, side: int, margin: int = 0) -> torch.Tensor:
    """(s,s) bool: the side-square at (r, c) grown by ``margin`` on every side, clipped."""
    m = torch.zeros(s, s, dtype=torch.bool)
    m[max(r - margin, 0):r + side + margin, max(c - margin, 0):c + side + margin] = True
    return m


def test_free_positions_are_uniform_over_exactly_the_clear_places():
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, :, :4] = 1  # object fills the left half
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        r, c = free_positions(mask, 2, 1, rng)
        seen.add((int(r), int(c)))
    # a 2-square one pixel clear of columns 0-3 starts at column 5 or 6, any of 7 rows
    assert seen == {(r, c) for r in range(7) for c in (5, 6)}


def test_free_positions_fall_back_to_the_least_overlap_when_nothing_is_clear():
    mask = torch.ones(3, 1, 6, 6)
    mask[:, 0, 4:, 4:] = 0  # only the bottom-right 2x2 is empty
    r, c = free_positions(mask, 2, 1, np.random.default_rng(1))
    assert r.tolist() == [4, 4, 4] and c.tolist() == [4, 4, 4]


def test_paint_squares_and_corners_match_a_per_image_loop():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 255, (5, 3, 9, 9), generator=g, dtype=torch.uint8)
    rows, cols = torch.tensor([0, 6, 3, 1, 2]), torch.tensor([6, 0, 3, 1, 2])
    colours = torch.randint(0, 255, (5, 3), generator=g, dtype=torch.uint8)
    paint = torch.tensor([True, True, True, False, True])
    ref = imgs.clone()
    for i in range(5):
        if paint[i]:
            ref[i, :, rows[i]:rows[i] + 3, cols[i]:cols[i] + 3] = colours[i][:, None, None]
    assert torch.equal(paint_squares(imgs, rows, cols, 3, colours, paint), ref)
    r, c = corner_positions(torch.arange(4), 3, 9)
    assert list(zip(r.tolist(), c.tolist())) == [(0, 0), (0, 6), (6, 0), (6, 6)]


def _patch_of(images: torch.Tensor, size: int, colours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class of the size-square of an exact class colour per image, -1 none; its top-left flat index)."""
    cls, where = torch.full((len(images),), -1), torch.full((len(images),), -1)
    for k, col in enumerate(colours):
        hit = (images == col[None, :, None, None]).all(1, keepdim=True).float()
        full = F.avg_pool2d(hit, size, stride=1).flatten(1) > 1 - 1e-6
        found = full.any(1)
        cls[found] = k
        where[found] = full.float().argmax(1)[found]
    return cls, where


DIGITS = {"image_size": 24, "channels": 3, "digit_size": 12, "digit_position": "random",
          "decoy": {"probability": 1.0, "size": 5, "position": "random"}}


def test_moving_digits_with_random_patches_keep_patch_and_ink_apart():
    b = build_data(DataConfig(name="digits", params=DIGITS), 4)
    colours = torch.tensor(COLOURS, dtype=torch.uint8)
    for split, shuffled in ((b.train, False), (b.extra_tests["test_decoy_shuffled"], True)):
        cls, where = _patch_of(split.images, 5, colours)
        assert bool((cls >= 0).all())
        assert bool((cls != split.labels).all()) if shuffled else torch.equal(cls, split.labels)
        rows, cols = where // 20, where % 20
        for i in range(len(split)):  # the patch is at least one pixel clear of the ink
            clear = _square(24, int(rows[i]), int(cols[i]), 5, margin=1)
            assert not bool(split.masks[i, 0][clear].any())
        assert len(set(zip(rows.tolist(), cols.tolist()))) > 50  # patches really move
    # the digit moves: its ink box starts at many places, always inside a 12-pixel square
    rows, cols = [], []
    for m in b.test.masks[:, 0]:
        r, c = torch.nonzero(m, as_tuple=True)
        assert int(r.max() - r.min()) < 12 and int(c.max() - c.min()) < 12
        rows.append(int(r.min()))
        cols.append(int(c.min()))
    assert max(rows) - min(rows) >= 10 and max(cols) - min(cols) >= 10
    # clean test has no patch and the shuffled set is the same images off the patch
    assert bool((_patch_of(b.test.images, 5, colours)[0] == -1).all())
    teacher = build_data(DataConfig(name="digits", params={**DIGITS, "decoy": {
        "probability": 0.0, "size": 5, "position": "random"}}), 4)
    assert torch.equal(teacher.train.masks, b.train.masks)  # same digits at the same places
    assert not torch.equal(build_data(DataConfig(name="digits", params=DIGITS), 5).test.masks[:20],
                           b.test.masks[:20])


def test_centred_digit_size_draws_the_digit_in_the_middle():
    b = build_data(DataConfig(name="digits", params={"image_size": 16, "digit_size": 8}), 0)
    ink = b.train.images[:, 0].amax(0) > 0
    assert not bool(ink[:4].any() or ink[12:].any() or ink[:, :4].any() or ink[:, 12:].any())


@pytest.mark.parametrize("params, field", [
    ({"image_size": 20, "digit_size": 12, "decoy": {"size": 5}}, "digit_size"),
    ({"image_size": 24, "digit_size": 14, "decoy": {"size": 5, "position": "random"}}, "decoy.position"),
])
def test_digit_geometry_that_does_not_fit_is_a_config_error(params, field):
    with pytest.raises(ConfigError, match=field):
        build_data(DataConfig(name="digits", params=params), 0)


def test_shapes_random_marker_sits_clear_of_the_object_and_only_its_colour_encodes_the_class():
    p = {"image_size": 20, "train_size": 300, "val_size": 40, "test_size": 200,
         "decoy": {"probability": 1.0, "size": 4, "position": "random"}}
    b = build_data(DataConfig(name="shapes", params=p), 2)
    colours = (torch.tensor(MARKER_COLOURS) * 255).round().to(torch.uint8)[:4]
    for split, shuffled in ((b.train, False), (b.extra_tests["test_decoy_shuffled"], True)):
        cls, where = _patch_of(split.images, 4, colours)
        assert bool((cls >= 0).all())
        assert bool((cls != split.labels).all()) if shuffled else torch.equal(cls, split.labels)
        rows, cols = where // 17, where % 17
        overlap = [bool(split.masks[i, 0][_square(20, int(rows[i]), int(cols[i]), 4)].any())
                   for i in range(len(split))]
        assert not any(overlap)
        corner = ((rows == 0) | (rows == 16)) & ((cols == 0) | (cols == 16))
        assert float(corner.float().mean()) < 0.2  # not the corner benchmark
