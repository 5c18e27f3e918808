"""Persistent DataLoader workers (issue 18): one set of worker processes serves every epoch of a
fit, the weights equal a run without workers bit for bit, and a kill + ``--resume`` with
persistent workers equals the uninterrupted run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.test_engine_helpers import TinyData, make, state, train_cfg
from xkd.config import AugmentConfig
from xkd.data import JointAugment, build_train_transform
from xkd.engine import fit, set_determinism
from xkd.engine.loaders import EpochBatches

CPU = torch.device("cpu")


class PidLoggingData(TinyData):
    """TinyData without its per-sample random flip (a reader, as every built-in dataset is) that
    appends the reading process's pid to ``log`` (one line per sample)."""

    def __init__(self, n: int, log: Path, seed: int = 0) -> None:
        super().__init__(n, seed=seed, flip=False)
        self.log = log

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return super().__getitem__(i)


@pytest.fixture(autouse=True)
def _restore_determinism():
    yield
    set_determinism(False)


def _fit(tmp: Path, name: str, workers: int, persistent: bool, **kw):
    """(distiller, fit result, pid of every sample read)."""
    log = tmp / f"{name}.pids"
    log.touch()
    aug = build_train_transform(AugmentConfig(crop_padding=2, hflip=True), 8)
    train = JointAugment(PidLoggingData(40, log), aug)
    val = PidLoggingData(16, log, seed=1)
    d = make(seed=0) if "distiller" not in kw else kw.pop("distiller")
    res = fit(d, train, val, train_cfg(epochs=3), tmp / name, device=CPU, seed=3, deterministic=True,
              num_workers=workers, persistent_workers=persistent, log=None, **kw)
    reads = [int(p) for p in log.read_text().split()]
    return d, res, reads


def test_persistent_workers_serve_every_epoch_with_the_same_weights(tmp_path: Path) -> None:
    bare, r0, reads0 = _fit(tmp_path, "bare", 0, True)
    assert set(reads0) == {os.getpid()} and len(reads0) == 3 * (40 + 16)  # the main process reads
    kept, r1, reads1 = _fit(tmp_path, "kept", 2, True)
    fresh, r2, reads2 = _fit(tmp_path, "fresh", 2, False)
    # 3 epochs x (train + val): persistent -> one pair of workers per loader; else new ones each time
    assert os.getpid() not in reads1 and len(set(reads1)) == 4
    assert len(set(reads2)) == 2 * 3 * 2
    # every sample read once per epoch: no second, discarded iterator prefetching batches
    assert len(reads1) == len(reads2) == len(reads0)
    for other, r in ((kept, r1), (fresh, r2)):
        for k, v in state(bare).items():
            assert torch.equal(v, state(other)[k]), k
        assert r.last_val == r0.last_val


def test_resume_with_persistent_workers_is_bit_identical(tmp_path: Path) -> None:
    full, r_full, _ = _fit(tmp_path, "full", 2, True)
    _fit(tmp_path, "part", 2, True, stop_after_epoch=1)
    resumed, r_res, _ = _fit(tmp_path, "part", 2, True, resume=True, distiller=make(seed=5))
    for k, v in state(full).items():
        assert torch.equal(v, state(resumed)[k]), k
    assert r_res.complete and r_res.last_val == r_full.last_val


def test_epoch_batches_are_read_when_an_epoch_starts() -> None:
    from torch.utils.data import DataLoader

    sampler = EpochBatches()
    loader = DataLoader(list(range(10)), batch_sampler=sampler)
    sampler.set([[0, 1], [2]])
    assert [b.tolist() for b in loader] == [[0, 1], [2]] and len(loader) == 2
    sampler.set([[9, 8, 7]])
    assert [b.tolist() for b in loader] == [[9, 8, 7]] and len(loader) == 1


def test_persistent_workers_under_torchrun_equal_per_epoch_loaders(tmp_path: Path) -> None:
    """2 gloo ranks, 2 workers each, the saliency-weighted ReviewKD student (its workers read the
    teacher-saliency cache): persistent workers give the weights of loaders rebuilt per epoch."""
    from tests.conftest import SHRUNK_SHAPES
    from tests.test_ddp_methods import _torchrun

    student = ("students=[{name: rg, method: reviewkd, model: {name: resnet8}, "
               "params: {mid_channels: 8, warmup_epochs: 0, saliency_mix: 0.8}}]")
    weights = {}
    for persistent in (True, False):
        out = tmp_path / f"persistent-{persistent}"
        proc = _torchrun("quickstart.yaml", out, SHRUNK_SHAPES + [
            student, "data.num_workers=2", f"data.persistent_workers={str(persistent).lower()}",
            "teacher.train.epochs=1", "train.epochs=3", "train.batch_size=8"], smoke=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ckpt = torch.load(out / "seed-0" / "students" / "rg" / "last.pt", weights_only=True)
        assert ckpt["epoch"] == 3
        weights[persistent] = ckpt["trainable"]
    assert weights[True].keys() == weights[False].keys()
    for k, v in weights[True].items():
        assert torch.equal(v, weights[False][k]), k
