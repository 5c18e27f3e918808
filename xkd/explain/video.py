"""Per-frame explanations of a video model (CCL student, seed_methods.md section 4; DESIGN 3.3).

``explain_video(model, video, target, method)`` attributes the target logit to the input clip
(B,C,T,H,W) with one Captum method, then

* spatial saliency ``S[b,t,y,x] = sum_c |A[b,c,t,y,x]|`` (channel sum of absolute attributions),
  divided by its maximum over the whole clip (so frames stay comparable; an all-zero clip stays 0);
* temporal importance ``I[b,t] = sum_{y,x} S[b,t,y,x] / sum_{t',y,x} S[b,t',y,x]`` (sums to 1 per
  clip; uniform 1/T where the attribution is identically zero).

Methods: ``saliency`` (Captum ``Saliency``, |gradient|; Simonyan et al. 2014),
``input_x_gradient`` (``InputXGradient``; Shrikumar et al. 2016) and ``integrated_gradients``
(``IntegratedGradients`` from a zero baseline, Riemann/Gauss-Legendre steps ``n_steps``;
Sundararajan et al. 2017, eq. 1). The model runs in eval mode with gradients on; afterwards its
train/eval flags, parameter gradients and hooks are as before (:func:`model_guard`).
"""

from __future__ import annotations

import warnings

import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import nn

from xkd.errors import UserError
from xkd.explain.guards import model_guard

VIDEO_METHODS = ("saliency", "input_x_gradient", "integrated_gradients")


def _attribute(model: nn.Module, x: torch.Tensor, t: torch.Tensor, method: str, n_steps: int) -> torch.Tensor:
    if method == "saliency":
        return Saliency(model).attribute(x, target=t, abs=True)
    if method == "input_x_gradient":
        return InputXGradient(model).attribute(x, target=t)
    return IntegratedGradients(model).attribute(x, baselines=0.0, target=t, n_steps=n_steps,
                                                internal_batch_size=x.shape[0])


def explain_video(model: nn.Module, video: torch.Tensor, target: torch.Tensor, method: str = "saliency",
                  n_steps: int = 32, max_batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame spatial saliency (B,T,H,W) >= 0 and temporal importance (B,T) of ``model`` on
    ``video`` (B,C,T,H,W) for class indices ``target`` (B,) (or one int for all). Clips go
    through Captum ``max_batch`` at a time; each result depends only on its own clip."""
    if method not in VIDEO_METHODS:
        raise UserError(f"explain_video: unknown method {method!r}; allowed: {', '.join(VIDEO_METHODS)}")
    if not isinstance(video, torch.Tensor) or video.dim() != 5:
        raise UserError(f"explain_video: video must be a (B,C,T,H,W) tensor, got {getattr(video, 'shape', type(video))}")
    b = video.shape[0]
    t = torch.as_tensor(target, device=video.device)
    t = t.expand(b) if t.dim() == 0 else t
    if t.shape != (b,) or t.is_floating_point():
        raise UserError(f"explain_video: target must be a (B,) integer tensor with B={b}, got shape "
                        f"{tuple(t.shape)} dtype {t.dtype}")
    if n_steps < 1 or max_batch < 1:
        raise UserError(f"explain_video: n_steps and max_batch must be >= 1 (got {n_steps}, {max_batch})")
    chunks = []
    with model_guard(model), torch.inference_mode(False), torch.enable_grad(), \
            torch.autocast(device_type=video.device.type, enabled=False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(required_grads has been set|Setting forward, "
                                "backward hooks).*")
        x = video.detach().float().clone()
        for i in range(0, b, max_batch):
            a = _attribute(model, x[i:i + max_batch].clone(), t[i:i + max_batch].long(), method, n_steps)
            chunks.append(a.detach().float().abs().sum(1))  # (b,T,H,W)
    spatial = torch.cat(chunks) if chunks else x.new_zeros(0, *x.shape[2:])
    per_frame = spatial.sum((2, 3))  # (B,T)
    total = per_frame.sum(1, keepdim=True)
    uniform = torch.full_like(per_frame, 1.0 / max(per_frame.shape[1], 1))
    temporal = torch.where(total > 0, per_frame / torch.where(total > 0, total, torch.ones_like(total)), uniform)
    peak = spatial.flatten(1).amax(1).view(-1, 1, 1, 1) if b else spatial.new_ones(0, 1, 1, 1)
    spatial = spatial / torch.where(peak > 0, peak, torch.ones_like(peak))
    return spatial.contiguous(), temporal.contiguous()
