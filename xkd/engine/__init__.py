"""Training loop, evaluation, checkpoint/resume, DDP and environment (DESIGN section 6)."""

from xkd.engine.checkpoint import load_weights, read_checkpoint
from xkd.engine.distributed import DistInfo, barrier, cleanup, init_distributed, is_main_process
from xkd.engine.env import environment_info, resolve_device, seed_everything, set_determinism
from xkd.engine.evaluate import agreement, evaluate_predictions, predict
from xkd.engine.optim import build_optimizer, build_scheduler
from xkd.engine.trainer import FitResult, fit

__all__ = [
    "DistInfo", "FitResult", "agreement", "barrier", "build_optimizer", "build_scheduler", "cleanup",
    "environment_info", "evaluate_predictions", "fit", "init_distributed", "is_main_process",
    "load_weights", "predict", "read_checkpoint", "resolve_device", "seed_everything",
    "set_determinism",
]
