"""cDR-RS: conditional density-ratio estimation and rejection sampling (cGAN-KD M1, section 5.3;
Ding et al., "Efficient subsampling of realistic images from GANs conditional on a class or a
continuous variable", 2021).

The ratio model r(phi(x), y) ~ p_real(phi|y) / p_fake(phi|y) is a label-conditioned MLP on feature
vectors (standardised by the real features' mean/std) with a softplus output (r >= 0). The label
enters as a one-hot code (long labels: classification) or as the min-max normalised scalar (float
labels: regression). It is trained with the penalised softplus (SP) Bregman objective
    L = E_fake[sigma(r) r - softplus(r)] - E_real[sigma(r)] + lambda (E_fake[r] - 1)^2,
whose pointwise minimiser is r = p_real / p_fake (the derivative is sigma'(r) (q r - p)).
Rejection sampling keeps a running maximum M (from a burn-in set, raised whenever a larger ratio
appears) and accepts each proposal with probability r / M.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from xkd.gan.config import SubsampleConfig
from xkd.engine.env import derive_seed
from xkd.errors import UserError


class DensityRatio(nn.Module):
    """Callable ``(feats, labels) -> ratio >= 0`` (N,); eval mode, no gradients, batched."""

    def __init__(self, feat_mean: torch.Tensor, feat_std: torch.Tensor, task: str, num_classes: int,
                 label_lo: float, label_hi: float, hidden: int, dropout: float) -> None:
        super().__init__()
        self.task, self.num_classes = task, int(num_classes)
        self.register_buffer("feat_mean", feat_mean.float())
        self.register_buffer("feat_std", feat_std.float().clamp_min(1e-6))
        self.register_buffer("label_lo", torch.tensor(float(label_lo)))
        self.register_buffer("label_hi", torch.tensor(float(label_hi)))
        code = self.num_classes if task == "classification" else 1
        d = len(feat_mean) + code
        self.net = nn.Sequential(
            nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, 1))

    def _code(self, labels: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            labels = labels.long()
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise UserError(f"density ratio: labels must be in 0..{self.num_classes - 1}; "
                                f"got {int(labels.min())}..{int(labels.max())}")
            return F.one_hot(labels, self.num_classes).float()
        span = (self.label_hi - self.label_lo).clamp_min(1e-12)
        return ((labels.float() - self.label_lo) / span).view(-1, 1)

    def raw(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Differentiable ratio (training mode follows ``self.training``)."""
        z = (feats.float().flatten(1) - self.feat_mean) / self.feat_std
        return F.softplus(self.net(torch.cat([z, self._code(labels)], 1))).squeeze(1)

    @torch.no_grad()
    def forward(self, feats: torch.Tensor, labels: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Ratios r(phi, y) (N,) on CPU, in eval mode and chunks of ``batch_size``; the module's
        train/eval mode is restored."""
        was = self.training
        self.eval()
        dev = self.feat_mean.device
        out = torch.cat([self.raw(feats[i:i + batch_size].to(dev), labels[i:i + batch_size].to(dev))
                         for i in range(0, len(feats), batch_size)]) if len(feats) else torch.empty(0)
        self.train(was)
        return out.cpu()


def sp_bregman_loss(r_real: torch.Tensor, r_fake: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalised SP Bregman divergence (cGAN-KD section 5.3)."""
    fake_term = (torch.sigmoid(r_fake) * r_fake - F.softplus(r_fake)).mean()
    return fake_term - torch.sigmoid(r_real).mean() + penalty * (r_fake.mean() - 1) ** 2


def fit_density_ratio(real_feats: torch.Tensor, real_labels: torch.Tensor, fake_feats: torch.Tensor,
                      fake_labels: torch.Tensor, cfg: SubsampleConfig, seed: int) -> DensityRatio:
    """Train r(phi, y) on real vs fake features (fakes generated with real-like labels); long
    labels = classification (classes 0..max), float labels = regression (range of the real labels)."""
    classification = not torch.is_floating_point(real_labels)
    lo, hi = (0.0, 1.0) if classification else (float(real_labels.min()), float(real_labels.max()))
    k = int(max(real_labels.max(), fake_labels.max())) + 1 if classification else 1
    rf, ff = real_feats.float().flatten(1), fake_feats.float().flatten(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DensityRatio(rf.mean(0), rf.std(0) if len(rf) > 1 else torch.ones(rf.shape[1]),
                             "classification" if classification else "regression", k, lo, hi,
                             cfg.hidden, cfg.dropout)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.5, 0.999),
                               weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(cfg.steps):
            i = torch.randint(len(rf), (cfg.batch_size,), generator=gen)
            j = torch.randint(len(ff), (cfg.batch_size,), generator=gen)
            loss = sp_bregman_loss(model.raw(rf[i], real_labels[i]), model.raw(ff[j], fake_labels[j]),
                                   cfg.penalty)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


Propose = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
Ratio = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rejection_sample(propose: Propose, ratio: Ratio, n: int, seed: int, burn_in: int = 500,
                     batch_size: int = 256, max_proposals: int | None = None,
                     stop_at_limit: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Draw ``n`` accepted (items, labels) from ``propose(k)``, accepting each proposal with
    probability r / M, M the running maximum of r (burn-in proposals only set M).

    Stats: burn_in, proposed (after burn-in), accepted (before truncation to n),
    acceptance_rate = accepted / proposed, M (final). Reaching ``max_proposals`` proposals
    (default max(100 n, 10 batch_size)) before ``n`` acceptances is a one-line UserError, or,
    with ``stop_at_limit``, returns the fewer items accepted so far.
    """
    gen = torch.Generator().manual_seed(int(seed))
    limit = max_proposals if max_proposals is not None else max(100 * n, 10 * batch_size)
    m = 0.0
    if burn_in > 0:
        items, labels = propose(burn_in)
        m = float(ratio(items, labels).max())
    kept_items, kept_labels, accepted, proposed = [], [], 0, 0
    while accepted < n:
        if proposed >= limit:
            if stop_at_limit:
                break
            raise UserError(f"rejection sampling accepted {accepted} of {n} after {proposed} "
                            f"proposals; the density-ratio model rejects almost everything "
                            f"(check its features, or disable subsampling)")
        items, labels = propose(batch_size)
        r = ratio(items, labels).double().cpu()
        m = max(m, float(r.max()))
        u = torch.rand(len(r), generator=gen, dtype=torch.float64)
        keep = (u * m < r) if m > 0 else torch.zeros(len(r), dtype=torch.bool)
        proposed += len(r)
        accepted += int(keep.sum())
        kept_items.append(items[keep.to(items.device)])
        kept_labels.append(labels[keep.to(labels.device)])
    stats = {"burn_in": burn_in, "proposed": proposed, "accepted": accepted,
             "acceptance_rate": accepted / max(proposed, 1), "M": m}
    if not kept_items:  # n = 0 or a zero limit: nothing proposed after burn-in
        items, labels = propose(0)
        kept_items, kept_labels = [items], [labels]
    return torch.cat(kept_items)[:n], torch.cat(kept_labels)[:n], stats


def rejection_sample_per_label(propose_labels: Callable[[torch.Tensor], torch.Tensor], ratio: Ratio,
                               labels: torch.Tensor, quota: int | torch.Tensor, seed: int,
                               burn_in: int = 500, batch_size: int = 256, budget: int | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, object]]:
    """Class- (or label-) balanced cDR-RS: for each of ``labels`` (distinct values) draw
    ``quota`` (an int, or one per label) accepted items from ``propose_labels(labels_k) -> items``,
    with its own burn-in and running maximum per label (as the reference does per class).

    ``budget``: at most ``budget x quota`` proposals per label (after burn-in); a label that runs
    out keeps the fewer items it accepted. Without it, see ``rejection_sample``'s limit."""
    quotas = torch.as_tensor(quota).expand(len(labels)) if torch.as_tensor(quota).dim() == 0 \
        else torch.as_tensor(quota)
    if len(quotas) != len(labels):
        raise UserError(f"rejection sampling: {len(quotas)} quotas for {len(labels)} labels")
    all_items, all_labels, per = [], [], []
    for j, (lab, q) in enumerate(zip(labels, quotas.tolist())):
        def propose(k: int, lab: torch.Tensor = lab) -> tuple[torch.Tensor, torch.Tensor]:
            ys = lab.expand(k).clone()
            return propose_labels(ys), ys
        limit = None if budget is None else budget * int(q)
        items, ys, st = rejection_sample(propose, ratio, int(q), derive_seed(seed, j), burn_in,
                                         batch_size, max_proposals=limit,
                                         stop_at_limit=budget is not None)
        all_items.append(items)
        all_labels.append(ys)
        per.append({"label": float(lab), **st})
    stats = {"proposed": sum(p["proposed"] for p in per), "accepted": sum(p["accepted"] for p in per),
             "per_label": per}
    stats["acceptance_rate"] = stats["accepted"] / max(stats["proposed"], 1)
    return torch.cat(all_items), torch.cat(all_labels), stats


def generator_proposer(generator: nn.Module, seed: int, device: torch.device | str = "cpu"
                       ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``labels -> images`` from a trained generator, with fresh latents on every call
    (call c uses seed derive_seed(seed, c)); deterministic for a given call sequence."""
    from xkd.gan.training import generate

    calls = [0]

    def propose(labels: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return generate(generator, labels, seed=derive_seed(seed, calls[0]), device=device)

    return propose
