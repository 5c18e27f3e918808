"""GAN losses: the (optionally vicinal-weighted) hinge loss (Lim & Ye 2017; Miyato et al. 2018).

D: sum(w_r relu(1 - D(x_r, y))) / sum(w_r) + sum(w_f relu(1 + D(G(z, y'), y))) / sum(w_f);
G: -mean(D(G(z, y), y)). With weights from :mod:`xkd.gan.vicinal` this is the hinge form of
CcGAN's HVDL/SVDL (Ding et al., ICLR 2021, eqs. 5-8) with self-normalised weights (each term a
weighted average), so that the real and fake terms stay balanced whatever the weights' scale
(unnormalised soft weights made the real term ~2x smaller and D call everything fake);
without weights it is the plain conditional hinge loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_d_loss(real_out: torch.Tensor, fake_out: torch.Tensor,
                 w_real: torch.Tensor | None = None,
                 w_fake: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator hinge terms (real, fake), each a (weighted) average over the batch."""
    lr, lf = F.relu(1 - real_out), F.relu(1 + fake_out)
    real = (lr * w_real).sum() / w_real.sum().clamp_min(1e-12) if w_real is not None else lr.mean()
    fake = (lf * w_fake).sum() / w_fake.sum().clamp_min(1e-12) if w_fake is not None else lf.mean()
    return real, fake


def hinge_g_loss(fake_out: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss -E[D(G(z, y), y)]."""
    return -fake_out.mean()
