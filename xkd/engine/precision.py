"""Mixed precision and memory format of a training run (DESIGN section 6: AMP on CUDA).

``train.amp`` turns autocast on; ``train.amp_dtype`` picks the half type:

* ``float16``: CUDA only, with a ``GradScaler`` (dynamic loss scaling against fp16 gradient
  underflow); on CPU the run stays fp32 (CPU autocast in fp16 is neither faster nor scaled).
* ``bfloat16``: CUDA and CPU autocast, no scaler (bf16 keeps fp32's exponent range).
* ``auto``: ``bfloat16`` on a CUDA device with native bf16 (Ampere and later), else ``float16`` on
  CUDA; fp32 on CPU.

``train.channels_last``: on CUDA, 4-D weights and image batches in NHWC memory layout, which
cuDNN's tensor-core convolutions read without transposes under AMP. It is ignored on CPU (and 5-D
video weights always stay as they are).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Precision:
    """The resolved training precision: autocast on/off and dtype, loss scaling, memory format."""

    autocast: bool
    dtype: torch.dtype | None
    scaler: bool
    channels_last: bool
    device_type: str

    def context(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` for the forward pass (a no-op context when autocast is off)."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A ``GradScaler`` that scales only on the fp16 path (a transparent one otherwise)."""
        return torch.amp.GradScaler("cuda", enabled=self.scaler)

    def describe(self) -> str:
        """One word for logs and reports: fp32, fp16+scaler, bf16 (and +channels_last)."""
        name = "fp32" if not self.autocast else ("fp16+scaler" if self.scaler else "bf16")
        return name + ("+channels_last" if self.channels_last else "")


def resolve_precision(amp: bool, amp_dtype: str, channels_last: bool, device: torch.device | str,
                      bf16_supported: Callable[[], bool] | None = None) -> Precision:
    """What ``train.amp``/``amp_dtype``/``channels_last`` mean on ``device`` (see module docstring).
    ``bf16_supported`` tells whether the CUDA device has native bf16 (default: asks torch)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if amp_dtype not in ("auto", "float16", "bfloat16"):
        raise ValueError(f"amp_dtype must be auto, float16 or bfloat16, got {amp_dtype!r}")
    dtype: torch.dtype | None = None
    if amp and cuda:
        if amp_dtype == "auto":
            check = bf16_supported or (lambda: torch.cuda.is_bf16_supported(including_emulation=False))
            dtype = torch.bfloat16 if check() else torch.float16
        else:
            dtype = torch.bfloat16 if amp_dtype == "bfloat16" else torch.float16
    elif amp and amp_dtype == "bfloat16":  # CPU autocast: bf16 only
        dtype = torch.bfloat16
    return Precision(autocast=dtype is not None, dtype=dtype, scaler=dtype == torch.float16,
                     channels_last=bool(channels_last and cuda), device_type=device.type)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Every 4-D parameter and buffer of ``module`` in channels_last layout, in place (parameter
    objects are kept, so optimisers built before or after still hold them); others unchanged."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return module


def batch_channels_last(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its 4-D ``image`` (and ``saliency``/``mask``) tensors in channels_last."""
    return {k: (v.contiguous(memory_format=torch.channels_last)
                if torch.is_tensor(v) and v.dim() == 4 and v.is_floating_point() else v)
            for k, v in batch.items()}
