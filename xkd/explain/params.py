"""Validated, documented parameters of every explainer (``explain.params`` in the experiment file).

Each method has one pydantic model (``extra="forbid"``), so a misspelt key or a bad value becomes a
:class:`~xkd.errors.ConfigError` whose path is ``explain.params.<field>``. Post-processing is
explicit and shared by the input-attribution methods (xai_metrics.md section 0.3):

1. ``sign`` on the per-channel attribution ``a`` (B,C,H,W):
   ``abs`` -> ``|a|``; ``positive`` -> ``max(a, 0)``; ``negative`` -> ``max(-a, 0)``;
   ``all`` -> ``a`` kept signed through channel pooling, and the pooled map is then made
   non-negative by taking its absolute value (so e.g. ``sum`` gives ``|sum_c a_c|``).
2. ``channel_pool`` over input channels: ``sum``, ``mean``, ``max`` or ``l2`` (sqrt of sum of squares).
3. ``normalize`` per sample: ``none``; ``max`` (divide by the sample's maximum, the default);
   ``sum`` (divide by the sample's sum, a map of mass 1); ``minmax`` ((m - min) / (max - min)).
   An all-constant map has nothing to scale: ``max``/``sum`` leave an all-zero map at zero and
   ``minmax`` maps a constant map to zeros.

Grad-CAM returns one channel that is already non-negative (ReLU applied), so it has only
``layer`` and ``normalize``.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import ConfigDict, Field

from xkd.config.schema import NumbersAreNumbers

ChannelPool = Literal["sum", "mean", "max", "l2"]
Sign = Literal["abs", "positive", "negative", "all"]
Normalize = Literal["none", "max", "sum", "minmax"]


class ExplainParams(NumbersAreNumbers):
    """Base: unknown keys are errors; ``normalize`` is shared by every method."""

    model_config = ConfigDict(extra="forbid")

    normalize: Normalize = Field("max", description="per-sample normalisation of the final map")


class InputAttrParams(ExplainParams):
    """Methods returning one attribution per input channel (pooled to one map)."""

    channel_pool: ChannelPool = Field("sum", description="how input channels are pooled")
    sign: Sign = Field("abs", description="which part of the signed attribution counts")


class SaliencyParams(InputAttrParams):
    """Simonyan et al. 2014 (arXiv:1312.6034), Eq. 2-3: |dS_c/dx| and max over channels."""

    channel_pool: ChannelPool = "max"


class InputXGradientParams(InputAttrParams):
    """Shrikumar et al. 2016 (arXiv:1605.01713): x * dS_c/dx, |.| summed over channels."""


class IntegratedGradientsParams(InputAttrParams):
    """Sundararajan et al. 2017 (arXiv:1703.01365), Eq. 3, baseline 0 (in normalised space)."""

    n_steps: int = Field(16, ge=1, le=1024, description="path integral steps")
    method: Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                    "riemann_trapezoid"] = "gausslegendre"


class SmoothGradParams(InputAttrParams):
    """Smilkov et al. 2017 (arXiv:1706.03825), Eq. 2: mean of |gradients| over noisy copies.

    ``stdevs`` is absolute in input units (about 10-20 % of the normalised input range).
    ``seed`` fixes the noise: every sample gets the same noise draws whatever batch it is in,
    so a map does not depend on batch composition.
    """

    channel_pool: ChannelPool = "max"
    nt_samples: int = Field(8, ge=1, le=1024, description="noisy copies per sample")
    stdevs: float = Field(0.15, ge=0, description="noise standard deviation, input units")
    seed: int = Field(0, description="noise seed")


class GradCamParams(ExplainParams):
    """Selvaraju et al. 2017 (arXiv:1610.02391), Eq. 1-2: ReLU(sum_k alpha_k A^k), upsampled.

    ``layer``: an index into ``model.stage_layers()`` (``-1`` = last stage) or a dotted module name.
    """

    layer: Union[int, str] = Field(-1, description="stage index or dotted module name")
    interpolate_mode: Literal["bilinear", "nearest", "bicubic"] = "bilinear"


class OcclusionParams(InputAttrParams):
    """Zeiler and Fergus 2014 (arXiv:1311.2901): output drop when a window is replaced by 0.

    The window spans all input channels, so every channel carries the same value and ``mean``
    pooling returns it unchanged. ``positive`` keeps regions whose removal lowers the score.
    """

    channel_pool: ChannelPool = "mean"
    sign: Sign = "positive"
    window: int = Field(4, ge=1, description="side of the square sliding window (pixels)")
    stride: int = Field(2, ge=1, description="stride of the sliding window (pixels)")


class DeepLiftParams(InputAttrParams):
    """Shrikumar et al. 2017 (arXiv:1704.02685), rescale rule, baseline 0.

    Needs each non-linearity to be its own module, used once per forward pass.
    """


PARAMS: dict[str, type[ExplainParams]] = {
    "saliency": SaliencyParams,
    "input_x_gradient": InputXGradientParams,
    "integrated_gradients": IntegratedGradientsParams,
    "smoothgrad": SmoothGradParams,
    "gradcam": GradCamParams,
    "occlusion": OcclusionParams,
    "deeplift": DeepLiftParams,
}
