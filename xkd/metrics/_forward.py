"""Model forwards of the metrics at the forward-pass floor (DESIGN sections 7 and 8).

Every forward runs under ``torch.inference_mode`` in eval mode. Perturbed inputs are built chunk
by chunk into one reused buffer, and the chunk size comes from the model's activation size, not
only from ``max_batch``: the first forward of a model records, with forward hooks on its leaf
modules, the largest layer output per image, and later chunks hold at most as many images as fit
:data:`ACTIVATION_BUDGET` (``max_batch`` stays the upper bound). On a CPU a chunk whose layer
outputs exceed a few MiB is served by ``mmap`` and handed back to the OS at every free, so each
forward faults its pages in again (issue 17: 252 images of a ResNet-8 at 32x32, 12.6 MB per layer
output, ~129,000 page faults per call); chunks within the budget stay in the allocator and the
caches. Values do not depend on the chunking beyond float rounding.

On the CPU a model with 2-D convolutions runs with its weights in ``channels_last`` during the
metric's forwards (restored afterwards): for ResNet-8 at 32x32 on one thread it measured 0.71-0.80x
the time of the default layout (``python -m xkd.bench --only deletion_insertion``,
``channels_last_ratio``); logits differ from the default layout by float rounding (~1e-7). A model
whose forward cannot run so (e.g. a ``.view`` of a feature map) falls back to the default layout.

Inside :func:`xkd.metrics.shared.shared_forwards` the clean forward of the same images and the
scores of coinciding perturbed images are computed once and shared between metrics.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator
from weakref import WeakKeyDictionary, WeakSet

import torch
from torch import nn

from xkd.errors import UserError
from xkd.metrics.shared import active_cache, fingerprint, model_key

ACTIVATION_BUDGET = {"cpu": 4 << 20, "cuda": 1 << 30}
"""Bytes of the largest layer output of one chunk, per device type (others use ``cuda``'s)."""
PROBE_IMAGES = 8
"""Images of a model's first (probing) forward."""
CHANNELS_LAST = {"cpu": True}
"""Device types on which conv models run channels_last in the metrics' forwards."""

_PROBED: WeakKeyDictionary[nn.Module, dict[tuple, int]] = WeakKeyDictionary()
_NO_CHANNELS_LAST: WeakSet[nn.Module] = WeakSet()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's previous mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was in modes:
            m.training = was


def output_scores(logits: torch.Tensor, target: torch.Tensor, output: str) -> torch.Tensor:
    """Softmax probability (``'softmax'``) or logit (``'logit'``) of ``target`` per row."""
    if output == "softmax":
        logits = logits.float().softmax(dim=1)
    elif output != "logit":
        raise UserError(f"output '{output}' unknown; allowed: softmax, logit")
    return logits.gather(1, target.long().view(-1, 1)).squeeze(1)


def _key(like: torch.Tensor) -> tuple:
    return tuple(like.shape[1:]), like.dtype, like.device.type


def activation_bytes(model: nn.Module, like: torch.Tensor) -> int | None:
    """Largest layer output per image (bytes) of ``model`` on inputs like ``like``, once probed."""
    return _PROBED.get(model, {}).get(_key(like))


def chunk_size(model: nn.Module, like: torch.Tensor, max_batch: int) -> int:
    """Images per forward: ``max_batch``, lowered to fit the device's activation budget."""
    per = activation_bytes(model, like)
    if per is None:
        return max_batch
    budget = ACTIVATION_BUDGET.get(like.device.type, ACTIVATION_BUDGET["cuda"])
    return max(1, min(max_batch, budget // per))


def _probing_forward(model: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    sizes = [inp.numel() * inp.element_size()]

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        if torch.is_tensor(out):
            sizes.append(out.numel() * out.element_size())

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        logits = model(inp)
    finally:
        for h in handles:
            h.remove()
    _PROBED.setdefault(model, {})[_key(inp)] = math.ceil(max(sizes) / max(1, inp.shape[0]))
    return logits


def _channels_last_ok(model: nn.Module, like: torch.Tensor) -> bool:
    """Whether to switch ``model`` to channels_last for inputs like ``like`` (see the module doc)."""
    if like.dim() != 4 or not CHANNELS_LAST.get(like.device.type, False) or model in _NO_CHANNELS_LAST:
        return False
    weights = [p for p in model.parameters() if p.dim() == 4]
    already = any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                  for p in weights)
    return bool(weights) and not already and any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextmanager
def _layout(model: nn.Module, channels_last: bool) -> Iterator[None]:
    """Weights in channels_last inside the block when asked (outside inference mode, so the
    parameters stay normal tensors), back to the default layout afterwards."""
    if not channels_last:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def run_chunks(model: nn.Module, n: int, like: torch.Tensor,
               build: Callable[[int, int, torch.Tensor | None], torch.Tensor],
               consume: Callable[[int, int, torch.Tensor], None], max_batch: int,
               align: int = 1) -> None:
    """Forward items ``0..n-1`` in chunks under ``inference_mode`` and eval mode.

    ``build(start, stop, out)`` returns the chunk's inputs, written into ``out`` (a reused buffer
    of the chunk's shape) when it is given; ``consume(start, stop, logits)`` takes the outputs
    (``logits`` must not be kept: the buffer is overwritten by the next chunk). When the chunk
    size allows, chunks are multiples of ``align`` items. ``like`` is an input of the same
    per-item shape, dtype and device.
    """
    if max_batch < 1:
        raise UserError(f"max_batch must be >= 1; got {max_batch}")
    cl = _channels_last_ok(model, like)
    done = [0]
    try:
        with _layout(model, cl):
            _chunks(model, n, like, build, consume, max_batch, align, done)
    except RuntimeError:
        if not cl or done[0]:
            raise
        _NO_CHANNELS_LAST.add(model)  # the first chunk failed in channels_last: default layout
        _chunks(model, n, like, build, consume, max_batch, align, done)


def _chunks(model: nn.Module, n: int, like: torch.Tensor,
            build: Callable[[int, int, torch.Tensor | None], torch.Tensor],
            consume: Callable[[int, int, torch.Tensor], None], max_batch: int, align: int,
            done: list[int]) -> None:
    buf: torch.Tensor | None = None
    with torch.inference_mode(), eval_mode(model):
        s = 0
        while s < n:
            probing = activation_bytes(model, like) is None
            if probing:
                size = align if 1 < align <= max_batch else min(PROBE_IMAGES, max_batch)
            else:
                size = chunk_size(model, like, max_batch)
                size = size // align * align if size >= align else size
            stop = min(s + size, n)
            if not probing and buf is None:
                buf = torch.empty((size, *like.shape[1:]), dtype=like.dtype, device=like.device)
            inp = build(s, stop, None if buf is None else buf[:stop - s])
            consume(s, stop, _probing_forward(model, inp) if probing else model(inp))
            done[0] += 1
            s = stop


def _plain_logits(model: nn.Module, x: torch.Tensor, max_batch: int) -> torch.Tensor:
    out: list[torch.Tensor] = []
    run_chunks(model, x.shape[0], x, lambda s, e, _o: x[s:e],
               lambda s, e, z: out.append(z.clone()), max_batch)
    return torch.cat(out).clone() if out else x.new_empty(0)


def forward_logits(model: nn.Module, x: torch.Tensor, max_batch: int) -> torch.Tensor:
    """Logits of ``model`` on ``x``, chunked, no grad, eval mode (shared inside
    ``shared_forwards()``)."""
    cache = active_cache()
    if cache is None:
        return _plain_logits(model, x, max_batch)
    key = ("clean", model_key(model), fingerprint(x))
    hit = key in cache.clean
    if not hit:
        cache.keep(model)
        cache.clean[key] = _plain_logits(model, x, max_batch)
    cache.note(x.shape[0], 0 if hit else x.shape[0])
    return cache.clean[key]


def resolve_target(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None,
                   max_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, clean logits): ``target`` defaults to the model's top-1 on clean ``x`` (RISE)."""
    logits = forward_logits(model, x, max_batch)
    if target is None:
        target = logits.argmax(dim=1)
    target = torch.as_tensor(target, device=x.device).long().view(-1)
    if target.shape[0] != x.shape[0]:
        raise UserError(f"target has {target.shape[0]} entries for {x.shape[0]} images")
    return target, logits


def perturbed_scores(
    model: nn.Module,
    n_items: int,
    like: torch.Tensor,
    build: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    image_of: Callable[[torch.Tensor], torch.Tensor],
    target: torch.Tensor,
    output: str,
    max_batch: int,
    align: int = 1,
) -> torch.Tensor:
    """Scores of ``n_items`` perturbed inputs, chunked (see :func:`run_chunks`).

    ``build(idx, out)`` returns the perturbed inputs for flat item indices ``idx`` (a contiguous
    long range on the input device), written into ``out`` when given, and ``image_of(idx)`` their
    source image indices. Returns float32 (n_items,).
    """
    dev = target.device
    out = torch.empty(n_items, dtype=torch.float32, device=dev)

    def consume(s: int, e: int, logits: torch.Tensor) -> None:
        idx = torch.arange(s, e, device=dev)
        out[s:e] = output_scores(logits, target[image_of(idx)], output).float()

    run_chunks(model, n_items, like, lambda s, e, o: build(torch.arange(s, e, device=dev), o),
               consume, max_batch, align)
    cache = active_cache()
    if cache is not None:
        cache.note(n_items, n_items)
    return out


def _masked_curve(model: nn.Module, x: torch.Tensor, rank: torch.Tensor, counts: torch.Tensor,
                  inside: torch.Tensor, outside: torch.Tensor, target: torch.Tensor, output: str,
                  max_batch: int) -> torch.Tensor:
    n_img, n_steps = x.shape[0], counts.numel()
    counts = counts.to(x.device, torch.int32)
    rank = rank.to(torch.int32)
    shape = tuple(x.shape[1:])

    def build(idx: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        first, size = int(idx[0]), idx.numel()
        if first % n_steps == 0 and size % n_steps == 0:  # whole images: broadcast, no gather
            i0, i1 = first // n_steps, (first + size) // n_steps
            m = rank[i0:i1, None] < counts.view(1, -1, 1, 1, 1)
            a, b = inside[i0:i1, None], outside[i0:i1, None]
            if out is None:
                return torch.where(m, a, b).reshape(size, *shape)
            torch.where(m, a, b, out=out.view(i1 - i0, n_steps, *shape))
            return out
        i, j = idx // n_steps, idx % n_steps
        m = rank[i] < counts[j].view(-1, 1, 1, 1)
        if out is None:
            return torch.where(m, inside[i], outside[i])
        return torch.where(m, inside[i], outside[i], out=out)

    out = perturbed_scores(model, n_img * n_steps, x, build, lambda idx: idx // n_steps,
                           target, output, max_batch, align=n_steps)
    return out.view(n_img, n_steps)


def masked_curve(model: nn.Module, x: torch.Tensor, rank: torch.Tensor, counts: torch.Tensor,
                 inside: torch.Tensor, outside: torch.Tensor, target: torch.Tensor, output: str,
                 max_batch: int) -> torch.Tensor:
    """Scores (N, len(counts)) of images with pixels ``rank < counts[j]`` taken from ``inside``
    and the others from ``outside``; steps are stacked into the batch dimension.

    Inside ``shared_forwards()`` the scores are keyed by (model, order ``rank``, fills ``inside``
    and ``outside``, target, output) and by count, and only the counts not computed before for
    the same key are forwarded.
    """
    cache = active_cache()
    if cache is None:
        return _masked_curve(model, x, rank, counts, inside, outside, target, output, max_batch)
    cache.keep(model)
    key = ("curve", model_key(model), fingerprint(rank), fingerprint(inside),
           fingerprint(outside), fingerprint(target), output)
    known = cache.curves.setdefault(key, {})
    wanted = [int(c) for c in counts]
    missing = sorted(set(wanted) - set(known))
    if missing:
        ys = _masked_curve(model, x, rank, torch.tensor(missing), inside, outside, target, output,
                           max_batch)
        known.update({c: ys[:, j].clone() for j, c in enumerate(missing)})
    cache.note(x.shape[0] * (len(wanted) - len(missing)), 0)  # the rest counted as they ran
    return torch.stack([known[c] for c in wanted], dim=1)
