"""Training precision (xkd.engine.precision): which autocast dtype / loss scaling / memory format a
``train`` section means on each device, and the bf16 autocast path run for real on CPU (finite
losses, accuracy close to fp32). The fp16 and channels_last paths are CUDA-only; here their
selection logic and the layout conversion itself are tested."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.test_engine_helpers import TinyData, make, train_cfg
from xkd.engine import fit
from xkd.engine.precision import batch_channels_last, resolve_precision, to_channels_last

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("amp,dtype,device,bf16,expect", [
    (True, "float16", CPU, None, ("fp32", None, False)),           # fp16 never on CPU
    (True, "auto", CPU, None, ("fp32", None, False)),
    (True, "bfloat16", CPU, None, ("bf16", torch.bfloat16, False)),
    (False, "bfloat16", CPU, None, ("fp32", None, False)),
    (True, "float16", CUDA, None, ("fp16+scaler", torch.float16, True)),
    (True, "bfloat16", CUDA, None, ("bf16", torch.bfloat16, False)),
    (True, "auto", CUDA, True, ("bf16", torch.bfloat16, False)),     # Ampere and later
    (True, "auto", CUDA, False, ("fp16+scaler", torch.float16, True)),  # e.g. V100, T4
    (False, "float16", CUDA, None, ("fp32", None, False)),
])
def test_precision_selection(amp, dtype, device, bf16, expect):
    p = resolve_precision(amp, dtype, False, device, bf16_supported=(lambda: bf16) if bf16 is not None else None)
    assert (p.describe(), p.dtype, p.scaler) == expect
    assert p.autocast == (p.dtype is not None)
    if not p.scaler:
        assert not p.grad_scaler().is_enabled()


def test_channels_last_only_on_cuda():
    assert resolve_precision(True, "float16", True, CUDA).channels_last
    assert resolve_precision(False, "float16", True, CUDA).describe() == "fp32+channels_last"
    assert not resolve_precision(True, "bfloat16", True, CPU).channels_last
    assert not resolve_precision(True, "float16", False, CUDA).channels_last


def test_channels_last_conversion_keeps_parameters_and_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    video = nn.Conv3d(3, 4, 3)
    x = torch.randn(2, 3, 12, 12)
    before = net(x)
    conv_w, fc_w = net[0].weight, net[5].weight
    to_channels_last(net)
    to_channels_last(video)  # 5-D weights are left alone
    assert net[0].weight is conv_w and net[5].weight is fc_w  # optimisers keep their references
    assert conv_w.is_contiguous(memory_format=torch.channels_last) and not conv_w.is_contiguous()
    assert video.weight.is_contiguous()
    batch = batch_channels_last({"image": x, "label": torch.tensor([1, 2]), "video": torch.randn(2, 3, 2, 4, 4)})
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["video"].is_contiguous() and batch["label"].dtype == torch.long
    torch.testing.assert_close(net(batch["image"]), before, rtol=1e-5, atol=1e-5)


class _Spy(nn.Module):
    """Records the autocast state the engine's training forward passes run under."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[bool, torch.dtype]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # validation runs in fp32
            self.seen.add((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return x


def _train(tmp_path, name: str, **kw):
    d = make(seed=0)
    spy = _Spy()
    d.student.drop = nn.Sequential(spy, d.student.drop)
    res = fit(d, TinyData(96), TinyData(48, seed=1), train_cfg(epochs=6, **kw), tmp_path / name,
              device=CPU, seed=3, log=None)
    return res, spy.seen


def test_bf16_autocast_on_cpu_trains_like_fp32(tmp_path):
    fp32, seen32 = _train(tmp_path, "fp32")
    bf16, seen16 = _train(tmp_path, "bf16", amp=True, amp_dtype="bfloat16")
    fp16, seen_fp16 = _train(tmp_path, "fp16", amp=True, amp_dtype="float16")
    assert {s[0] for s in seen32} == {False} and {s[0] for s in seen_fp16} == {False}
    assert seen16 == {(True, torch.bfloat16)}
    for r in (fp32, bf16):
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in r.history)
        assert r.history[-1]["loss"] < r.history[0]["loss"]  # it learns
    assert abs(bf16.last_val["val_acc"] - fp32.last_val["val_acc"]) <= 0.1  # 48 samples: <= 4 differ
    assert fp32.last_val["val_acc"] > 0.6
    # fp16 asked for on CPU is the fp32 run exactly (the same seeds, no autocast)
    assert fp16.last_val == fp32.last_val
