"""cGAN-KD M1 (cDR-RS): rejection sampling accepts with probability r/M (scipy binomial and KS
tests with fixed seeds), running maximum, per-label quotas, and the SP-Bregman ratio model
recovering a known Gaussian density ratio."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from xkd.gan.config import SubsampleConfig
from xkd.gan.subsample import (fit_density_ratio, rejection_sample, rejection_sample_per_label,
                                sp_bregman_loss)
from xkd.errors import UserError


def _uniform_proposer(seed: int):
    g = torch.Generator().manual_seed(seed)

    def propose(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(k, 1, generator=g, dtype=torch.float64), torch.zeros(k, dtype=torch.long)

    return propose


def test_accepted_sample_follows_the_target_density() -> None:
    # proposal U(0,1), target density 2x on [0,1]: r(x) = 2x, M -> 2, accepted ~ CDF x^2
    items, labels, st = rejection_sample(_uniform_proposer(1), lambda x, y: 2 * x[:, 0], n=3000,
                                         seed=2, burn_in=2000, batch_size=500)
    assert items.shape == (3000, 1) and labels.shape == (3000,)
    assert stats.kstest(items[:, 0].numpy(), lambda x: x ** 2).pvalue > 0.01
    assert stats.kstest(items[:, 0].numpy(), "uniform").pvalue < 1e-6  # the test can fail
    assert st["M"] == pytest.approx(2.0, abs=2e-3)
    assert st["acceptance_rate"] == st["accepted"] / st["proposed"]
    assert stats.binomtest(st["accepted"], st["proposed"], 0.5).pvalue > 0.01


def test_acceptance_probability_is_r_over_m() -> None:
    # items carry a group id: ratio 1 (group 1) or 0.25 (group 0), so M = 1 and the
    # acceptance probabilities are exactly 1 and 0.25
    g = torch.Generator().manual_seed(3)
    seen = []

    def propose(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        grp = torch.randint(2, (k,), generator=g)
        seen.append(grp)
        return grp, grp

    items, _, st = rejection_sample(propose, lambda x, y: torch.where(x == 1, 1.0, 0.25), n=4000,
                                    seed=4, burn_in=100, batch_size=400)
    proposed = torch.cat(seen[1:])  # without burn-in
    n0, n1 = int((proposed == 0).sum()), int((proposed == 1).sum())
    acc0 = int((torch.cat([items]) == 0).sum())
    assert st["M"] == 1.0 and st["proposed"] == n0 + n1
    # every group-1 proposal is accepted (up to truncation of the last batch to n)
    assert int((items == 1).sum()) + acc0 == 4000 and st["accepted"] - 4000 < 400
    acc0_all = st["accepted"] - n1
    assert stats.binomtest(acc0_all, n0, 0.25).pvalue > 0.01
    assert abs(acc0_all / n0 - 0.25) < 0.02


def test_running_maximum_rises_when_a_larger_ratio_appears() -> None:
    calls = []

    def propose(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(k)
        x = torch.full((k,), 0.5)
        if len(calls) == 3:
            x[0] = 10.0  # one huge ratio in the second post-burn-in batch
        return x, torch.zeros(k)

    _, _, st = rejection_sample(propose, lambda x, y: x, n=50, seed=0, burn_in=10, batch_size=20)
    assert calls[0] == 10 and st["M"] == 10.0
    # before the jump everything (r = M = .5) is accepted: 20 of batch 1; after, ~5% of 0.5s
    assert st["accepted"] >= 21 and st["proposed"] > 60


def test_per_label_quotas_give_a_balanced_set() -> None:
    g = torch.Generator().manual_seed(5)

    def propose_labels(ys: torch.Tensor) -> torch.Tensor:
        return ys.double() * 10 + torch.rand(len(ys), generator=g, dtype=torch.float64)

    ratio = lambda x, y: (x - 10 * y)  # noqa: E731  (ratio = the uniform part, like r = 2u)
    items, labels, st = rejection_sample_per_label(propose_labels, ratio, torch.tensor([0, 1, 2]),
                                                   torch.tensor([5, 30, 12]), seed=1, burn_in=50,
                                                   batch_size=16)
    assert torch.bincount(labels).tolist() == [5, 30, 12]
    assert torch.equal(torch.floor(items / 10).long(), labels)  # items were made for their label
    assert len(st["per_label"]) == 3 and st["proposed"] == sum(p["proposed"] for p in st["per_label"])
    _, lab2, _ = rejection_sample_per_label(propose_labels, ratio, torch.tensor([0, 1]), 7, seed=1)
    assert torch.bincount(lab2).tolist() == [7, 7]


def test_a_ratio_that_rejects_everything_is_one_user_error_line() -> None:
    with pytest.raises(UserError) as e:
        rejection_sample(_uniform_proposer(0), lambda x, y: torch.zeros(len(x)), n=10, seed=0,
                         burn_in=10, batch_size=10, max_proposals=100)
    assert "accepted 0 of 10 after 100 proposals" in str(e.value) and "\n" not in str(e.value)


def test_stop_at_limit_returns_the_fewer_accepted_items() -> None:
    # ratio 1 on x < 0.1, else 0 (M = 1 after burn-in): ~10% accepted, far fewer than n
    items, labels, st = rejection_sample(_uniform_proposer(0), lambda x, y: (x[:, 0] < 0.1).double(),
                                         n=1000, seed=0, burn_in=50, batch_size=100,
                                         max_proposals=300, stop_at_limit=True)
    assert st["proposed"] == 300 and len(items) == len(labels) == st["accepted"] < 1000
    assert (items[:, 0] < 0.1).all() and 10 <= st["accepted"] <= 60
    empty, _, st0 = rejection_sample(_uniform_proposer(0), lambda x, y: x[:, 0], n=5, seed=0,
                                     burn_in=0, batch_size=10, max_proposals=0, stop_at_limit=True)
    assert empty.shape == (0, 1) and st0["proposed"] == 0


def test_sp_bregman_minimiser_is_the_density_ratio() -> None:
    # one feature value seen with probability p (real) and q (fake): the loss, as a function of a
    # constant r, is minimal at r = p / q
    p, q = 0.3, 0.6
    r = torch.linspace(0.05, 2.0, 400)
    loss = torch.stack([q * (torch.sigmoid(v) * v - torch.nn.functional.softplus(v)) - p * torch.sigmoid(v)
                        for v in r])
    assert float(r[loss.argmin()]) == pytest.approx(p / q, abs=0.01)
    # the penalty term pushes E_fake[r] to 1
    assert float(sp_bregman_loss(torch.ones(4), torch.ones(4), 1.0)) < float(
        sp_bregman_loss(torch.ones(4), 3 * torch.ones(4), 1.0))


def test_fitted_ratio_tracks_the_true_conditional_ratio() -> None:
    # real: x | y ~ N(mu_y, 0.5^2 I) with mu_0 = (1, 0), mu_1 = (-1, 0); fake: x | y ~ N(0, I)
    g = torch.Generator().manual_seed(0)
    n = 3000
    yr, yf = torch.randint(2, (n,), generator=g), torch.randint(2, (n,), generator=g)
    mu = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    xr = mu[yr] + 0.5 * torch.randn(n, 2, generator=g)
    xf = torch.randn(n, 2, generator=g)
    cfg = SubsampleConfig(steps=250, hidden=32, lr=1e-2, dropout=0.0, batch_size=128)
    model = fit_density_ratio(xr, yr, xf, yf, cfg, seed=0)
    xt, yt = torch.randn(2000, 2, generator=g), torch.randint(2, (2000,), generator=g)
    true = torch.distributions.Normal(mu[yt], 0.5).log_prob(xt).sum(1) - \
        torch.distributions.Normal(0.0, 1.0).log_prob(xt).sum(1)
    est = model(xt, yt)
    assert (est >= 0).all()
    assert stats.spearmanr(est.numpy(), true.numpy()).statistic > 0.85
    assert stats.pearsonr(est.numpy(), true.exp().numpy()).statistic > 0.85  # the scale too
    # label conditioning matters: swapping the labels destroys the agreement
    assert stats.spearmanr(model(xt, 1 - yt).numpy(), true.numpy()).statistic < 0.3
    assert float(model(xf, yf).mean()) == pytest.approx(1.0, abs=0.35)
    small = cfg.model_copy(update={"steps": 10})
    first = fit_density_ratio(xr, yr, xf, yf, small, seed=3)(xt, yt)
    assert torch.equal(fit_density_ratio(xr, yr, xf, yf, small, seed=3)(xt, yt), first)  # seeded
    assert not torch.equal(fit_density_ratio(xr, yr, xf, yf, small, seed=4)(xt, yt), first)


def test_regression_ratio_uses_the_continuous_label() -> None:
    # real: x = y + small noise; fake: x independent of y -> ratio high where x ~ y
    g = torch.Generator().manual_seed(1)
    y = torch.rand(3000, generator=g) * 10
    xr = (y / 10 + 0.05 * torch.randn(3000, generator=g)).view(-1, 1)
    xf = torch.rand(3000, 1, generator=g)
    cfg = SubsampleConfig(steps=250, hidden=32, lr=1e-2, dropout=0.0, batch_size=128)
    model = fit_density_ratio(xr, y, xf, y, cfg, seed=0)
    near = model(torch.tensor([[0.5]]), torch.tensor([5.0]))
    far = model(torch.tensor([[0.9]]), torch.tensor([1.0]))
    assert float(near) > 3 * float(far)
