"""Image tiles and charts of the viewer (numpy + PIL for tiles, Altair for charts).

Tiles are RGB uint8 arrays: an explanation map coloured with one colour map on a scale the caller
chooses (shared across models by default), optionally laid over the input image with an opacity;
attention maps are shown at their own resolution (nearest-neighbour enlargement keeps the grid).
:func:`compose_png` renders the current panel (tiles with captions) into one PNG for download.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Callable

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw, ImageFont

from viewer_lib.alignment import resize_map

TILE = 168
"""Edge of a displayed tile in pixels."""


@lru_cache(maxsize=8)
def lut(name: str = "inferno") -> np.ndarray:
    """(256, 3) uint8 colour table of a matplotlib colour map."""
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def colourise(m: np.ndarray, vmin: float, vmax: float, cmap: str = "inferno") -> np.ndarray:
    """(h, w) map -> (h, w, 3) uint8 on the fixed scale [vmin, vmax] (values outside are clipped)."""
    x = np.asarray(m, dtype=np.float64)
    span = vmax - vmin if vmax - vmin > 1e-12 else 1.0
    k = np.clip((np.nan_to_num(x, nan=vmin) - vmin) / span, 0, 1)
    return lut(cmap)[(k * 255).round().astype(np.int64)]


def enlarge(img: np.ndarray, px: int = TILE, smooth: bool = False) -> np.ndarray:
    """Enlarge an (h, w, 3) tile to ``px`` pixels on its longer side."""
    h, w = img.shape[:2]
    s = px / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    res = Image.BILINEAR if smooth else Image.NEAREST
    return np.asarray(Image.fromarray(img).resize(size, res))


def overlay(display: np.ndarray, m: np.ndarray, vmin: float, vmax: float, alpha: float,
            px: int = TILE, cmap: str = "inferno") -> np.ndarray:
    """Map ``m`` (h, w), resized to the image, coloured and blended over ``display`` (H, W, 3)."""
    H, W = display.shape[:2]
    mm = resize_map(np.asarray(m, dtype=np.float64), (H, W))
    col = colourise(mm, vmin, vmax, cmap).astype(np.float64)
    out = (1 - alpha) * display.astype(np.float64) + alpha * col
    return enlarge(out.round().astype(np.uint8), px)


def heat(m: np.ndarray, vmin: float, vmax: float, px: int = TILE, cmap: str = "inferno") -> np.ndarray:
    """Map ``m`` (h, w) at its own resolution (no blending), enlarged with visible pixels."""
    return enlarge(colourise(m, vmin, vmax, cmap), px)


def mask_tile(display: np.ndarray, mask: np.ndarray, px: int = TILE) -> np.ndarray:
    """The image with the ground-truth mask tinted green and everything else dimmed."""
    k = np.asarray(mask).reshape(display.shape[:2]) > 0
    img = display.astype(np.float64) * 0.45
    img[k] = 0.5 * display[k] + 0.5 * np.array([40.0, 220.0, 90.0])
    return enlarge(img.round().astype(np.uint8), px)


def image_tile(display: np.ndarray, px: int = TILE) -> np.ndarray:
    return enlarge(np.ascontiguousarray(display), px)


def colourbar(vmin: float, vmax: float, width: int = 240, height: int = 14,
              cmap: str = "inferno") -> np.ndarray:
    """A horizontal colour bar (height, width, 3) for [vmin, vmax]."""
    row = lut(cmap)[np.linspace(0, 255, width).round().astype(np.int64)]
    return np.repeat(row[None], height, axis=0)


def compose_png(rows: list[list[tuple[np.ndarray, str]]], title: str = "") -> bytes:
    """A PNG of tiles arranged in rows, each with its caption underneath (the panel download)."""
    font = ImageFont.load_default()
    pad, cap = 8, 26
    rows = [r for r in rows if r]
    tw = max((t.shape[1] for r in rows for t, _ in r), default=TILE)
    th = max((t.shape[0] for r in rows for t, _ in r), default=TILE)
    ncol = max((len(r) for r in rows), default=1)
    top = 24 if title else 0
    canvas = Image.new("RGB", (pad + ncol * (tw + pad), top + pad + len(rows) * (th + cap + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 6), title, fill="black", font=font)
    for i, r in enumerate(rows):
        for j, (tile, caption) in enumerate(r):
            x, y = pad + j * (tw + pad), top + pad + i * (th + cap + pad)
            canvas.paste(Image.fromarray(np.ascontiguousarray(tile)), (x, y))
            for k, line in enumerate(caption.split("\n")[:2]):
                draw.text((x, y + tile.shape[0] + 2 + 11 * k), line[: tw // 6], fill="black", font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def show(tiles: list[tuple[np.ndarray, str]], width: int = TILE * 3 // 4) -> None:
    """Tiles in one row (wrapping), captioned, as lossless PNG (JPEG would smear the pixel grid)."""
    if tiles:
        st.image([t for t, _ in tiles], caption=[c for _, c in tiles], width=width, output_format="PNG")


DEFERRED = "callable" in (st.download_button.__doc__ or "")
"""Whether this Streamlit builds download data only when the button is clicked (data=callable)."""


def download(label: str, make: Callable[[], bytes], file_name: str, mime: str, key: str) -> None:
    """A download button whose bytes are made on click where Streamlit allows it (sample switches
    stay fast), else made now."""
    if DEFERRED:  # a click neither reruns the page nor builds anything before it
        st.download_button(label, make, file_name=file_name, mime=mime, key=key, on_click="ignore")
    else:
        st.download_button(label, make(), file_name=file_name, mime=mime, key=key)


def line_chart(df: pd.DataFrame, x: str, y: str, colour: str, title: str = "",
               dash: str | None = None) -> alt.Chart:
    enc = {"x": alt.X(f"{x}:Q", title=x), "y": alt.Y(f"{y}:Q", title=y, scale=alt.Scale(zero=False)),
           "color": alt.Color(f"{colour}:N", title=colour), "tooltip": list(df.columns)}
    if dash:
        enc["strokeDash"] = alt.StrokeDash(f"{dash}:N", title=dash)
    return alt.Chart(df, title=title).mark_line(point=True).encode(**enc).properties(height=260)


def histogram(df: pd.DataFrame, value: str, colour: str, title: str = "") -> alt.Chart:
    """Overlaid histograms of ``value`` per ``colour`` group (e.g. per-sample alignment per student)."""
    return (alt.Chart(df.dropna(subset=[value]), title=title)
            .mark_bar(opacity=0.45, binSpacing=0)
            .encode(x=alt.X(f"{value}:Q", bin=alt.Bin(maxbins=30), title=value),
                    y=alt.Y("count():Q", stack=None, title="samples"),
                    color=alt.Color(f"{colour}:N", title=colour))
            .properties(height=220))
