"""Per-stage attention and explanation export for a fixed, seeded evaluation subset (DESIGN 5).

``RUN/explanations/`` holds ``inputs.npz`` (images, display images, labels, masks, indices),
``teacher.npz`` and ``student_<NAME>.npz`` (logits, saliency maps per explainer, ABF attention
maps per stage, the weighting map the loss saw) and ``index.json`` describing them.

Two classes per model (DESIGN section 7; xai_metrics.md §0.3 (1)):

- ``target`` / ``map_<explainer>``: the alignment class, the same for every model: the teacher's
  top-1 (e2KD's convention), or the label when there is no teacher (``index['target_rule']``);
  alignment compares student and teacher maps for it, and the viewer shows these maps.
- ``own_target`` / ``own_map_<explainer>``: the class the model itself is explained and scored
  for by faithfulness, robustness, localisation and sanity metrics: its own top-1 (RISE's
  convention) or the label (``evaluate.faithfulness_target``; ``index['faithfulness_target_rule']``).
  Where it equals ``target`` the map is copied; only the samples where it differs are explained
  again.

For regression both are the output itself (index 0; ``prediction`` holds it in the labels'
original units). ``index['explanations_version']`` is 2 (absent: a run exported before the
per-model targets, whose maps are all for the alignment class).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from xkd import io
from xkd.config import ExplainConfig
from xkd.data import DataBundle
from xkd.data.label_scaling import to_original
from xkd.distill import Distiller
from xkd.models import FeatureModel

if TYPE_CHECKING:
    from xkd.pipeline.context import RunContext


EXPLANATIONS_VERSION = 2
"""2: per-model ``own_target`` / ``own_map_*`` beside the shared alignment ``target`` / ``map_*``."""


def own_targets(logits: torch.Tensor, labels: torch.Tensor, rule: str) -> torch.Tensor:
    """The class a model is explained and scored for by the faithfulness metrics: its own top-1
    (``predicted``) or the ``label``; the output (index 0) for ``output`` (regression)."""
    if rule == "output":
        return torch.zeros(logits.shape[0], dtype=torch.long)
    if rule == "label":
        return labels.long()
    return logits.argmax(1)


def eval_subset(bundle: DataBundle, size: int, seed: int) -> list[int]:
    """A fixed, seeded subset of the test split (sorted indices)."""
    n = len(bundle.test)
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[: min(size, n)].tolist())


def _stack(bundle: DataBundle, idx: list[int]) -> dict[str, torch.Tensor]:
    loader = DataLoader(Subset(bundle.test, idx), batch_size=len(idx), shuffle=False)
    return next(iter(loader))


def display_images(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Undo normalisation: (N,C,H,W) -> (N,H,W,3) uint8 for display."""
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    x = (images * s + m).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return (x[:, :3].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def _explain(model: FeatureModel, method: str, x: torch.Tensor, target: torch.Tensor,
             max_batch: int) -> np.ndarray:
    from xkd.explain import build_from_config

    ex = build_from_config(ExplainConfig(method=method, max_batch=max_batch), model,
                           path="evaluate.explainers")
    return ex.explain(x, target).cpu().numpy().astype(np.float16)


def export_explanations(ctx: "RunContext", teacher: FeatureModel | None,
                        models: dict[str, FeatureModel], distillers: dict[str, Distiller]) -> None:
    """Write the eval-subset explanations, attention maps and predictions of every model."""
    cfg, folder, device = ctx.cfg, ctx.folder, ctx.device
    bundle = ctx.data()
    regression = bundle.task == "regression"  # explain the output itself (index 0)
    idx = eval_subset(bundle, cfg.evaluate.subset_size, cfg.evaluate.subset_seed)
    batch = _stack(bundle, idx)
    x, labels = batch["image"].to(device), batch["label"]
    inputs: dict[str, np.ndarray] = {
        "indices": np.asarray(idx, dtype=np.int64),
        "images": batch["image"].numpy().astype(np.float16),
        "display": display_images(batch["image"], bundle.mean, bundle.std),
        "labels": labels.numpy(),
    }
    if "mask" in batch:
        inputs["masks"] = (batch["mask"].numpy() > 0.5).astype(np.uint8)
    out = folder.explanations
    io.save_npz(out / "inputs.npz", **inputs)
    with torch.no_grad():
        logits = {n: m.to(device).eval()(x).float().cpu() for n, m in models.items()}
    own_rule = cfg.evaluate.faithfulness_target
    if regression:
        target = torch.zeros(len(idx), dtype=torch.long)
        rule = own_rule = "output"
    else:
        target = logits["teacher"].argmax(1) if "teacher" in logits else labels
        rule = "teacher_top1" if "teacher" in logits else "label"
    index: dict[str, Any] = {"test_set": "test", "n": len(idx), "subset_seed": cfg.evaluate.subset_seed,
                             "explanations_version": EXPLANATIONS_VERSION,
                             "target_rule": rule, "faithfulness_target_rule": own_rule, "task": bundle.task,
                             "explainers": list(cfg.evaluate.explainers), "mean": list(bundle.mean),
                             "std": list(bundle.std), "has_masks": "masks" in inputs,
                             "class_names": bundle.class_names, "models": {}}
    for name, model in models.items():
        own = own_targets(logits[name], labels, own_rule)
        arrays: dict[str, np.ndarray] = {"logits": logits[name].numpy(),
                                         "target": target.numpy(), "own_target": own.numpy()}
        if regression:  # predictions in the labels' original units
            arrays["prediction"] = to_original(logits[name][:, 0], bundle).numpy()
        differ = (own != target).nonzero().flatten()
        for method in cfg.evaluate.explainers:
            shared = _explain(model, method, x, target.to(device), cfg.explain.max_batch)
            arrays[f"map_{method}"], arrays[f"own_map_{method}"] = shared, shared.copy()
            if len(differ):  # explain those samples again, for the model's own class
                arrays[f"own_map_{method}"][differ.numpy()] = _explain(
                    model, method, x[differ.to(device)], own[differ].to(device), cfg.explain.max_batch)
        entry: dict[str, Any] = {"file": "teacher.npz" if name == "teacher" else f"student_{name}.npz",
                                 "role": "teacher" if name == "teacher" else "student",
                                 "maps": [f"map_{m}" for m in cfg.evaluate.explainers],
                                 "own_maps": [f"own_map_{m}" for m in cfg.evaluate.explainers],
                                 "own_differs": int(len(differ)), "attention": {}}
        d = distillers.get(name)
        if d is not None:
            d.eval()
            with torch.no_grad():
                att = d.attention_maps(x)
            for stage, a in att.items():
                arrays[f"attn_{stage}"] = a.float().cpu().numpy().astype(np.float16)
                entry["attention"][stage] = list(a.shape[1:])
            wmap = _weight_map(ctx, d, x, labels, teacher)
            if wmap is not None:
                arrays["weight_map"] = wmap
                entry["weight_map"] = True
        io.save_npz(out / entry["file"], **arrays)
        index["models"][name] = entry
    io.write_json(out / "index.json", index)


def _weight_map(ctx: "RunContext", d: Distiller, x: torch.Tensor, labels: torch.Tensor,
                teacher: FeatureModel | None) -> np.ndarray | None:
    """The teacher map a saliency-weighted distiller used (its own explainer and target rule)."""
    spec = d.saliency_spec() if d.needs_saliency else None
    if spec is None or teacher is None:
        return None
    from xkd.pipeline.teacher_saliency import explain_config
    from xkd.explain import build_from_config, resolve_targets

    ecfg = explain_config(ctx.cfg.explain, spec, "explain")
    with torch.no_grad():
        t_logits = teacher(x)
    target = resolve_targets(ecfg.target, labels.to(x.device), teacher_logits=t_logits,
                             model_logits=t_logits)
    ex = build_from_config(ecfg, teacher, path="explain")
    return ex.explain(x, target).cpu().numpy().astype(np.float16)
