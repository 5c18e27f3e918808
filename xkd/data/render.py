"""Vectorised rasterisation for the procedural ``shapes`` datasets (DESIGN section 4).

Everything works on a batch: a shape is the set of pixel centres whose coordinates, translated,
rotated and scaled into the shape's unit frame ``(u, v)``, satisfy a few inequalities. Every shape
fits inside the unit disc, so ``r`` is a bounding radius. No per-pixel or per-sample Python loops.

Written in float32 numpy: its element-wise kernels are single-threaded, so generation speed does
not collapse when torch's intra-op threads compete with other processes for a small CPU.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Array = np.ndarray
Rng = np.random.Generator
F32 = np.float32


def _circle(u: Array, v: Array) -> Array:
    return u * u + v * v <= 0.8**2


def _square(u: Array, v: Array) -> Array:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.68


def _triangle(u: Array, v: Array) -> Array:
    """Equilateral, circumradius 1: three half-planes at distance 0.5 (the apothem)."""
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):
        a = math.pi + 2 * math.pi * k / 3
        inside &= u * F32(math.cos(a)) + v * F32(math.sin(a)) <= 0.5
    return inside


def _cross(u: Array, v: Array) -> Array:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.27) & (av <= 0.92)) | ((av <= 0.27) & (au <= 0.92))


def _star(u: Array, v: Array) -> Array:
    """Five points: the radius goes linearly from 0.38 (between points) to 0.98 (tips) in angle."""
    t = np.mod(np.arctan2(v, u) * F32(5 / (2 * math.pi)), 1.0)
    return np.sqrt(u * u + v * v) <= 0.38 + 0.6 * np.abs(2 * t - 1)


def _ring(u: Array, v: Array) -> Array:
    rho2 = u * u + v * v
    return (rho2 <= 0.95**2) & (rho2 >= 0.52**2)


def _ellipse(u: Array, v: Array) -> Array:
    return (u / F32(0.97)) ** 2 + (v / F32(0.42)) ** 2 <= 1.0


def _crescent(u: Array, v: Array) -> Array:
    return (u * u + v * v <= 0.92**2) & ((u - 0.5) ** 2 + v * v > 0.72**2)


def _arrow(u: Array, v: Array) -> Array:
    """An isosceles head with a stem, pointing along +u: its direction is unique over 360 degrees."""
    head = (u <= 0.95) & (u >= -0.15) & (np.abs(v) <= 0.62 * (0.95 - u))
    stem = (u >= -0.85) & (u < -0.15) & (np.abs(v) <= 0.16)
    return head | stem


SHAPES: dict[str, Callable[[Array, Array], Array]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "star": _star,
    "ring": _ring,
    "ellipse": _ellipse,
    "crescent": _crescent,
}
"""Class shapes, all distinct under rotation (so square/diamond or plus/x are not two classes)."""
SHAPE_NAMES = tuple(SHAPES)
ARROW = _arrow


def pixel_grid(size: int) -> tuple[Array, Array]:
    """x, y (1,S,S) of pixel centres (x to the right, y down)."""
    c = np.arange(size, dtype=F32) + F32(0.5)
    y, x = np.meshgrid(c, c, indexing="ij")
    return x[None], y[None]


def shape_masks(
    kinds: Array, cx: Array, cy: Array, r: Array, theta: Array, size: int,
    fns: tuple[Callable[[Array, Array], Array], ...] | None = None,
) -> Array:
    """(B,S,S) bool masks of shapes ``fns[kinds[b]]`` centred at (cx, cy) with bounding radius r,
    rotated counter-clockwise by ``theta`` radians (the shape's +u axis points along
    (cos t, -sin t) in x-right, y-down pixel coordinates)."""
    fns = fns if fns is not None else tuple(SHAPES.values())
    x, y = pixel_grid(size)
    col = lambda a: np.asarray(a, dtype=F32)[:, None, None]  # noqa: E731
    kinds, theta = np.asarray(kinds), np.asarray(theta, dtype=F32)
    dx, dy = x - col(cx), y - col(cy)
    c, s, inv = col(np.cos(theta)), col(np.sin(theta)), 1 / col(r)
    u = (dx * c - dy * s) * inv
    v = (dx * s + dy * c) * inv
    out = np.zeros(u.shape, dtype=bool)
    for k, fn in enumerate(fns):
        sel = np.flatnonzero(kinds == k)
        if len(sel):
            out[sel] = fn(u[sel], v[sel])
    return out


def _upsample_matrix(coarse: int, size: int) -> Array:
    """(S, coarse) weights of 1-D bilinear upsampling (half-pixel centres, edges clamped)."""
    pos = np.clip((np.arange(size) + 0.5) * coarse / size - 0.5, 0, coarse - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, coarse - 1)
    w = np.zeros((size, coarse), dtype=F32)
    np.add.at(w, (np.arange(size), lo), 1 - (pos - lo))
    np.add.at(w, (np.arange(size), hi), pos - lo)
    return w


def uniform(rng: Rng, lo: float, hi: float, shape: tuple[int, ...] | int) -> Array:
    """float32 uniform draws in [lo, hi)."""
    return F32(lo) + F32(hi - lo) * rng.random(shape, dtype=F32)


def draw_background(n: int, size: int, rng: Rng, clutter: int) -> dict[str, Array]:
    """Random parameters of ``n`` backgrounds (small arrays; see :func:`render_background`)."""
    k = clutter
    p0 = uniform(rng, 0, size, (n, k, 2))
    length = uniform(rng, 2.0, 2.0 + size / 2, (n, k))
    ang = uniform(rng, 0, 2 * math.pi, (n, k))
    return {
        "base": uniform(rng, 0.15, 0.85, (n, 3)),
        "coarse": uniform(rng, -0.5, 0.5, (n, 3, 4, 4)),
        "freq": uniform(rng, 2.0 / size, 6.0 / size, n),
        "angle": uniform(rng, 0, math.pi, n),
        "phase": uniform(rng, 0, 2 * math.pi, n),
        "p0": p0,
        "p1": p0 + length[..., None] * np.stack([np.cos(ang), np.sin(ang)], -1),
        "width": uniform(rng, 0.6, 1.5, (n, k)),
        "stroke_colour": rng.random((n, k, 3), dtype=F32),
    }


def render_background(d: dict[str, Array], size: int, texture: float) -> Array:
    """(B,3,S,S) backgrounds in [0,1]: base colour + ``texture`` x (smooth bilinear colour field
    + half-amplitude oriented stripes), then the clutter strokes (later strokes on top)."""
    n = len(d["base"])
    a = _upsample_matrix(4, size)
    smooth = np.matmul(np.matmul(a, d["coarse"]), a.T)
    x, y = pixel_grid(size)
    ang = d["angle"][:, None, None]
    arg = (F32(2 * math.pi) * d["freq"])[:, None, None] * (x * np.cos(ang) + y * np.sin(ang))
    stripes = np.sin(arg + d["phase"][:, None, None])
    img = d["base"][:, :, None, None] + F32(texture) * (smooth + F32(0.5) * stripes[:, None])
    k = d["width"].shape[1]
    if k > 0:
        dist2 = segment_distance2(x, y, d["p0"].reshape(-1, 2), d["p1"].reshape(-1, 2))
        hit = (dist2 <= (d["width"].reshape(-1) ** 2)[:, None, None]).reshape(n, k, size, size)
        for j in range(k):  # later strokes on top
            img = paint(img, hit[:, j], d["stroke_colour"][:, j])
    return np.clip(img, 0, 1)


def segment_distance2(x: Array, y: Array, p0: Array, p1: Array) -> Array:
    """(B,S,S) squared distance from each pixel centre to the segment p0-p1 (each (B,2))."""
    d = p1 - p0
    dx, dy = d[:, 0, None, None], d[:, 1, None, None]
    inv = 1 / np.maximum(dx * dx + dy * dy, F32(1e-6))
    px, py = x - p0[:, 0, None, None], y - p0[:, 1, None, None]
    t = np.clip((px * dx + py * dy) * inv, 0, 1)  # projection onto the segment
    px -= t * dx
    py -= t * dy
    px *= px
    py *= py
    px += py
    return px


def contrasting_colour(base: Array, rng: Rng, min_diff: float = 0.35) -> Array:
    """(B,3) random colours whose mean absolute difference to ``base`` is at least ``min_diff``."""
    col = rng.random(base.shape, dtype=F32)
    close = np.abs(col - base).mean(1) < min_diff
    return np.where(close[:, None], np.mod(base + F32(0.5), F32(1.0)), col)


def paint(img: Array, mask: Array, colour: Array) -> Array:
    """Paint (B,3) ``colour`` into (B,3,S,S) ``img`` where the (B,S,S) ``mask`` is set."""
    return np.where(mask[:, None], colour[:, :, None, None], img)


def cat_draws(draws: list[dict[str, Array]]) -> dict[str, Array]:
    """Concatenate per-chunk parameter dicts along the sample dimension."""
    return {k: np.concatenate([d[k] for d in draws]) for k in draws[0]}


def pixel_noise(rng: Rng, shape: tuple[int, ...], std: float) -> Array:
    """Zero-mean uniform per-pixel noise with standard deviation ``std`` (cheaper than Gaussian)."""
    return uniform(rng, -math.sqrt(3) * std, math.sqrt(3) * std, shape)


def to_uint8(img: Array) -> Array:
    """Float images in [0,1] -> uint8 (rounded, clamped)."""
    return np.rint(np.clip(img, 0, 1) * F32(255)).astype(np.uint8)
