"""Stage discovery for wrapped classifiers (:mod:`xkd.models.hooked`): a dry run finds the stage
modules, the pooled-vector input and each stage's pre-activation tap.

Discovery (:func:`discover`): one eval-mode forward pass on a (1, C, S, S) input with pre- and
post-forward hooks on every submodule records each call's start/end order, input and output.
Only calls that end before the classifier head starts are considered: the final ``nn.Linear``,
or a global pooling layer that no convolution follows (ConvNeXt's ``avgpool``).

* A *downsampler* is a call whose 4-D output is spatially smaller than its 4-D input (global
  pooling layers such as squeeze-excitation's ``AdaptiveAvgPool2d`` are ignored).
* For each input resolution R of a downsampler, taken in start order (outermost first), the stage
  of R is the module that produced the downsampler's input tensor (the outermost one, called
  exactly once: a reused module such as torchvision's per-block ``relu`` cannot be hooked
  unambiguously); failing that, the last module with an output at R that ended before the
  downsampler started. So torchvision ResNets give ``layer1..layer4`` (also for Bottleneck nets,
  whose next block starts with a 1x1 conv at the old resolution), VGG the ReLU before each pool.
* The last stage is the last module with an output at the smallest downsampled resolution.
* Only resolutions seen by NCHW layers (Conv2d, BatchNorm2d, pooling) count, so channels-last
  tensors inside e.g. ConvNeXt blocks are ignored; so are Linear layers and global pools.
* With ``drop_stem`` leading stages that are already downsampled and hold at most one
  convolution (an ImageNet stem: conv-s2, max-pool) are dropped.

``pooled`` is the input of the final Linear (of the Dropout right before it, when there is one,
so dropout does not leak into it); without a Linear it is the global average of the last stage.
Pre-activation taps (``preact``; ReviewKD distils the teacher's pre-activation maps). When a
stage's output tensor is the output of an activation *module* called inside the stage (torchvision
ResNet blocks end with ``relu``, MobileNet heads with ``ReLU6``), or the stage module is itself an
activation (VGG's stages are ReLUs), ``preact`` is that activation's input, copied by a pre-hook on
its k-th call (modules such as torchvision's per-block ``relu`` run several times; in-place ReLUs
are copied before they overwrite it). A stage whose output has negative values on the dry run and
comes from no activation module is linear (MobileNetV2's bottlenecks): ``preact is stages``. A
non-negative stage output without an activation module (a functional ``F.relu``, a concatenation of
activated branches) has no reachable pre-activation: ``preact is stages`` there too, and one
warning per model names those stages. ``preact_kinds`` lists per stage ``"relu"`` (``stages ==
relu(preact)``), another activation's name (``"relu6"``, ``"silu"``, ...), ``"identity"`` or
``"unavailable"``; ``preact_relation`` is ``"relu"`` or ``"identity"`` when all stages agree, else
``"mixed"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xkd.errors import UserError

_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU,
                nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.Softplus)
_NCHW = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)


def output_logits(out: Any) -> torch.Tensor:
    """The logits of a classifier output: a tensor, ``.logits`` (Inception/GoogLeNet) or ``[0]``."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise UserError(f"the model returned {type(out).__name__}; expected a logits tensor")


def first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


@dataclass
class Call:
    """One module call of the dry run (tensors kept alive so identity checks are sound)."""

    name: str
    module: nn.Module
    start: int
    end: int = -1
    tin: torch.Tensor | None = None
    tout: torch.Tensor | None = None
    negative: bool = False
    """The output had negative values when the call ended (before any later in-place change)."""

    def res(self, t: torch.Tensor | None) -> tuple[int, int] | None:
        return (int(t.shape[2]), int(t.shape[3])) if t is not None and t.dim() == 4 else None


@dataclass
class Discovery:
    """What a dry run found: stage module names, the module whose input is ``pooled``, logit width."""

    stage_names: list[str]
    pooled_name: str | None
    num_logits: int
    preact_taps: list[tuple[str, int] | None] = field(default_factory=list)
    """Per stage: (activation module name, 0-based call index) whose input is the pre-activation."""
    preact_kinds: list[str] = field(default_factory=list)


def _area(r: tuple[int, int]) -> int:
    return r[0] * r[1]


def _record(net: nn.Module, x: torch.Tensor, label: str) -> tuple[list[Call], torch.Tensor]:
    calls: list[Call] = []
    stack: list[Call] = []
    tick = [0]

    def pre(name: str):
        def hook(mod: nn.Module, inp: Any) -> None:
            tick[0] += 1
            c = Call(name, mod, tick[0], tin=first_tensor(inp))
            stack.append(c)
            calls.append(c)
        return hook

    def post(mod: nn.Module, inp: Any, out: Any) -> None:
        tick[0] += 1
        c = stack.pop()
        c.end, c.tout = tick[0], first_tensor(out)
        c.negative = bool(c.tout is not None and c.tout.is_floating_point() and (c.tout < 0).any())

    handles = []
    for n, m in net.named_modules():
        if n:
            handles += [m.register_forward_pre_hook(pre(n)), m.register_forward_hook(post)]
    was_training = net.training
    net.eval()
    try:
        logits = output_logits(net(x))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here is an unusable architecture/size
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{label} failed on a dry run with input {tuple(x.shape)}: {msg}") from None
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return calls, logits


def _kind(module: nn.Module) -> str:
    return "relu6" if isinstance(module, nn.ReLU6) else type(module).__name__.lower()


def preact_taps(calls: list[Call], stages: list[Call]) -> tuple[list[tuple[str, int] | None], list[str]]:
    """For each stage call, the activation call whose output is the stage's output (see the module
    docstring): its (module name, call index) and kind."""
    taps: list[tuple[str, int] | None] = []
    kinds: list[str] = []
    for st in stages:
        acts = [c for c in calls if isinstance(c.module, _ACTIVATIONS) and c.tout is st.tout
                and st.start <= c.start and c.end <= st.end]
        if acts:
            act = max(acts, key=lambda c: c.end)
            k = [c for c in calls if c.name == act.name].index(act)
            taps.append((act.name, k))
            kinds.append(_kind(act.module))
        else:
            taps.append(None)
            kinds.append("identity" if st.negative else "unavailable")
    return taps, kinds


@torch.no_grad()
def discover(net: nn.Module, in_channels: int, image_size: int, drop_stem: bool = True,
             label: str = "model", stage_modules: list[str] | None = None) -> Discovery:
    """Dry-run ``net`` and pick the stage modules (see the module docstring for the rules), or take
    ``stage_modules``; find each stage's pre-activation tap."""
    x = torch.randn(1, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    calls, logits = _record(net, x, label)
    if logits.dim() != 2:
        raise UserError(f"{label} returns logits of shape {tuple(logits.shape)}; expected (batch, classes)")
    counts: dict[str, int] = {}
    for c in calls:
        counts[c.name] = counts.get(c.name, 0) + 1

    # the final classifier: the Linear whose output is the logits tensor itself, else the last one
    linears = [c for c in calls if isinstance(c.module, nn.Linear)]
    exact = [c for c in linears if c.tout is logits]
    head = exact[-1] if exact else (linears[-1] if linears else None)
    cut = head.start if head is not None else float("inf")
    pooled_name = head.name if head is not None else None
    if head is not None:
        before = [c for c in calls if c.end < head.start and c.end > 0]
        prev = max(before, key=lambda c: c.end, default=None)
        if prev is not None and isinstance(prev.module, nn.Dropout):
            pooled_name = prev.name

    # a global pool followed by no convolution before the head is the classifier's own pooling
    convs_start = [c.start for c in calls if isinstance(c.module, nn.Conv2d) and c.start < cut]
    for c in calls:
        if (isinstance(c.module, _GLOBAL_POOLS) and c.start < cut
                and all(s < c.start for s in convs_start)):
            cut = c.start
            break
    # resolutions seen by NCHW-only layers (so channels-last tensors, e.g. ConvNeXt's, are ignored)
    nchw = {r for c in calls if isinstance(c.module, _NCHW) for r in (c.res(c.tin), c.res(c.tout)) if r}
    pooled_ids = {id(c.tout) for c in calls if isinstance(c.module, _GLOBAL_POOLS)}
    maps = [c for c in calls if 0 < c.end < cut and c.res(c.tout) in nchw
            and not isinstance(c.module, (nn.Linear, *_GLOBAL_POOLS)) and id(c.tout) not in pooled_ids]
    once = [c for c in maps if counts[c.name] == 1]
    downs = sorted((c for c in maps if c.res(c.tin) in nchw
                    and _area(c.res(c.tout)) < _area(c.res(c.tin))), key=lambda c: c.start)
    chosen: dict[tuple[int, int], Call] = {}
    for d in downs:
        r = d.res(d.tin)
        if r in chosen:
            continue
        producers = [c for c in once if c.tout is d.tin and c.end < d.start]
        if not producers:
            producers = [c for c in once if c.res(c.tout) == r and c.end < d.start]
        if producers:
            chosen[r] = max(producers, key=lambda c: c.end)
    if downs:
        final_res = min((d.res(d.tout) for d in downs), key=_area)
    elif maps:  # a single-resolution net: the resolution of its last map
        last_map = max(maps, key=lambda c: c.end)
        final_res = last_map.res(last_map.tout)
    else:
        final_res = None
    if final_res is not None and final_res not in chosen:
        last = [c for c in once if c.res(c.tout) == final_res]
        if last:
            chosen[final_res] = max(last, key=lambda c: c.end)
    stages = sorted(chosen.items(), key=lambda kv: -_area(kv[0]))
    prev_end = 0
    while drop_stem and len(stages) > 1:  # stem pieces: downsampled, at most one conv each
        r0, st = stages[0]
        convs = [c for c in maps if isinstance(c.module, nn.Conv2d) and c.res(c.tout) == r0
                 and prev_end < c.end <= st.end]
        if len(convs) > 1 or _area(r0) >= image_size * image_size:
            break
        prev_end, stages = st.end, stages[1:]
    if stage_modules:
        by_name = {c.name: c for c in calls}  # the last call of each module (what the hooks read)
        missing = [n for n in stage_modules if n not in by_name]
        if missing:
            mods = [n for n, _ in net.named_modules() if n]
            raise UserError(f"stage module(s) {missing} not found or not called; available: "
                            f"{', '.join(mods[:30])} ...")
        picked = [by_name[n] for n in stage_modules]
    else:
        if not stages:
            raise UserError(f"{label}: no convolutional stage (module with a 4-D output) was found; "
                            "xkd needs a CNN backbone")
        picked = [c for _, c in stages]
    taps, kinds = preact_taps(calls, picked)
    return Discovery([c.name for c in picked], pooled_name, int(logits.shape[1]), taps, kinds)
