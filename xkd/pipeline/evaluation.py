"""Stage: accuracy (or MAE) of every model on every test set, and agreement with its teacher."""

from __future__ import annotations

from typing import Any

from xkd.data.label_scaling import to_original
from xkd.engine import agreement, evaluate_predictions
from xkd.engine.evaluate import predict_sharded
from xkd.models import FeatureModel
from xkd.pipeline.context import RunContext
from xkd.pipeline.multimodal import teacher_of


def evaluate_models(ctx: RunContext, models: dict[str, FeatureModel]) -> dict[str, dict[str, Any]]:
    """Accuracy (or MAE) on every test set and top-1 agreement/KL with the teacher (a student's
    own named teacher in multi-modal runs, :func:`xkd.pipeline.multimodal.teacher_of`).

    Under DDP every rank calls it: each predicts its share of every test set and all ranks get
    the same results (:func:`xkd.engine.evaluate.predict_sharded`)."""
    bundle = ctx.data()
    bs = ctx.train_cfg(ctx.cfg.train).batch_size * 2
    out: dict[str, dict[str, Any]] = {name: {} for name in models}
    partner = {sc.name: teacher_of(ctx.cfg, sc) or "teacher" for sc in ctx.cfg.students}
    for set_name, ds in bundle.test_sets().items():
        logits = {n: predict_sharded(m, ds, ctx.device, bs, input_key=ctx.keys.get(n, "image"))
                  for n, m in models.items()}
        for n, (lg, labels) in logits.items():  # regression: outputs back to original units
            for k, v in evaluate_predictions(to_original(lg, bundle), labels, bundle.task).items():
                out[n][f"{set_name}_{k}"] = v
            t = partner.get(n, "teacher")
            if t in logits and n != t and bundle.task == "classification":
                for k, v in agreement(lg, logits[t][0]).items():
                    out[n][f"{set_name}_{k}"] = v
    return out
