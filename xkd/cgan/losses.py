"""GAN losses: the (optionally vicinal-weighted) hinge loss (Lim & Ye 2017; Miyato et al. 2018).

D: mean(w_r * relu(1 - D(x_r, y))) + mean(w_f * relu(1 + D(G(z, y'), y)));  G: -mean(D(G(z, y), y)).
With weights from :mod:`xkd.cgan.vicinal` this is the hinge form of CcGAN's HVDL/SVDL
(Ding et al., ICLR 2021, eqs. 5-8); without weights it is the plain conditional hinge loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_d_loss(real_out: torch.Tensor, fake_out: torch.Tensor,
                 w_real: torch.Tensor | None = None,
                 w_fake: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator hinge terms (real, fake), each averaged over the batch, optionally weighted."""
    lr, lf = F.relu(1 - real_out), F.relu(1 + fake_out)
    if w_real is not None:
        lr = lr * w_real
    if w_fake is not None:
        lf = lf * w_fake
    return lr.mean(), lf.mean()


def hinge_g_loss(fake_out: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss -E[D(G(z, y), y)]."""
    return -fake_out.mean()
