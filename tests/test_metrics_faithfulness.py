"""Faithfulness metrics against plain float64 per-sample references, Captum, scipy and invariants."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from captum.metrics import infidelity as captum_infidelity
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve
from scipy.stats import pearsonr
from sklearn.metrics import auc as sk_auc
from torch import nn

import xkd.metrics as M

TOL = 1e-5


def tiny_cnn(seed: int = 0, c: int = 3, hw: int = 8, k: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * hw * hw, k)).eval()


def fixture(n: int = 3, c: int = 3, hw: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, hw, hw, generator=g)
    a = torch.rand(n, 1, hw, hw, generator=g)  # continuous: tie-free
    return x, a


def prob64(model64: nn.Module, img: np.ndarray, t: int, output: str = "softmax") -> float:
    with torch.no_grad():
        z = model64(torch.from_numpy(np.ascontiguousarray(img))[None])[0]
    return float(z.softmax(0)[t] if output == "softmax" else z[t])


def ref_blur(img: np.ndarray, size: int, sigma: float) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-r**2 / (2 * sigma**2))
    k = np.outer(g, g) / np.outer(g, g).sum()
    return np.stack([ndimage.convolve(ch, k, mode="constant", cval=0.0) for ch in img])


def ref_curve(model64, x, a, t, steps, mode, fill):
    """Plain per-sample RISE deletion/insertion curve and AUC (numpy, float64)."""
    c, h, w = x.shape
    hw = h * w
    s = math.ceil(hw / steps)
    T = math.ceil(hw / s)
    order = np.argsort(-a.ravel(), kind="stable")
    ys = []
    for step in range(T + 1):
        idx = order[:min(step * s, hw)]
        if mode == "deletion":
            img = x.reshape(c, -1).copy()
            img[:, idx] = fill.reshape(c, -1)[:, idx]
        else:
            img = fill.reshape(c, -1).copy()
            img[:, idx] = x.reshape(c, -1)[:, idx]
        ys.append(prob64(model64, img.reshape(c, h, w), t))
    return np.array(ys), sk_auc(np.arange(T + 1) / T, ys)


@pytest.mark.parametrize("steps,baseline", [(10, "zero"), (16, "mean"), (7, "blur")])
def test_deletion_insertion_match_plain_reference(steps, baseline):
    model = tiny_cnn()
    model64 = copy.deepcopy(model).double()
    x, a = fixture()
    res = M.deletion_insertion(model, x, a, steps=steps, deletion_baseline=baseline,
                               insertion_start="blur", blur_size=5, blur_sigma=2.0, max_batch=7)
    target = model(x).argmax(1)
    for n in range(x.shape[0]):
        xn, an = x[n].double().numpy(), a[n, 0].double().numpy()
        fill = {"zero": np.zeros_like(xn), "mean": xn.mean((1, 2), keepdims=True) + 0 * xn,
                "blur": ref_blur(xn, 5, 2.0)}[baseline]
        ys, auc_ = ref_curve(model64, xn, an, int(target[n]), steps, "deletion", fill)
        np.testing.assert_allclose(res["deletion"].curves[n].numpy(), ys, atol=TOL)
        assert abs(float(res["deletion"].values[n]) - auc_) < TOL
        ys, auc_ = ref_curve(model64, xn, an, int(target[n]), steps, "insertion", ref_blur(xn, 5, 2.0))
        np.testing.assert_allclose(res["insertion"].curves[n].numpy(), ys, atol=TOL)
        assert abs(float(res["insertion"].values[n]) - auc_) < TOL
    # the registered single metrics and any max_batch give the same numbers
    d = M.METRICS.build("deletion", steps=steps, baseline=baseline, blur_size=5, blur_sigma=2.0,
                        max_batch=1000).compute(model=model, x=x, attribution=a)
    assert torch.allclose(d.values, res["deletion"].values, atol=1e-7)
    assert res["deletion"].curves.shape[1] == res["deletion"].curve_x.numel()


def test_trapezoid_auc_matches_numpy():
    y = torch.rand(4, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    from xkd.metrics._ops import trapezoid_auc
    ref = [np.trapezoid(r, dx=1 / 8) for r in y.numpy()]
    np.testing.assert_allclose(trapezoid_auc(y).numpy(), ref, atol=1e-12)


def linear_model(c: int = 3, hw: int = 8) -> tuple[nn.Module, torch.Tensor]:
    """Two-class linear model: logit_1 = w.x = -logit_0, so p_1 = sigmoid(2 w.x)."""
    torch.manual_seed(3)
    w = torch.randn(c * hw * hw)
    lin = nn.Linear(c * hw * hw, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([-w, w]))
    return nn.Sequential(nn.Flatten(), lin).eval(), w.view(c, hw, hw)


def test_perfect_map_beats_reversed_map_on_linear_model():
    model, w = linear_model()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    target = torch.ones(4, dtype=torch.long)
    contrib = (x * w).sum(1, keepdim=True)  # exact per-pixel contribution to logit_1
    good = M.deletion_insertion(model, x, contrib, target, steps=16)
    bad = M.deletion_insertion(model, x, -contrib, target, steps=16)
    assert (good["deletion"].values < bad["deletion"].values).all()
    assert (good["insertion"].values > bad["insertion"].values).all()
    # greedy order is optimal for the logit at every step: pointwise below a random order
    rnd = M.random_attribution(contrib.shape, torch.Generator().manual_seed(0))
    lg = M.deletion(model, x, contrib, target, steps=16, output="logit")
    lr = M.deletion(model, x, rnd, target, steps=16, output="logit")
    assert (lg.curves <= lr.curves + 1e-5).all()
    gen = torch.Generator()
    morf_g = M.aopc(model, x, contrib, target, generator=gen.manual_seed(0), patch_size=2)
    morf_b = M.aopc(model, x, -contrib, target, generator=gen.manual_seed(0), patch_size=2)
    assert (morf_g.values > morf_b.values).all()
    lerf_g = M.aopc(model, x, contrib, target, generator=gen.manual_seed(0), order="lerf", patch_size=2)
    assert (lerf_g.values < morf_g.values).all()


def ref_aopc(model64, x, a, t, u, p, order, L):
    c, h, w = x.shape
    gh, gw = math.ceil(h / p), math.ceil(w / p)
    sums = np.array([a[i * p:(i + 1) * p, j * p:(j + 1) * p].sum() for i in range(gh) for j in range(gw)])
    ranking = np.argsort(-sums if order == "morf" else sums, kind="stable")
    noise = x.min() + (x.max() - x.min()) * u
    img = x.copy()
    ys = [prob64(model64, img, t)]
    for patch in ranking[:L]:
        i, j = divmod(int(patch), gw)
        img[:, i * p:(i + 1) * p, j * p:(j + 1) * p] = noise[:, i * p:(i + 1) * p, j * p:(j + 1) * p]
        ys.append(prob64(model64, img, t))
    ys = np.array(ys)
    return ys, np.mean(ys[0] - ys)


@pytest.mark.parametrize("order,regions", [("morf", None), ("lerf", 5)])
def test_aopc_matches_plain_reference(order, regions):
    model = tiny_cnn(hw=10)
    model64 = copy.deepcopy(model).double()
    x, a = fixture(hw=10)  # 10 is not a multiple of the patch size: border patches are smaller
    res = M.aopc(model, x, a, generator=torch.Generator().manual_seed(4), order=order,
                 patch_size=4, regions=regions, max_batch=5)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(4)).double().numpy()
    target = model(x).argmax(1)
    L = 9 if regions is None else regions
    for n in range(x.shape[0]):
        ys, val = ref_aopc(model64, x[n].double().numpy(), a[n, 0].double().numpy(),
                           int(target[n]), u[n], 4, order, L)
        np.testing.assert_allclose(res.curves[n].numpy(), ys, atol=TOL)
        assert abs(float(res.values[n]) - val) < TOL


def test_faithfulness_correlation_matches_reference_and_is_one_for_exact_contributions():
    model = tiny_cnn()
    model64 = copy.deepcopy(model).double()
    x, a = fixture()
    runs, frac, hw = 12, 0.1, 64
    res = M.faithfulness_correlation(model, x, a, generator=torch.Generator().manual_seed(2),
                                     runs=runs, subset_fraction=frac, max_batch=5)
    k = round(frac * hw)
    g = torch.Generator().manual_seed(2)
    subsets = [torch.rand(3, hw, generator=g).topk(k, dim=1).indices.numpy() for _ in range(runs)]
    target = model(x).argmax(1)
    for n in range(3):
        xn, an = x[n].double().numpy(), a[n, 0].double().numpy().ravel()
        f0 = prob64(model64, xn, int(target[n]), "logit")
        sums, drops = [], []
        for r in range(runs):
            img = xn.reshape(3, -1).copy()
            img[:, subsets[r][n]] = 0.0
            drops.append(f0 - prob64(model64, img.reshape(xn.shape), int(target[n]), "logit"))
            sums.append(an[subsets[r][n]].sum())
        assert abs(float(res.values[n]) - pearsonr(sums, drops).statistic) < TOL
    lin, w = linear_model()
    contrib = (x * w).sum(1, keepdim=True)
    ones = torch.ones(3, dtype=torch.long)
    r = M.faithfulness_correlation(lin, x, contrib, ones, generator=torch.Generator().manual_seed(0),
                                   runs=20)
    assert torch.allclose(r.values, torch.ones(3, dtype=torch.float64), atol=1e-5)
    u = M.faithfulness_correlation(lin, x, M.uniform_attribution(contrib.shape), ones,
                                   generator=torch.Generator().manual_seed(0), runs=20)
    assert u.n_nan == 3  # constant subset sums: correlation undefined


@pytest.mark.parametrize("normalize", [True, False])
def test_infidelity_matches_captum_and_plain_definition(normalize):
    model = tiny_cnn()
    model64 = copy.deepcopy(model).double()
    x, a = fixture()
    n_s, std = 6, 0.3
    res = M.infidelity(model, x, a, generator=torch.Generator().manual_seed(9), n_perturb_samples=n_s,
                       noise_std=std, normalize=normalize, max_batch=64)
    noise = std * torch.randn(3 * n_s, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    target = model(x).argmax(1)

    def perturb(inp):
        pert = noise.expand_as(inp)
        return pert, inp - pert

    direct = captum_infidelity(model, perturb, x, a.expand_as(x) / 3, target=target,
                               n_perturb_samples=n_s, normalize=normalize)
    assert torch.allclose(res.values, direct.double(), rtol=1e-6, atol=1e-9)
    for n in range(3):
        xn, an = x[n].double().numpy(), a[n, 0].double().numpy()
        f0 = prob64(model64, xn, int(target[n]), "logit")
        ia, df = [], []
        for j in range(n_s):
            i_p = noise[n * n_s + j, 0].double().numpy()
            ia.append((i_p * an).sum())
            df.append(f0 - prob64(model64, xn - i_p[None], int(target[n]), "logit"))
        ia, df = np.array(ia), np.array(df)
        beta = (ia * df).mean() / (ia * ia).mean() if normalize else 1.0
        ref = np.mean((beta * ia - df) ** 2)
        assert abs(float(res.values[n]) - ref) <= 1e-4 * max(ref, 1e-3)
    lin, w = linear_model()
    ones = torch.ones(3, dtype=torch.long)
    exact = M.infidelity(lin, x, w.sum(0).expand(3, 1, 8, 8), ones, normalize=False,
                         generator=torch.Generator().manual_seed(0))
    assert exact.values.abs().max() < 1e-8  # I^T a equals the logit change exactly


def test_max_sensitivity_matches_plain_definition():
    lin, w = linear_model()

    def input_x_grad(inp, target):
        inp = inp.detach().clone().requires_grad_(True)
        out = lin(inp).gather(1, target.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(out, inp)
        return (g * inp).abs().sum(1, keepdim=True).detach()

    x, _ = fixture()
    t = torch.tensor([1, 0, 1])
    n_s, r = 5, 0.1
    res = M.max_sensitivity(input_x_grad, x, t, generator=torch.Generator().manual_seed(3),
                            radius=r, n_perturb_samples=n_s, max_batch=100)
    d = (2 * torch.rand(3 * n_s, 3, 8, 8, generator=torch.Generator().manual_seed(3)) - 1) * r
    wt = torch.stack([-w, w]).double()
    for n in range(3):
        phi0 = (x[n].double() * wt[t[n]]).abs().sum(0)
        worst = max(float(((x[n].double() + d[n * n_s + j].double()) * wt[t[n]]).abs().sum(0)
                          .sub(phi0).norm() / phi0.norm()) for j in range(n_s))
        assert abs(float(res.values[n]) - worst) < 1e-5
    const = M.max_sensitivity(lambda inp, tt: torch.ones(inp.shape[0], 1, 8, 8), x, t,
                              generator=torch.Generator().manual_seed(3))
    assert (const.values == 0).all()


def ref_linear_impute(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's linear system assembled pixel by pixel and solved with scipy spsolve."""
    c, h, w = img.shape
    ids = -np.ones((h, w), dtype=int)
    rem = np.argwhere(removed)
    for i, (r, q) in enumerate(rem):
        ids[r, q] = i
    nb = [(-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6), (0, 1, 1 / 6),
          (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12)]
    A = sparse.lil_matrix((len(rem), len(rem)))
    b = np.zeros((len(rem), c))
    for i, (r, q) in enumerate(rem):
        for dr, dq, wt in nb:
            rr, qq = r + dr, q + dq
            if 0 <= rr < h and 0 <= qq < w:
                A[i, i] += wt
                if removed[rr, qq]:
                    A[i, ids[rr, qq]] -= wt
                else:
                    b[i] += wt * img[:, rr, qq]
    sol = spsolve(A.tocsc(), b).reshape(len(rem), c)
    out = img.copy()
    out[:, removed] = sol.T
    return out


def test_linear_imputation_matches_spsolve_and_is_affine_equivariant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 12, 12, generator=g)
    removed = torch.rand(3, 1, 12, 12, generator=g) > 0.4
    removed[1] = False
    removed[1, 0, 2:9, 3:11] = True  # a blob touching nothing but its border ring
    removed[2] = True
    removed[2, 0, 11, 11] = False  # everything removed but one corner pixel
    got = M.linear_impute(x, removed)
    for n in range(3):
        ref = ref_linear_impute(x[n].double().numpy(), removed[n, 0].numpy())
        np.testing.assert_allclose(got[n].numpy(), ref, atol=1e-7)
    scaled = M.linear_impute(2.0 * x + 0.5, removed)
    assert torch.allclose(scaled, 2.0 * got + 0.5, atol=1e-7)
    # one interior removed pixel: the 1/6, 1/12 weighted mean of its 8 neighbours
    one = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    one[0, 0, 2, 2] = True
    y = torch.arange(25.0, dtype=torch.float64).view(1, 1, 5, 5) ** 2
    val = (y[0, 0, 1, 2] + y[0, 0, 3, 2] + y[0, 0, 2, 1] + y[0, 0, 2, 3]) / 6 + \
          (y[0, 0, 1, 1] + y[0, 0, 1, 3] + y[0, 0, 3, 1] + y[0, 0, 3, 3]) / 12
    assert abs(float(M.linear_impute(y, one)[0, 0, 2, 2]) - float(val)) < 1e-9


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_matches_plain_reference(order):
    model = tiny_cnn()
    model64 = copy.deepcopy(model).double()
    x, a = fixture()
    pct, noise = [0.2, 0.5, 0.9], [0.01, 0.02, 0.03]
    res = M.road(model, x, a, generator=torch.Generator().manual_seed(6), order=order,
                 percentages=pct, noise=noise, max_batch=2)
    g = torch.Generator().manual_seed(6)
    tie = torch.randn(3, 64, generator=g).double().numpy()
    eps = [torch.randn(x.shape, generator=g).double().numpy() for _ in pct]
    target = model(x).argmax(1)
    for n in range(3):
        xn, an = x[n].double().numpy(), a[n, 0].double().numpy().ravel()
        flat = (an - an.min()) / (an.max() - an.min() + 1e-5) + 1e-4 * tie[n]
        ranking = np.argsort(-flat, kind="stable")
        for j, p in enumerate(pct):
            k = math.floor(64 * p)
            removed = np.zeros(64, dtype=bool)
            removed[ranking[:k] if order == "morf" else ranking[k:]] = True
            removed = removed.reshape(8, 8)
            img = ref_linear_impute(xn, removed)
            img[:, removed] += (np.array(noise)[:, None, None] * eps[j][n])[:, removed]
            assert abs(float(res.curves[n, j]) - prob64(model64, img, int(target[n]))) < TOL
    assert torch.allclose(res.values, res.curves.mean(1))
    assert set(res.extras["hit"].unique().tolist()) <= {0.0, 1.0}
