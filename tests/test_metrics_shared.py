"""Shared forwards and activation-sized chunks of the perturbation metrics (issue 17)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import xkd.metrics as M
from xkd.metrics import _forward


class Counting(nn.Module):
    """Wraps a model and counts the images it forwards."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        self.calls += 1
        return self.inner(x)


def tiny(seed: int = 0, hw: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * hw * hw, 5)).eval()


N, HW = 3, 8
PARAMS = {
    "deletion": {"steps": 16, "baseline": "zero", "max_batch": 7},
    "insertion": {"steps": 16, "max_batch": 7},
    # one-pixel patches filled with U[0, 0] = 0: the perturbed inputs of deletion at every 4th step
    "aopc_morf": {"patch_size": 1, "noise_low": 0.0, "noise_high": 0.0, "max_batch": 7},
    "faithfulness_correlation": {"runs": 5, "max_batch": 7},
    "road_morf": {"percentages": [0.5], "tol": 1e-6, "max_batch": 7},
}


def _inputs(model: nn.Module) -> dict:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 3, HW, HW, generator=g)
    a = torch.rand(N, 1, HW, HW, generator=g)
    return {"model": model, "x": x, "attribution": a}


def _run(model: Counting) -> dict[str, M.MetricResult]:
    out = {}
    for name, p in PARAMS.items():
        out[name] = M.METRICS.build(name, **p).compute(**_inputs(model))
    return out


def test_shared_forwards_give_the_same_values_with_fewer_forwards():
    alone = Counting(tiny())
    separate = _run(alone)
    shared_model = Counting(tiny())
    with M.shared_forwards() as cache:
        shared = _run(shared_model)
    for name in PARAMS:
        assert torch.allclose(shared[name].values, separate[name].values, rtol=0, atol=1e-6), name
        if separate[name].curves is not None:
            assert torch.allclose(shared[name].curves, separate[name].curves, rtol=0, atol=1e-6)
    # separately: each metric's clean forward (5N), deletion 16N, insertion 16N, AOPC 64N,
    # faithfulness correlation 5N, ROAD N
    assert alone.images == N * (5 + 16 + 16 + 64 + 5 + 1)
    # shared: one clean forward, and AOPC only forwards the 48 pixel counts deletion did not
    assert shared_model.images == N * (1 + 16 + 16 + 48 + 5 + 1)
    assert cache.requested == alone.images and cache.run == shared_model.images
    # outside the block nothing is cached
    again = Counting(tiny())
    _run(again)
    assert again.images == alone.images


def test_deletion_reuses_the_aopc_curve_points_it_needs():
    m = Counting(tiny())
    inp = _inputs(m)
    with M.shared_forwards():
        aopc = M.METRICS.build("aopc_morf", **PARAMS["aopc_morf"]).compute(**inp)
        before = m.images
        dele = M.METRICS.build("deletion", **PARAMS["deletion"]).compute(**inp)
    assert m.images == before  # every deletion point was an AOPC point
    # deletion step t removes 4t pixels: AOPC curve point k = 4t (both include the clean point)
    assert torch.allclose(dele.curves, aopc.curves[:, ::4], rtol=0, atol=1e-6)


def test_a_changed_model_is_not_served_from_the_cache():
    m = Counting(tiny())
    inp = _inputs(m)
    with M.shared_forwards():
        first = M.deletion(m, inp["x"], inp["attribution"], steps=4)
        with torch.no_grad():
            m.inner[0].weight.mul_(-1.0)
        second = M.deletion(m, inp["x"], inp["attribution"], steps=4)
        fresh = M.deletion(Counting(copy.deepcopy(m.inner)), inp["x"], inp["attribution"], steps=4)
    assert not torch.allclose(first.curves, second.curves)
    assert torch.allclose(second.curves, fresh.curves, rtol=0, atol=1e-6)


def test_chunks_follow_the_activation_size_and_max_batch_stays_an_upper_bound():
    m = Counting(tiny(hw=16))
    x = torch.randn(2, 3, 16, 16)
    a = torch.rand(2, 1, 16, 16)
    sizes: list[int] = []
    m.register_forward_hook(lambda _m, i, _o: sizes.append(i[0].shape[0]))
    budget = _forward.ACTIVATION_BUDGET["cpu"]
    try:
        # largest layer output: the 4x16x16 float conv/ReLU output (4 KiB) vs the 3 KiB input
        _forward.ACTIVATION_BUDGET["cpu"] = 10 * 4 * 16 * 16 * 4
        ref = M.deletion(m, x, a, steps=32, max_batch=1000)
        assert _forward.activation_bytes(m, x) == 4 * 16 * 16 * 4
        assert max(sizes[1:]) == 10  # after the probing clean forward: 10 images per chunk
        sizes.clear()
        small = M.deletion(m, x, a, steps=32, max_batch=3)
        assert max(sizes) == 3
    finally:
        _forward.ACTIVATION_BUDGET["cpu"] = budget
    assert torch.allclose(ref.curves, small.curves, rtol=0, atol=1e-6)
    assert not ref.values.is_inference() and not ref.curves.is_inference()


class ViewNet(nn.Module):
    """Flattens a conv feature map with ``.view``, which a channels_last tensor cannot do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        return self.fc(f.view(f.shape[0], -1))


@pytest.mark.parametrize("make", [tiny, ViewNet])
def test_channels_last_forwards_match_the_default_layout_and_leave_the_model_as_it_was(make):
    x, a = _inputs(tiny())["x"], _inputs(tiny())["attribution"]
    m = make()
    params = {k: (p, p.stride()) for k, p in m.named_parameters()}
    try:
        _forward.CHANNELS_LAST["cpu"] = False
        ref = M.deletion_insertion(make(), x, a, steps=8)
    finally:
        _forward.CHANNELS_LAST["cpu"] = True
    got = M.deletion_insertion(m, x, a, steps=8)
    for k in ref:
        assert torch.allclose(got[k].curves, ref[k].curves, rtol=0, atol=1e-6)
    assert all(p is params[k][0] and p.stride() == params[k][1] for k, p in m.named_parameters())
    assert all(not p.is_inference() for p in m.parameters())
