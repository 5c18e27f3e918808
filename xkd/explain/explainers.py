"""Captum explainers behind one interface (DESIGN section 3.3; seed_methods.md section 7.2).

``Explainer.explain(x, target)`` -> (B,1,H,W) float32, non-negative, detached, at input
resolution. Each method calls one Captum attribution class (no hand-written gradient code), then
applies the documented sign rule, channel pooling and per-sample normalisation (``params.py``).
While explaining, the model runs in eval mode with gradients enabled (also when the caller is
under ``no_grad``/``inference_mode``) and autocast off; afterwards its modes, gradients
and hooks are as before (:func:`~xkd.explain.guards.model_guard`).

The memory knob ``max_batch`` bounds how many images go through the model in one forward pass:
the outer batch is cut into chunks, and within a chunk it becomes Captum's
``internal_batch_size`` (IG), ``nt_samples_batch_size`` (SmoothGrad) or ``perturbations_per_eval``
(Occlusion; SmoothGrad and Occlusion take one image per call). Every map depends only on its own
image, never on the batch it came in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import warnings
from typing import Any, ClassVar

import torch
from captum.attr import (DeepLift, InputXGradient, IntegratedGradients, LayerAttribution,
                         LayerGradCam, NoiseTunnel, Occlusion, Saliency)
from pydantic import BaseModel
from torch import nn

from xkd.errors import UserError
from xkd.explain import params as P
from xkd.explain.base import EXPLAINERS
from xkd.explain.guards import check_deeplift_model, model_guard, resolve_layer
from xkd.explain.postprocess import normalize, to_map


class Explainer(ABC):
    """Base: subclasses implement :meth:`_attribute` on one chunk; post-processing is shared."""

    method: ClassVar[str] = ""

    def __init__(self, model: nn.Module, params: BaseModel, max_batch: int = 64,
                 path: str = "explain") -> None:
        if max_batch < 1:
            raise UserError(f"{path}.max_batch: must be >= 1 (got {max_batch})")
        self.model, self.params, self.max_batch, self.path = model, params, int(max_batch), path

    # ------------------------------------------------------------------ interface
    def explain(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Maps (B,1,H,W) for images ``x`` (B,C,H,W) and class indices ``target`` (B,)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise UserError(f"explain: x must be a (B,C,H,W) tensor, got {getattr(x, 'shape', type(x))}")
        return self._run(x, target, lambda xc, tc: self._to_map(
            self._attribute(xc, tc).detach().float(), tuple(x.shape[-2:])), tuple(x.shape[-2:]))

    def _run(self, x: torch.Tensor, target: Any, fn: Any, empty_hw: tuple[int, ...]) -> torch.Tensor:
        """``fn(chunk, targets)`` over ``max_batch`` chunks under the model guard, concatenated."""
        target = self._check_target(target, x)
        out = []
        with model_guard(self.model), torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast(device_type=x.device.type, enabled=False), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(required_grads has been set|Setting forward, "
                                    "backward hooks|non-linear).*")
            x = x.detach().float().clone()  # a normal tensor even if made under inference_mode
            step = self.chunk_size()
            for i in range(0, x.shape[0], step):
                out.append(fn(x[i:i + step].clone(), target[i:i + step]))
        return torch.cat(out).contiguous() if out else x.new_zeros(0, 1, *empty_hw)

    def native_size(self, x: torch.Tensor) -> tuple[int, int] | None:
        """Spatial size at which the method itself resolves ``x`` (None: input resolution)."""
        return None

    def settings(self) -> dict[str, Any]:
        """What determines the maps (method and every parameter, defaults written out)."""
        return {"method": self.method, "params": self.params.model_dump(mode="json")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r}, max_batch={self.max_batch})"

    # ------------------------------------------------------------------ per method
    def chunk_size(self) -> int:
        """How many images of the outer batch go to Captum in one call."""
        return self.max_batch

    @abstractmethod
    def _attribute(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Captum attributions for one chunk (each method's only code)."""

    def _to_map(self, a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        p = self.params
        return to_map(a, p.sign, p.channel_pool, p.normalize)

    def _check_target(self, target: Any, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(target, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],) or t.is_floating_point() or t.is_complex():
            raise UserError(f"explain: target must be a (B,) integer tensor of class indices "
                            f"matching B={x.shape[0]}, got shape {tuple(t.shape)} dtype {t.dtype}")
        return t.long()


@EXPLAINERS.register("saliency", params=P.SaliencyParams)
class SaliencyExplainer(Explainer):
    """Captum ``Saliency`` (|gradient| when ``sign='abs'``, else the signed gradient)."""

    method = "saliency"

    def _attribute(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return Saliency(self.model).attribute(x, target=t, abs=self.params.sign == "abs")


@EXPLAINERS.register("input_x_gradient", params=P.InputXGradientParams)
class InputXGradientExplainer(Explainer):
    """Captum ``InputXGradient``: x * gradient (x in normalised space)."""

    method = "input_x_gradient"

    def _attribute(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return InputXGradient(self.model).attribute(x, target=t)


@EXPLAINERS.register("integrated_gradients", params=P.IntegratedGradientsParams)
class IntegratedGradientsExplainer(Explainer):
    """Captum ``IntegratedGradients`` from a zero baseline; ``internal_batch_size = max_batch``."""

    method = "integrated_gradients"

    def _attribute(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = self.params
        return IntegratedGradients(self.model).attribute(
            x, baselines=0.0, target=t, n_steps=p.n_steps, method=p.method,
            internal_batch_size=max(self.max_batch, x.shape[0]))


@EXPLAINERS.register("smoothgrad", params=P.SmoothGradParams)
class SmoothGradExplainer(Explainer):
    """Captum ``NoiseTunnel(Saliency)``, ``nt_type='smoothgrad'``, seeded per sample.

    Each image is explained on its own with the RNG reset to ``seed`` (inside ``fork_rng``, so the
    caller's random state is untouched): its noise draws never depend on the batch it came in.
    ``nt_samples_batch_size = min(nt_samples, max_batch)``.
    """

    method = "smoothgrad"

    def chunk_size(self) -> int:
        return 1

    def _attribute(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = self.params
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
            if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(p.seed)
            return NoiseTunnel(Saliency(self.model)).attribute(
                x, nt_type="smoothgrad", nt_samples=p.nt_samples,
                nt_samples_batch_size=min(p.nt_samples, self.max_batch), stdevs=p.stdevs,
                target=t, abs=p.sign == "abs")


@EXPLAINERS.register("gradcam", params=P.GradCamParams)
class GradCamExplainer(Explainer):
    """Captum ``LayerGradCam(relu_attributions=True)`` upsampled by ``LayerAttribution.interpolate``."""

    method = "gradcam"

    def __init__(self, model: nn.Module, params: BaseModel, max_batch: int = 64,
                 path: str = "explain") -> None:
        super().__init__(model, params, max_batch, path)
        self.layer, self.layer_name = resolve_layer(model, params.layer, path)

    def settings(self) -> dict[str, Any]:
        s = super().settings()
        s["params"]["layer"] = self.layer_name
        return s

    def _cam(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cam = LayerGradCam(self.model, self.layer).attribute(x, target=t, relu_attributions=True)
        if not isinstance(cam, torch.Tensor) or cam.dim() != 4:
            raise UserError(f"{self.path}.params.layer: layer '{self.layer_name}' must output a "
                            f"(B,C,h,w) feature map; pick a convolutional stage")
        return cam

    def _attribute(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return LayerAttribution.interpolate(self._cam(x, t), tuple(x.shape[-2:]),
                                            interpolate_mode=self.params.interpolate_mode)

    def _to_map(self, a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return normalize(a.clamp_min(0), self.params.normalize)

    def native(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The layer's ReLU'd Grad-CAM (B,1,h,w) before upsampling and normalisation:
        ``explain(x, t) == finish(native(x, t), x.shape[-2:])``."""
        return self._run(x, target, lambda xc, tc: self._cam(xc, tc).detach().float(), (0, 0))

    def finish(self, cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Upsample native maps to ``size`` and normalise them, as :meth:`explain` does."""
        up = LayerAttribution.interpolate(cam.float(), tuple(size),
                                          interpolate_mode=self.params.interpolate_mode)
        return normalize(up.clamp_min(0), self.params.normalize)

    def native_size(self, x: torch.Tensor) -> tuple[int, int] | None:
        """Spatial size of the Grad-CAM layer's output for images like ``x`` (one forward)."""
        seen: list[tuple[int, int]] = []
        hook = self.layer.register_forward_hook(
            lambda _m, _i, out: seen.append(tuple(out.shape[-2:])) if isinstance(out, torch.Tensor) else None)
        try:
            with model_guard(self.model), torch.no_grad():
                self.model(x[:1].detach().float())
        finally:
            hook.remove()
        return seen[0] if seen else None  # type: ignore[return-value]


@EXPLAINERS.register("occlusion", params=P.OcclusionParams)
class OcclusionExplainer(Explainer):
    """Captum ``Occlusion``, zero baseline, square window over all channels.

    One image per call with ``perturbations_per_eval = max_batch``: the same number of forwards as
    batching images, and a map that is bit-identical whatever batch its image came in (occlusion
    scores are differences of nearly equal logits, so batch-size-dependent rounding would show).
    """

    method = "occlusion"

    def chunk_size(self) -> int:
        return 1

    def _attribute(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = self.params
        c, h, w = x.shape[1:]
        return Occlusion(self.model).attribute(
            x, sliding_window_shapes=(c, min(p.window, h), min(p.window, w)),
            strides=(c, p.stride, p.stride), baselines=0.0, target=t,
            perturbations_per_eval=self.max_batch)


@EXPLAINERS.register("deeplift", params=P.DeepLiftParams)
class DeepLiftExplainer(Explainer):
    """Captum ``DeepLift`` (rescale rule, zero baseline). Refuses models it cannot handle."""

    method = "deeplift"

    def __init__(self, model: nn.Module, params: BaseModel, max_batch: int = 64,
                 path: str = "explain") -> None:
        super().__init__(model, params, max_batch, path)
        self._checked: set[tuple[int, ...]] = set()

    def chunk_size(self) -> int:
        return max(1, self.max_batch // 2)  # DeepLift runs inputs and baselines together (2B)

    def _attribute(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[1:])
        if shape not in self._checked:
            check_deeplift_model(self.model, x)
            self._checked.add(shape)
        inplace = [m for m in self.model.modules() if getattr(m, "inplace", False) is True]
        try:
            for m in inplace:  # in-place non-linearities break DeepLift's hooks; restored below
                m.inplace = False
            return DeepLift(self.model).attribute(x.requires_grad_(), baselines=0.0, target=t)
        finally:
            for m in inplace:
                m.inplace = True
