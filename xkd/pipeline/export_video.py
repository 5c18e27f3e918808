"""Per-frame explanations of the video models on the fixed eval subset (issue 7; DESIGN 5).

``RUN/explanations/`` of a multi-modal run holds

- ``video_inputs.npz``: ``indices`` (N,), ``labels`` (N,), ``frames`` (N,T,H,W,3) uint8 display
  frames, ``audio`` (N,M,M) float16 log-mel spectrograms and ``audio_mask`` (N,) where the
  dataset has audio;
- ``video_<NAME>.npz`` per video model: ``logits`` (N,K), ``target`` (N,), ``spatial`` (N,T,H,W)
  float16 per-frame saliency (max-normalised per clip) and ``temporal`` (N,T) float32 per-frame
  importance (sums to 1), from :func:`xkd.explain.video.explain_video`;
- ``video_index.json``: the method, the target rule (``label``: there is no single teacher of the
  video's label space to take the top-1 of), class names, and the models with their files.

The viewer's explorer shows them as a frame strip (apps/viewer_lib/video_strip.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xkd import io
from xkd.pipeline.export import _stack, display_images, eval_subset
from xkd.models import FeatureModel

if TYPE_CHECKING:
    from xkd.pipeline.context import RunContext

VIDEO_KEY = "video"
METHOD = "saliency"
"""Captum Saliency (|gradient|), the cheapest of explain_video's methods."""


def video_frames(video: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(N,C,T,H,W) normalised clips -> (N,T,H,W,3) uint8 display frames."""
    n, c, t, h, w = video.shape
    flat = video.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
    return display_images(flat, mean, std).reshape(n, t, h, w, 3)


def export_video_explanations(ctx: "RunContext", models: dict[str, FeatureModel]) -> None:
    """Write the eval subset's frames and every video model's per-frame saliency and importance."""
    from xkd.explain.video import explain_video

    cfg, device = ctx.cfg, ctx.device
    bundle = ctx.data()
    video_models = {n: m for n, m in models.items() if ctx.keys.get(n) == VIDEO_KEY}
    if bundle.task != "classification" or not video_models:
        return
    idx = eval_subset(bundle, cfg.evaluate.subset_size, cfg.evaluate.subset_seed)
    batch = _stack(bundle, idx)
    video, labels = batch[VIDEO_KEY], batch["label"]
    inputs: dict[str, np.ndarray] = {"indices": np.asarray(idx, dtype=np.int64), "labels": labels.numpy(),
                                     "frames": video_frames(video, bundle.mean, bundle.std)}
    if "audio" in batch:
        inputs["audio"] = batch["audio"][:, 0].numpy().astype(np.float16)
    if "audio_mask" in batch:
        inputs["audio_mask"] = batch["audio_mask"].numpy().astype(np.float32)
    out = ctx.folder.explanations
    io.save_npz(out / "video_inputs.npz", **inputs)
    index: dict[str, Any] = {"test_set": "test", "n": len(idx), "subset_seed": cfg.evaluate.subset_seed,
                             "frames": int(video.shape[2]), "method": METHOD, "target_rule": "label",
                             "class_names": bundle.class_names, "models": {}}
    x = video.to(device)
    for name, model in video_models.items():
        model.to(device).eval()
        with torch.no_grad():
            logits = model(x).float().cpu()
        spatial, temporal = explain_video(model, x, labels.to(device), method=METHOD,
                                          max_batch=cfg.explain.max_batch)
        entry = {"file": f"video_{name}.npz", "role": "teacher" if name in (cfg.teachers or {}) else "student"}
        io.save_npz(out / entry["file"], logits=logits.numpy(), target=labels.numpy(),
                    spatial=spatial.detach().cpu().numpy().astype(np.float16),
                    temporal=temporal.detach().cpu().numpy().astype(np.float32))
        index["models"][name] = entry
    io.write_json(out / "video_index.json", index)
