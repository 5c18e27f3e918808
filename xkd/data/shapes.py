"""``shapes``: procedural shape classification with ground-truth masks and an optional decoy
(DESIGN section 4).

Each class is a shape type (circle, square, triangle, cross, star, ring, ellipse, crescent) drawn
with a random colour, position, scale and rotation on a textured, cluttered background. Samples
are generated as whole arrays at construction (vectorised, ~0.1 ms per 32x32 sample) and are
deterministic per (seed, split, index). The object mask is the set of shape pixels.

Decoy (a "right for the right reasons" shortcut, after Decoy-MNIST, Ross et al. 2017): a solid
``size`` x ``size`` marker in a corner whose corner (class mod 4) and colour (one per class) encode
the label (``position: random``: anywhere at least one pixel clear of the object, drawn per image,
so only the colour encodes the label; ``xkd.data.placement``), painted with probability ``probability`` into the training split (and the validation
split with ``apply_to: train_val``). ``test`` never has a marker; the extra test set
``test_decoy_shuffled`` holds the same test images, each with the marker of a random *other*
class, so a model that reads the marker instead of the shape falls below chance there. Objects
never overlap the marker corners, so the marker never covers (nor is part of) the object mask.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from xkd.config import AugmentConfig, DataConfig, Strict
from xkd.data import render
from xkd.data.base import DATASETS, DataBundle
from xkd.data.placement import corner_positions, free_positions, paint_squares
from xkd.data.tensors import CHUNK, TensorSplit, chunk_blocks, chunk_rng
from xkd.data.transforms import build_train_transform

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
MARKER_COLOURS = (
    (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.3, 1.0), (1.0, 1.0, 0.0),
    (1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.5, 0.0),
)
"""Marker colour of class k; its corner is k mod 4 (top-left, top-right, bottom-left, bottom-right)."""


class DecoyParams(Strict):
    """A class-correlated marker patch (a shortcut) in training data."""

    probability: float = Field(0.95, ge=0, le=1, description="chance a training image has its class marker")
    size: int = Field(6, ge=1, description="marker side in pixels (at most image_size // 4)")
    apply_to: Literal["train", "train_val"] = Field(
        "train_val", description="splits with correlated markers; test is always clean")
    position: Literal["corner", "random"] = Field(
        "corner", description="corner: corner k mod 4 for class k; random: anywhere clear of the object")


class ShapesParams(Strict):
    """Parameters of the ``shapes`` dataset."""

    num_classes: int = Field(4, ge=2, le=len(render.SHAPES), description="shape types used as classes")
    image_size: int = Field(32, ge=16, le=128)
    train_size: int = Field(5000, ge=1)
    val_size: int = Field(1000, ge=1)
    test_size: int = Field(1000, ge=1)
    scale: tuple[float, float] = Field((0.22, 0.4), description="bounding radius / image size, min and max")
    noise: float = Field(0.04, ge=0, le=0.5, description="std of per-pixel (uniform) noise")
    texture: float = Field(0.25, ge=0, le=1, description="amplitude of background colour field and stripes")
    clutter: int = Field(4, ge=0, le=32, description="random background strokes per image")
    decoy: DecoyParams | None = None

    @model_validator(mode="after")
    def _check(self) -> "ShapesParams":
        lo, hi = self.scale
        if not 0.05 <= lo <= hi <= 0.45:
            raise ValueError(f"scale {list(self.scale)} must satisfy 0.05 <= min <= max <= 0.45")
        if self.decoy is not None and self.decoy.size > self.image_size // 4:
            raise ValueError(f"decoy.size {self.decoy.size} must be <= image_size // 4 = {self.image_size // 4}")
        return self


def corner_reserve(image_size: int, decoy: DecoyParams | None) -> int:
    """Side of the corner squares kept free of objects: the same with or without a decoy, unless
    ``decoy.size`` exceeds the default (6 px at 32 px)."""
    default = round(6 * image_size / 32)
    return max(default, decoy.size if decoy is not None else 0)


def place(r: np.ndarray, size: int, reserve: int, rng: np.random.Generator, tries: int = 16
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (cx, cy) keeping a disc of radius r inside the image and clear of the four
    ``reserve``-sized corner squares (rejection sampling, vectorised); returns cx, cy, r."""

    def clear(cx: np.ndarray, cy: np.ndarray, r: np.ndarray) -> np.ndarray:
        ax, ay = np.minimum(cx, size - cx), np.minimum(cy, size - cy)
        return np.hypot(np.maximum(ax - reserve, 0), np.maximum(ay - reserve, 0)) >= r

    span = size - 2 * r
    cx, cy = r + span * rng.random(r.shape, dtype=np.float32), r + span * rng.random(r.shape, dtype=np.float32)
    for _ in range(tries):
        bad = ~clear(cx, cy, r)
        nx = r + span * rng.random(r.shape, dtype=np.float32)
        ny = r + span * rng.random(r.shape, dtype=np.float32)
        cx, cy = np.where(bad, nx, cx), np.where(bad, ny, cy)
    bad = ~clear(cx, cy, r)  # still blocked: centre it, shrunk to fit between the corners
    mid = np.float32(size / 2)
    r = np.where(bad, np.minimum(r, np.float32(math.sqrt(2) * (size / 2 - reserve) - 0.5)), r)
    return np.where(bad, mid, cx), np.where(bad, mid, cy), r


def _draw(p: ShapesParams, seed: int, split: str, chunk: int) -> dict[str, np.ndarray]:
    """Every random choice of one chunk of samples (scene stream 0)."""
    rng = chunk_rng(seed, split, 0, chunk)
    n, s = CHUNK, p.image_size
    d = render.draw_background(n, s, rng, p.clutter)
    d["label"] = rng.integers(0, p.num_classes, n)
    r = render.uniform(rng, *p.scale, n) * np.float32(s)
    d["cx"], d["cy"], d["r"] = place(r, s, corner_reserve(s, p.decoy), rng)
    d["theta"] = render.uniform(rng, 0, 2 * math.pi, n)
    d["colour"] = render.contrasting_colour(d["base"], rng)
    d["noise"] = render.pixel_noise(rng, (n, 3, s, s), p.noise)
    return d


def generate(p: ShapesParams, seed: int, split: str, n: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images (n,3,S,S), long labels (n,), uint8 masks (n,1,S,S) of one split, no decoy."""
    s = p.image_size
    imgs, labels, masks = [], [], []
    for block in chunk_blocks(n, s):
        d = render.cat_draws([_draw(p, seed, split, c) for c in block])
        mask = render.shape_masks(d["label"], d["cx"], d["cy"], d["r"], d["theta"], s)
        img = render.paint(render.render_background(d, s, p.texture), mask, d["colour"])
        imgs.append(render.to_uint8(img + d["noise"]))
        labels.append(d["label"])
        masks.append(mask[:, None])
    return (torch.from_numpy(np.concatenate(imgs)[:n]), torch.from_numpy(np.concatenate(labels)[:n]).long(),
            torch.from_numpy(np.concatenate(masks)[:n].astype(np.uint8)))


def marker_masks(size: int, side: int) -> torch.Tensor:
    """(4,S,S) bool: the four corner squares (top-left, top-right, bottom-left, bottom-right)."""
    m = torch.zeros(4, size, size, dtype=torch.bool)
    m[0, :side, :side] = m[1, :side, -side:] = m[2, -side:, :side] = m[3, -side:, -side:] = True
    return m


def add_markers(images: torch.Tensor, marker: torch.Tensor, decoy: DecoyParams,
                masks: torch.Tensor | None = None, rng: np.random.Generator | None = None
                ) -> torch.Tensor:
    """Paint the marker of class ``marker[i]`` into image i (skip where marker[i] < 0): in corner
    ``marker[i] mod 4``, or with ``position: random`` at a place clear of ``masks`` drawn from ``rng``."""
    colours = (torch.tensor(MARKER_COLOURS) * 255).round().to(torch.uint8)
    k = marker.clamp_min(0)
    if decoy.position == "corner":
        rows, cols = corner_positions(k % 4, decoy.size, images.shape[-1])
    else:
        if masks is None or rng is None:
            raise ValueError("add_markers: position 'random' needs the object masks and a generator")
        rows, cols = free_positions(masks, decoy.size, 1, rng)
    return paint_squares(images, rows, cols, decoy.size, colours[k], marker >= 0)


def decoy_markers(labels: torch.Tensor, decoy: DecoyParams, num_classes: int, seed: int,
                  split: str, shuffled: bool) -> torch.Tensor:
    """Marker class per sample (-1 = none): the label with probability p, or always a random
    other class when ``shuffled``. Drawn from a separate stream, so scenes do not change."""
    out = []
    for c in range(math.ceil(len(labels) / CHUNK)):
        rng = chunk_rng(seed, split, 1, c)
        lab = labels[c * CHUNK:(c + 1) * CHUNK]
        present = torch.from_numpy(rng.random(CHUNK) < decoy.probability)[: len(lab)]
        shift = torch.from_numpy(rng.integers(1, num_classes, CHUNK))[: len(lab)]
        out.append((lab + shift) % num_classes if shuffled else torch.where(present, lab, -1))
    return torch.cat(out)


def _split(p: ShapesParams, seed: int, split: str, n: int, decoy: bool) -> TensorSplit:
    imgs, labels, masks = generate(p, seed, split, n)
    if decoy and p.decoy is not None:
        imgs = add_markers(imgs, decoy_markers(labels, p.decoy, p.num_classes, seed, split, False),
                           p.decoy, masks, chunk_rng(seed, split, 3, 0))
    return TensorSplit(imgs, labels, MEAN, STD, masks)


def make_bundle(p: ShapesParams, seed: int, augment: AugmentConfig) -> DataBundle:
    """Generate train/val/test (and ``test_decoy_shuffled`` when a decoy is configured)."""
    d = p.decoy
    test = _split(p, seed, "test", p.test_size, False)
    extra = {}
    if d is not None:
        shuffled = decoy_markers(test.labels, d, p.num_classes, seed, "test", True)
        extra["test_decoy_shuffled"] = TensorSplit(
            add_markers(test.images, shuffled, d, test.masks, chunk_rng(seed, "test", 4, 0)),
            test.labels, MEAN, STD, test.masks)
    return DataBundle(
        name="shapes",
        train=_split(p, seed, "train", p.train_size, True),
        val=_split(p, seed, "val", p.val_size, d is not None and d.apply_to == "train_val"),
        test=test,
        num_classes=p.num_classes,
        has_masks=True,
        in_channels=3,
        image_size=p.image_size,
        mean=MEAN,
        std=STD,
        train_transform=build_train_transform(augment, p.image_size),
        extra_tests=extra,
        class_names=list(render.SHAPE_NAMES[: p.num_classes]),
    )


@DATASETS.register("shapes", params=ShapesParams)
def shapes(params: ShapesParams, cfg: DataConfig, seed: int) -> DataBundle:
    """Procedural shapes on cluttered textures, with object masks and an optional decoy."""
    return make_bundle(params, seed, cfg.augment)
