"""``av_shapes``: sample contract, determinism, audio independent of the picture, missing audio.

References: invariants (a frame of the clip is the image; a still, noise-free clip has identical
frames; video parameters do not change sounds or labels), the sound patterns' known pitches
located with the mel formula, binomial bounds on the missing-audio fraction and a scikit-learn
classifier on the spectrograms (the audio carries the label).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch.utils.data import DataLoader

from xkd.config import DataConfig
from xkd.data import build_data
from xkd.data.av_sound import PATTERNS, SAMPLE_RATE
from xkd.errors import ConfigError

SMALL = {"n_train": 40, "n_val": 8, "n_test": 8, "image_size": 16, "frames": 5, "n_mels": 16}


def _bundle(seed: int = 0, **params):
    return build_data(DataConfig(name="av_shapes", params={**SMALL, **params}), seed=seed)


def test_sample_contract_and_bundle() -> None:
    b = _bundle(num_classes=4)
    assert b.modalities == {"video": (3, 5, 16, 16), "image": (3, 16, 16), "audio": (1, 16, 16)}
    assert (b.in_channels, b.image_size, b.num_classes, b.has_masks) == (3, 16, 4, True)
    assert "av_shapes|" in b.identity and "seed=0" in b.identity
    assert len(b.train) == 40 and len(b.val) == 8 and len(b.test) == 8
    batch = next(iter(DataLoader(b.train, batch_size=8)))
    assert batch["video"].shape == (8, 3, 5, 16, 16) and batch["video"].dtype == torch.float32
    assert batch["image"].shape == (8, 3, 16, 16) and batch["mask"].shape == (8, 1, 16, 16)
    assert batch["audio"].shape == (8, 1, 16, 16) and batch["audio_mask"].shape == (8,)
    assert batch["label"].dtype == torch.long and batch["index"].tolist() == list(range(8))
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    for i in range(8):  # the image is one frame of its clip
        assert any(torch.equal(batch["image"][i], batch["video"][i, :, t]) for t in range(5))
    # audio is standardised per clip
    torch.testing.assert_close(batch["audio"].mean((1, 2, 3)), torch.zeros(8), atol=1e-5, rtol=0)


def test_mask_marks_the_object_in_the_image() -> None:
    b = _bundle(noise=0.0, n_train=16)
    for i in range(16):
        s = b.train[i]
        inside = s["image"][:, s["mask"][0] > 0]
        assert inside.shape[1] >= 4
        torch.testing.assert_close(inside, inside[:, :1].expand_as(inside))  # one flat colour


def test_still_noise_free_clip_has_identical_frames_and_motion_moves_the_object() -> None:
    still = _bundle(speed=0.0, spin=0.0, noise=0.0).train[3]["video"]
    for t in range(1, 5):
        assert torch.equal(still[:, t], still[:, 0])
    moving = _bundle(speed=1.0, spin=0.0, noise=0.0).train
    moved = sum(not torch.equal(moving[i]["video"][:, 0], moving[i]["video"][:, -1]) for i in range(20))
    assert moved >= 15


def test_deterministic_and_independent_of_split_size() -> None:
    a, b = _bundle(seed=5), _bundle(seed=5)
    c = _bundle(seed=6)
    big = _bundle(seed=5, n_train=300)
    for k in ("video", "frame", "audio", "audio_mask", "label", "mask"):
        assert torch.equal(a.train.data[k], b.train.data[k])
        assert torch.equal(big.train.data[k][:40], a.train.data[k])
    assert not torch.equal(a.train.data["video"], c.train.data["video"])
    assert not torch.equal(a.train.data["video"], a.val.data["video"][:8].repeat(5, 1, 1, 1, 1))
    assert a.identity != c.identity


def test_sound_does_not_depend_on_what_the_shape_looks_like() -> None:
    base = _bundle(seed=1)
    other_picture = _bundle(seed=1, image_size=24, frames=3, clutter=0, scale=[0.3, 0.35], noise=0.2, texture=0.0)
    assert torch.equal(base.train.data["label"], other_picture.train.data["label"])
    assert torch.equal(base.train.data["audio"], other_picture.train.data["audio"])
    assert not torch.equal(base.train.data["video"][:, :, :3, :16, :16],
                           other_picture.train.data["video"][:, :, :, :16, :16])


def _mel_bin(freq: float, n_mels: int) -> int:
    top = 2595 * math.log10(1 + (SAMPLE_RATE / 2) / 700)
    centres = 700 * (10 ** (np.linspace(0, top, n_mels + 2)[1:-1] / 2595) - 1)
    return int(np.argmin(np.abs(centres - freq)))


def test_each_class_plays_its_own_pattern() -> None:
    b = _bundle(n_train=240, num_classes=6, n_mels=32, audio_noise=0.2, audio_distractors=0.0, audio_unrelated=0.0)
    audio, labels = b.train.data["audio"][:, 0], b.train.data["label"]
    profile = torch.stack([audio[labels == k].mean((0, 2)) for k in range(6)])  # mean level per band
    for k in (0, 1, 4):  # steady-pitch classes: loudest band is the pattern's pitch (pitch factor 2^+-0.25)
        f = PATTERNS[k][0][2]
        assert abs(int(profile[k].argmax()) - _mel_bin(f, 32)) <= 2, (k, int(profile[k].argmax()), _mel_bin(f, 32))
    # rising vs falling chirp: energy moves up in time for class 2, down for class 3
    lo, hi = _mel_bin(700, 32), _mel_bin(2000, 32)
    rise = audio[labels == 2].mean(0)
    fall = audio[labels == 3].mean(0)
    assert rise[hi, 20:].mean() > rise[hi, :8].mean() and rise[lo, :8].mean() > rise[lo, 20:].mean()
    assert fall[hi, :8].mean() > fall[hi, 20:].mean() and fall[lo, 20:].mean() > fall[lo, :8].mean()


def test_audio_predicts_the_label() -> None:
    b = _bundle(n_train=300, n_test=150, num_classes=5, audio_unrelated=0.0)
    x = b.train.data["audio"].flatten(1).numpy()
    clf = LogisticRegression(max_iter=300, C=0.05).fit(x, b.train.data["label"].numpy())
    score = clf.score(b.test.data["audio"].flatten(1).numpy(), b.test.data["label"].numpy())
    assert score > 0.6, score  # chance is 0.2


def test_missing_audio_is_zero_and_masked() -> None:
    full = _bundle(n_train=200)
    part = _bundle(n_train=200, missing_audio=0.5)
    mask = part.train.data["audio_mask"]
    n_missing = int((mask == 0).sum())
    assert 65 <= n_missing <= 135  # Binomial(200, 0.5): +-5 standard deviations
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    missing = mask == 0
    assert (part.train.data["audio"][missing] == 0).all()
    assert torch.equal(part.train.data["audio"][~missing], full.train.data["audio"][~missing])
    assert torch.equal(part.train.data["video"], full.train.data["video"])
    s = part.train[int(missing.nonzero()[0])]
    assert s["audio_mask"].item() == 0.0 and s["audio_mask"].dim() == 0 and (s["audio"] == 0).all()
    assert (full.train.data["audio_mask"] == 1).all()


@pytest.mark.parametrize("params, field", [
    ({"missing_audio": 1.0}, "data.params.missing_audio"),
    ({"missing_audio": 1.5}, "data.params.missing_audio"),
    ({"num_classes": 9}, "data.params.num_classes"),
    ({"scale": [0.3, 0.2]}, "data.params"),
])
def test_bad_params_are_one_line_config_errors(params: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(name="av_shapes", params=params), seed=0)
    assert str(e.value).startswith(field + ":") and "\n" not in str(e.value)


def test_augmentation_moves_every_frame_with_the_image_and_leaves_audio() -> None:
    from torch.utils.data import default_collate

    from xkd.data import BatchAugment, JointAugment

    b = _bundle(noise=0.0)
    assert b.train_transform is not None  # default data.augment: crop padding 4 + flip
    flip = JointAugment(b.train, BatchAugment(size=b.image_size, padding=0, hflip=True, p=1.0))
    raw = b.train[2]
    out = {k: v[0] for k, v in flip.augment_batch(default_collate([flip[2]])).items()}
    assert torch.equal(out["video"], raw["video"].flip(-1)) and torch.equal(out["image"], raw["image"].flip(-1))
    assert torch.equal(out["mask"], raw["mask"].flip(-1)) and torch.equal(out["audio"], raw["audio"])
    aug = JointAugment(b.train, b.train_transform)
    torch.manual_seed(0)
    batch = aug.augment_batch(default_collate([aug[i] for i in range(12)]))  # one batch, on its device
    shifted = 0
    for i in range(12):
        s, r = {k: v[i] for k, v in batch.items()}, b.train[i]
        t = int(b.train.data["frame"][i])
        assert torch.equal(s["image"], s["video"][:, t])  # the image is still its frame
        assert s["video"].shape == r["video"].shape and torch.equal(s["audio"], r["audio"])
        assert torch.equal((s["mask"] > 0), (s["mask"] > 0) & (s["image"] != 0).any(0, keepdim=True))
        shifted += not torch.equal(s["video"], r["video"])
    assert shifted >= 9
