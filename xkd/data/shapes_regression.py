"""Regression variants of ``shapes`` for cGAN-KD (DESIGN section 4): ``shapes_count`` (label =
number of objects) and ``shapes_angle`` (label = rotation of an arrow, in radians).

Both reuse the vectorised renderer of ``shapes``, carry object masks, and are deterministic per
(seed, split, index). Labels are float; ``task="regression"``, ``num_classes=1``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field, model_validator

from xkd.config import DataConfig, Strict
from xkd.data import render
from xkd.data.base import DATASETS, DataBundle
from xkd.data.shapes import MEAN, STD, place
from xkd.data.tensors import CHUNK, TensorSplit, chunk_blocks, chunk_rng
from xkd.data.transforms import build_train_transform

GRID = 3
"""Objects of ``shapes_count`` sit in distinct cells of a GRID x GRID layout (no overlaps)."""


class _SceneParams(Strict):
    image_size: int = Field(32, ge=16, le=128)
    train_size: int = Field(5000, ge=1)
    val_size: int = Field(1000, ge=1)
    test_size: int = Field(1000, ge=1)
    noise: float = Field(0.04, ge=0, le=0.5, description="std of per-pixel (uniform) noise")
    texture: float = Field(0.25, ge=0, le=1, description="amplitude of background texture")
    clutter: int = Field(2, ge=0, le=32, description="random background strokes per image")


class CountParams(_SceneParams):
    """``shapes_count``: label = number of shapes (min_count..max_count)."""

    min_count: int = Field(1, ge=0, le=GRID * GRID)
    max_count: int = Field(5, ge=1, le=GRID * GRID)
    kinds: int = Field(4, ge=1, le=len(render.SHAPES), description="shape types drawn at random")

    @model_validator(mode="after")
    def _order(self) -> "CountParams":
        if self.min_count > self.max_count:
            raise ValueError(f"min_count {self.min_count} must be <= max_count {self.max_count}")
        return self


class AngleParams(_SceneParams):
    """``shapes_angle``: label = rotation of an arrow in radians, uniform in +-max_angle degrees."""

    max_angle: float = Field(60.0, gt=0, le=180, description="degrees; 180 = the full circle")
    scale: tuple[float, float] = Field((0.25, 0.42), description="bounding radius / image size")


def _count_draw(p: CountParams, seed: int, split: str, c: int) -> dict[str, np.ndarray]:
    rng = chunk_rng(seed, split, 0, c)
    n, s, k = CHUNK, p.image_size, p.max_count
    d = render.draw_background(n, s, rng, p.clutter)
    counts = rng.integers(p.min_count, p.max_count + 1, n)
    cells = np.argsort(rng.random((n, GRID * GRID)), axis=1)[:, :k]
    margin = max(1, s // 16)
    cell = np.float32((s - 2 * margin) / GRID)
    r = cell * render.uniform(rng, 0.3, 0.42, (n, k))
    jit = (cell / 2 - r)[..., None] * render.uniform(rng, -1, 1, (n, k, 2))
    d.update(
        label=counts.astype(np.float32), active=np.arange(k)[None] < counts[:, None], r=r,
        cx=margin + ((cells % GRID) + np.float32(0.5)) * cell + jit[..., 0],
        cy=margin + ((cells // GRID) + np.float32(0.5)) * cell + jit[..., 1],
        kinds=rng.integers(0, p.kinds, (n, k)),
        theta=render.uniform(rng, 0, 2 * math.pi, (n, k)),
        colour=np.stack([render.contrasting_colour(d["base"], rng) for _ in range(k)], 1),
        noise=render.pixel_noise(rng, (n, 3, s, s), p.noise),
    )
    return d


def _count_render(p: CountParams, d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    s = p.image_size
    img = render.render_background(d, s, p.texture)
    mask = np.zeros((len(img), s, s), dtype=bool)
    for j in range(p.max_count):  # distinct cells: objects never overlap
        mj = render.shape_masks(d["kinds"][:, j], d["cx"][:, j], d["cy"][:, j], d["r"][:, j],
                                d["theta"][:, j], s) & d["active"][:, j, None, None]
        img = render.paint(img, mj, d["colour"][:, j])
        mask |= mj
    return img + d["noise"], mask


def _angle_draw(p: AngleParams, seed: int, split: str, c: int) -> dict[str, np.ndarray]:
    rng = chunk_rng(seed, split, 0, c)
    n, s = CHUNK, p.image_size
    d = render.draw_background(n, s, rng, p.clutter)
    r = render.uniform(rng, *p.scale, n) * np.float32(s)
    d["cx"], d["cy"], d["r"] = place(r, s, 0, rng)
    d["label"] = render.uniform(rng, -math.radians(p.max_angle), math.radians(p.max_angle), n)
    d["colour"] = render.contrasting_colour(d["base"], rng)
    d["noise"] = render.pixel_noise(rng, (n, 3, s, s), p.noise)
    return d


def _angle_render(p: AngleParams, d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    s = p.image_size
    kinds = np.zeros(len(d["label"]), dtype=np.int64)
    mask = render.shape_masks(kinds, d["cx"], d["cy"], d["r"], d["label"], s, fns=(render.ARROW,))
    img = render.paint(render.render_background(d, s, p.texture), mask, d["colour"])
    return img + d["noise"], mask


def _splits(draw, draw_render, p: _SceneParams, seed: int) -> dict[str, TensorSplit]:
    out = {}
    for split, n in (("train", p.train_size), ("val", p.val_size), ("test", p.test_size)):
        imgs, labels, masks = [], [], []
        for block in chunk_blocks(n, p.image_size):
            d = render.cat_draws([draw(p, seed, split, c) for c in block])
            img, mask = draw_render(p, d)
            imgs.append(render.to_uint8(img))
            labels.append(d["label"])
            masks.append(mask[:, None].astype(np.uint8))
        out[split] = TensorSplit(*(torch.from_numpy(np.concatenate(t)[:n]) for t in (imgs, labels)),
                                 MEAN, STD, torch.from_numpy(np.concatenate(masks)[:n]))
    return out


def _bundle(name: str, splits: dict[str, TensorSplit], p: _SceneParams, transform,
            label_range: tuple[float, float]) -> DataBundle:
    """``label_range`` (low, high) of the labels: training sees them min-max normalised to [0, 1]."""
    low, high = label_range
    return DataBundle(name=name, **splits, num_classes=1, task="regression", has_masks=True,
                      in_channels=3, image_size=p.image_size, mean=MEAN, std=STD,
                      train_transform=transform, label_offset=float(low),
                      label_scale=float(max(high - low, 1e-6)))


@DATASETS.register("shapes_count", params=CountParams)
def shapes_count(params: CountParams, cfg: DataConfig, seed: int) -> DataBundle:
    """Count the shapes in the image (float label)."""
    transform = build_train_transform(cfg.augment, params.image_size)
    return _bundle("shapes_count", _splits(_count_draw, _count_render, params, seed), params, transform,
                   (params.min_count, params.max_count))


@DATASETS.register("shapes_angle", params=AngleParams)
def shapes_angle(params: AngleParams, cfg: DataConfig, seed: int) -> DataBundle:
    """Regress an arrow's rotation in radians (no horizontal flip: a mirror changes the angle)."""
    transform = build_train_transform(cfg.augment, params.image_size, hflip_ok=False)
    rad = math.radians(params.max_angle)
    return _bundle("shapes_angle", _splits(_angle_draw, _angle_render, params, seed), params, transform,
                   (-rad, rad))
