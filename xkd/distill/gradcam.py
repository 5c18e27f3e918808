"""Grad-CAM for distillation losses (Selvaraju et al., ICCV 2017).

Grad-CAM of class c at a layer with activations A (B,K,h,w): α_k = mean_{hw} ∂z_c/∂A_k,
map = ReLU(Σ_k α_k A_k), optionally upsampled to the input size (bilinear).

* :func:`differentiable_gradcam` is used for the *student* in e2KD: the gradient is taken with
  ``create_graph=True`` so a loss on the map back-propagates through it (double backprop). Captum's
  LayerGradCam detaches, so this small version is written here; a test checks it equals Captum.
* :func:`captum_gradcam` wraps ``captum.attr.LayerGradCam`` (``relu_attributions=True``) for the
  frozen *teacher* (e2KD, and level-specific saliency of the weighted ReviewKD); its maps are
  detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn


def differentiable_gradcam(activations: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                           out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Grad-CAM (B,1,h,w) or (B,1,*out_size) of ``logits[b, target[b]]`` w.r.t. ``activations``.

    ``activations`` must be part of the graph that produced ``logits`` (e.g. the last stage of
    ``student.features(x)``). The result keeps the graph (``create_graph=True``).
    """
    score = logits.gather(1, target.view(-1, 1).long()).sum()
    (grads,) = torch.autograd.grad(score, activations, create_graph=True)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((alpha * activations).sum(dim=1, keepdim=True))
    if out_size is not None and tuple(cam.shape[-2:]) != tuple(out_size):
        cam = F.interpolate(cam, size=out_size, mode="bilinear", align_corners=False)
    return cam


def captum_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor,
                   out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Detached Captum LayerGradCam (ReLU) at ``layer`` for ``target``, float32 (autocast off),
    optionally upsampled bilinearly to ``out_size``."""
    with torch.enable_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        cam = LayerGradCam(model, layer).attribute(x.detach().float(), target=target.long(),
                                                   relu_attributions=True)
    cam = cam.detach().float()
    if out_size is not None and tuple(cam.shape[-2:]) != tuple(out_size):
        cam = LayerAttribution.interpolate(cam, tuple(out_size), interpolate_mode="bilinear")
    return cam
