"""Saliency cache: build once then load without recomputing; stale, corrupt, truncated, missing
and interrupted caches are rebuilt, never used; explicit loads refuse another teacher."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import xkd.explain as E
from xkd.config import ExplainConfig
from xkd.errors import UserError
from xkd.explain.explainers import Explainer
from xkd.models.base import Features, FeatureModel
from tests.tiny_models import TwoStage


def Tiny() -> TwoStage:
    return TwoStage(classes=3, widths=(6, 8), batchnorm=False)


class Images(Dataset):
    """Deterministic sample dicts (image, label, index), like the xkd datasets return."""

    def __init__(self, n: int = 10, size: int = 16) -> None:
        g = torch.Generator().manual_seed(5)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "label": self.y[i], "index": torch.tensor(i)}


@pytest.fixture
def teacher() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Counts explainer invocations (batch sizes) to prove a hit recomputes nothing."""
    seen: list[int] = []
    original = Explainer._run  # behind explain() and Grad-CAM's native()

    def counting(self, x, *args):
        seen.append(len(x))
        return original(self, x, *args)

    monkeypatch.setattr(Explainer, "_run", counting)
    return seen


CFG = ExplainConfig(method="gradcam", target="teacher_top1", max_batch=4)


def _build(root, teacher, cfg=CFG, data=None):
    return E.SaliencyCache.build_or_load(root, teacher, data or Images(), cfg, "images:n=10:seed=5",
                                         device="cpu", batch_size=4, progress=False)


def _expected(teacher, cfg=CFG):
    d = Images()
    with torch.no_grad():
        top1 = teacher.eval()(d.x).argmax(1)
    t = d.y if cfg.target == "label" else top1
    return E.build_from_config(cfg, teacher).explain(d.x, t)


def test_build_then_load_hits_without_recompute(tmp_path, teacher, calls, caplog):
    first = _build(tmp_path, teacher)
    assert first.status == "built" and first.reason == "missing" and sum(calls) == 10
    # Grad-CAM is stored at its layer's size (the tiny model's last stage: 8x8 for 16 px images)
    assert len(first) == 10 and first.shape == (10, 1, 8, 8) and first.spec["mode"] == "native"
    m = first[3]
    assert m.shape == (1, 16, 16) and m.dtype == torch.float32
    assert torch.allclose(first.batch(torch.arange(10)), _expected(teacher), atol=1e-3)
    calls.clear()
    with caplog.at_level(logging.INFO, logger="xkd.explain.cache"):
        second = _build(tmp_path, teacher)
    assert second.status == "loaded" and calls == [] and "hit" not in second.reason
    assert second.key == first.key and second.path == first.path
    assert torch.equal(second.batch(range(10)), first.batch(range(10)))
    index = json.loads((tmp_path / "index.json").read_text())
    entry = index["caches"][first.key]
    assert index["format_version"] >= 1 and entry["complete"] is True and entry["format"] == 2
    assert entry["shape"] == [10, 1, 8, 8] and entry["dtype"] == "float16"
    assert entry["bytes"] == first.path.stat().st_size == first.layout.file_bytes
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_several_caches_share_a_root(tmp_path, teacher, calls):
    grad = _build(tmp_path, teacher)
    sal_cfg = ExplainConfig(method="saliency", target="label", max_batch=4)
    sal = _build(tmp_path, teacher, sal_cfg)
    assert sal.key != grad.key and sal.path != grad.path
    assert torch.allclose(sal.batch(range(10)), _expected(teacher, sal_cfg), atol=1e-3)
    calls.clear()
    assert _build(tmp_path, teacher).status == "loaded" and _build(tmp_path, teacher, sal_cfg).status == "loaded"
    assert calls == []
    label_cfg = ExplainConfig(method="gradcam", target="label", max_batch=4)
    assert _build(tmp_path, teacher, label_cfg).key != grad.key  # the target rule is part of the key


def test_stale_teacher_weights_rebuild(tmp_path, teacher, calls, caplog):
    old = _build(tmp_path, teacher)
    with torch.no_grad():
        teacher.fc.bias.add_(0.5)
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="xkd.explain.cache"):
        new = _build(tmp_path, teacher)
    assert new.status == "built" and "stale" in new.reason and "stale" in caplog.text
    assert sum(calls) == 10 and new.key != old.key and not old.path.exists()
    assert list(json.loads((tmp_path / "index.json").read_text())["caches"]) == [new.key]
    assert torch.allclose(new.batch(range(10)), _expected(teacher), atol=1e-3)


def test_truncated_and_missing_files_rebuilt(tmp_path, teacher, calls):
    c = _build(tmp_path, teacher)
    path = c.path
    del c
    path.write_bytes(path.read_bytes()[:-100])
    again = _build(tmp_path, teacher)
    assert again.status == "built" and "truncated" in again.reason
    path.unlink()
    assert _build(tmp_path, teacher).status == "built"
    assert _build(tmp_path, teacher).status == "loaded"


def test_load_existing_checks_teacher_and_file(tmp_path, teacher):
    c = _build(tmp_path, teacher)
    assert E.load_existing(tmp_path, c.key[:12], teacher).path == c.path
    other = Tiny()
    with pytest.raises(UserError, match="cache was built for another teacher"):
        E.load_existing(tmp_path, c.key, other)
    with pytest.raises(UserError, match="no saliency cache with key 'feedbeef'"):
        E.load_existing(tmp_path, "feedbeef")
    raw = bytearray(c.path.read_bytes())
    raw[10] ^= 1  # the header
    c.path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="another header"):
        E.load_existing(tmp_path, c.key, teacher)


def test_pickles_for_dataloader_workers(tmp_path, teacher):
    c = _build(tmp_path, teacher)
    clone = pickle.loads(pickle.dumps(c))
    assert len(pickle.dumps(c)) < 2000  # the memmap is reopened, not copied
    assert torch.equal(clone[7], c[7])


def test_teacher_hash_sees_every_tensor(teacher):
    h = E.teacher_hash(teacher)
    assert h == E.teacher_hash(teacher)
    with torch.no_grad():
        teacher.stage1[0].weight[0, 0, 0, 0] += 1e-6
    assert E.teacher_hash(teacher) != h


class BrightSpot(FeatureModel):
    """logit_0 = sum relu(x), logit_1 = -logit_0: |d logit_0 / dx| is 1 exactly where x > 0."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()

    def features(self, x: torch.Tensor) -> Features:
        a = self.act(x)
        s = a.sum((1, 2, 3))
        return Features([a], [a], s[:, None], torch.stack([s, -s], 1))

    def stage_layers(self) -> list[nn.Module]:
        return [self.act]


class Spots(Dataset):
    """Background -1, one bright 3x2 spot (+1) at a per-sample, left-right asymmetric position."""

    def __init__(self, n: int = 6) -> None:
        self.x = -torch.ones(n, 3, 16, 16)
        for i in range(n):
            r, c = 5 + i % 3, 4 + i
            self.x[i, :, r:r + 3, c:c + 2] = 1.0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "label": torch.tensor(0), "index": torch.tensor(i)}


def test_cached_map_follows_image_through_joint_augmentation(tmp_path):
    from xkd.data.transforms import BatchAugment, JointAugment

    model, data = BrightSpot(), Spots()
    cfg = ExplainConfig(method="saliency", target="label", max_batch=4)
    cache = E.SaliencyCache.build_or_load(tmp_path, model, data, cfg, "spots", device="cpu",
                                          batch_size=4, progress=False)
    assert torch.equal(cache.batch(range(6)), (data.x[:, :1] > 0).float())  # map = the spot
    aug = JointAugment(data, BatchAugment(16, padding=4), extras={"saliency": cache})
    explainer = E.build_from_config(cfg, model)
    torch.manual_seed(11)
    moved = 0
    for _ in range(3):
        for i in range(len(data)):
            s = aug.augmented(i)
            spot = (s["image"][:1] > 0).float()
            assert spot.sum() == 6  # the crop never cuts the spot off (offsets are at most 4)
            assert torch.equal(s["saliency"], spot)  # the cached map moved with its image ...
            fresh = explainer.explain(s["image"][None], s["label"][None])[0]
            assert torch.allclose(s["saliency"], fresh, atol=1e-3)  # ... as if explained afresh
            moved += int(not torch.equal(spot, cache[i]))
    assert moved >= 9  # the augmentation really moved most samples


def test_cache_of_the_older_npy_format_is_replaced(tmp_path, teacher):
    from xkd.explain.cache_store import write_index

    cfg_settings = E.build_from_config(CFG, teacher).settings()
    old = tmp_path / "gradcam-0123456789abcdef.npy"
    np.save(old, np.zeros((10, 1, 16, 16), np.float16))
    write_index(tmp_path, {"f" * 64: {"file": old.name, "complete": True, "dtype": "float16",
                                      "dataset_identity": "images:n=10:seed=5", "explainer": cfg_settings,
                                      "target": CFG.target, "shape": [10, 1, 16, 16], "sha256": "0" * 64}})
    c = _build(tmp_path, teacher)
    assert c.status == "built" and not old.exists()
    assert list(json.loads((tmp_path / "index.json").read_text())["caches"]) == [c.key]
