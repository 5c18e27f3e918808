"""``av_shapes``: a built-in audio-visual dataset for cross-modal distillation (CCL, Chen et al.
CVPR 2021; DESIGN section 4; seed_methods.md section 4).

Each sample holds three views of one labelled event:

* ``video`` (3,T,H,W): a shape of the class (the ``shapes`` renderer, :mod:`xkd.data.render`)
  moving in a straight line and rotating at constant speed over a static cluttered background,
  with fresh pixel noise per frame;
* ``image`` (3,H,W): one frame of that clip, its index drawn at random per sample, with the
  object ``mask`` (1,H,W) of that frame;
* ``audio`` (1,M,M): the standardised log-mel spectrogram (M = ``n_mels`` bands x M frames) of
  the sound of class ``label`` (:mod:`xkd.data.av_sound`); the sound-to-class assignment is
  arbitrary, unrelated to shape appearance. With probability ``missing_audio`` a clip has no
  audio: ``audio`` is zeros and ``audio_mask`` is 0.0 (else 1.0).

Video scenes, frame choice, sound and missing-audio flags come from separate seeded streams per
chunk of samples (:func:`xkd.data.tensors.chunk_rng`), so each is deterministic per (seed, split,
index) and changing e.g. the video parameters leaves labels and sounds unchanged.

Augmentation (``data.augment``: random crop with padding, horizontal flip; every class shape is
mirror-symmetric up to rotation) is applied by :class:`~xkd.data.transforms.JointAugment` to the
image, its mask and every frame of the clip with one draw per sample; the audio is never touched.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch.utils.data import Dataset

from xkd.config import DataConfig, Strict
from xkd.data import av_sound, render
from xkd.data.base import DATASETS, DataBundle, Sample
from xkd.data.tensors import CHUNK, chunk_rng
from xkd.data.transforms import build_train_transform

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
SCENE, FRAME, SOUND, MISSING, LABEL, PIXELS = 0, 1, 2, 3, 4, 5
"""Random streams: scene (background, motion, colour), image frame index, sound, missing audio,
label, per-frame pixel noise."""


class AVShapesParams(Strict):
    """Parameters of the ``av_shapes`` dataset."""

    n_train: int = Field(1200, ge=1)
    n_val: int = Field(300, ge=1)
    n_test: int = Field(600, ge=1)
    num_classes: int = Field(4, ge=2, le=len(av_sound.PATTERNS), description="shape types = sound patterns")
    frames: int = Field(8, ge=1, le=64, description="video frames T")
    image_size: int = Field(32, ge=16, le=96)
    n_mels: int = Field(32, ge=16, le=48, description="mel bands = spectrogram frames (square audio)")
    missing_audio: float = Field(0.0, ge=0, description="fraction of clips without audio, in [0, 1)")
    scale: tuple[float, float] = Field((0.25, 0.4), description="bounding radius / image size, min and max")
    speed: float = Field(0.5, ge=0, le=1, description="max travel over the clip, as a fraction of the free span")
    spin: float = Field(math.pi / 2, ge=0, le=2 * math.pi, description="max rotation over the clip (radians)")
    noise: float = Field(0.05, ge=0, le=0.5, description="std of per-pixel noise (fresh per frame)")
    texture: float = Field(0.2, ge=0, le=1)
    clutter: int = Field(3, ge=0, le=32, description="background strokes per clip")
    audio_noise: float = Field(0.6, ge=0, le=4, description="std of white noise (tones have amplitude 0.5-1)")
    audio_distractors: float = Field(1.0, ge=0, le=3, description="expected random distractor notes per clip")
    audio_unrelated: float = Field(0.1, ge=0, le=1, description="chance a clip plays a random class's sound")

    @field_validator("missing_audio")
    @classmethod
    def _some_audio(cls, v: float) -> float:
        if v >= 1:
            raise ValueError("every clip would lack audio; allowed: a fraction in [0, 1)")
        return v

    @model_validator(mode="after")
    def _check(self) -> "AVShapesParams":
        lo, hi = self.scale
        if not 0.05 <= lo <= hi <= 0.45:
            raise ValueError(f"scale {list(self.scale)} must satisfy 0.05 <= min <= max <= 0.45")
        return self


def _scene(p: AVShapesParams, seed: int, split: str, chunk: int) -> dict[str, np.ndarray]:
    """Every random choice of one chunk of clips (label, background, start/end pose, colour)."""
    label = chunk_rng(seed, split, LABEL, chunk).integers(0, p.num_classes, CHUNK)
    rng = chunk_rng(seed, split, SCENE, chunk)
    n, s = CHUNK, p.image_size
    d = render.draw_background(n, s, rng, p.clutter)
    d["label"] = label
    d["r"] = render.uniform(rng, *p.scale, n) * np.float32(s)
    span = s - 2 * d["r"]
    start = d["r"][:, None] + span[:, None] * rng.random((n, 2), dtype=np.float32)
    ang = render.uniform(rng, 0, 2 * math.pi, n)
    travel = span * np.float32(p.speed) * rng.random(n, dtype=np.float32)
    end = start + travel[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1)
    d["start"] = start
    d["end"] = np.clip(end, d["r"][:, None], (s - d["r"])[:, None])  # stays inside the frame
    d["theta"] = render.uniform(rng, 0, 2 * math.pi, n)
    d["omega"] = render.uniform(rng, -p.spin, p.spin, n)
    d["colour"] = render.contrasting_colour(d["base"], rng)
    return d


def render_clips(p: AVShapesParams, d: dict[str, np.ndarray], rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 videos (N,3,T,S,S) and bool masks (N,T,S,S) of the drawn scenes."""
    n, t, s = len(d["label"]), p.frames, p.image_size
    frac = np.linspace(0, 1, t, dtype=np.float32) if t > 1 else np.zeros(1, np.float32)
    pos = d["start"][:, None] + frac[None, :, None] * (d["end"] - d["start"])[:, None]  # (N,T,2)
    theta = d["theta"][:, None] + frac[None] * d["omega"][:, None]
    rep = lambda a: np.repeat(a, t)  # noqa: E731  (per-frame copy of a per-clip value)
    masks = render.shape_masks(rep(d["label"]), pos[..., 0].reshape(-1), pos[..., 1].reshape(-1),
                               rep(d["r"]), theta.reshape(-1), s)
    bg = render.render_background(d, s, p.texture)  # (N,3,S,S), static over the clip
    frames = render.paint(np.repeat(bg, t, axis=0), masks, np.repeat(d["colour"], t, axis=0))
    frames = frames + render.pixel_noise(rng, frames.shape, p.noise)
    video = render.to_uint8(frames).reshape(n, t, 3, s, s).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(video), masks.reshape(n, t, s, s)


def generate(p: AVShapesParams, seed: int, split: str, n: int) -> dict[str, torch.Tensor]:
    """The whole split: video (N,3,T,S,S) uint8, frame (N,), mask (N,1,S,S) uint8, audio
    (N,1,M,M) float, audio_mask (N,), label (N,)."""
    parts: dict[str, list] = {k: [] for k in ("video", "frame", "mask", "audio", "audio_mask", "label")}
    for c in range(-(-n // CHUNK)):
        d = _scene(p, seed, split, c)
        video, masks = render_clips(p, d, chunk_rng(seed, split, PIXELS, c))
        frame = chunk_rng(seed, split, FRAME, c).integers(0, p.frames, CHUNK)
        wave = av_sound.synthesise(d["label"], chunk_rng(seed, split, SOUND, c), p.num_classes, p.n_mels,
                                   p.audio_noise, p.audio_distractors, p.audio_unrelated)
        present = chunk_rng(seed, split, MISSING, c).random(CHUNK) >= p.missing_audio
        audio = av_sound.spectrograms(wave, p.n_mels) * torch.from_numpy(present).float()[:, None, None, None]
        parts["video"].append(torch.from_numpy(video))
        parts["frame"].append(torch.from_numpy(frame))
        parts["mask"].append(torch.from_numpy(masks[np.arange(CHUNK), frame][:, None].astype(np.uint8)))
        parts["audio"].append(audio)
        parts["audio_mask"].append(torch.from_numpy(present.astype(np.float32)))
        parts["label"].append(torch.from_numpy(d["label"]).long())
    return {k: torch.cat(v)[:n].contiguous() for k, v in parts.items()}


class AVSplit(Dataset):
    """One split held in memory; ``__getitem__`` returns the normalised multi-modal sample."""

    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        self.data = data
        self.mean = torch.tensor(MEAN).view(3, 1, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.data["label"])

    @property
    def labels(self) -> torch.Tensor:
        return self.data["label"]

    def __getitem__(self, i: int) -> Sample:
        i = int(i) + (len(self) if int(i) < 0 else 0)
        d = self.data
        video = (d["video"][i].float() / 255.0 - self.mean) / self.std
        return {
            "video": video,
            "image": video[:, int(d["frame"][i])].clone(),
            "mask": d["mask"][i].float(),
            "audio": d["audio"][i].clone(),
            "audio_mask": d["audio_mask"][i].clone(),
            "label": d["label"][i].clone(),
            "index": torch.tensor(i, dtype=torch.long),
        }


@DATASETS.register("av_shapes", params=AVShapesParams)
def av_shapes(params: AVShapesParams, cfg: DataConfig, seed: int) -> DataBundle:
    """Moving shapes (video), one frame (image) and an arbitrary class sound (audio)."""
    p = params
    s, t, m = p.image_size, p.frames, p.n_mels
    return DataBundle(
        name="av_shapes",
        train=AVSplit(generate(p, seed, "train", p.n_train)),
        val=AVSplit(generate(p, seed, "val", p.n_val)),
        test=AVSplit(generate(p, seed, "test", p.n_test)),
        num_classes=p.num_classes,
        has_masks=True,
        in_channels=3,
        image_size=s,
        mean=MEAN,
        std=STD,
        train_transform=build_train_transform(cfg.augment, s),
        class_names=list(render.SHAPE_NAMES[: p.num_classes]),
        modalities={"video": (3, t, s, s), "image": (3, s, s), "audio": (1, m, m)},
    )
