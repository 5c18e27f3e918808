"""Shared test fixtures: small experiment files and a tiny smoke-run folder."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("XKD_NO_PROGRESS", "1")
os.environ.setdefault("XKD_CACHE_DIR", tempfile.mkdtemp(prefix="xkd-test-cache-"))  # image folder indexes
torch.set_num_threads(1)  # tiny tensors: threads cost more than they give, and CI shares 2 cores


def tiny_experiment(**over) -> dict:
    """A valid experiment mapping that trains in seconds (teacher + ce + kd on shapes)."""
    exp = {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "data": {"name": "shapes", "params": {"num_classes": 3, "image_size": 16, "train_size": 48,
                                               "val_size": 16, "test_size": 16}},
        "teacher": {"model": {"name": "resnet8"}},
        "students": [
            {"name": "ce", "method": "ce", "model": {"name": "resnet8"}},
            {"name": "kd", "method": "kd", "model": {"name": "resnet8"}, "params": {"T": 4}},
        ],
        "train": {"epochs": 1, "batch_size": 16},
        "evaluate": {"subset_size": 4, "explainers": ["gradcam"]},
    }
    exp.update(over)
    return exp


@pytest.fixture
def write_experiment(tmp_path: Path):
    """Write a mapping (or raw text) to an experiment file and return its path."""

    def _write(obj, name: str = "exp.yaml") -> Path:
        p = tmp_path / name
        p.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
        return p

    return _write


SHRUNK_SHAPES = ["seeds=[0]", "data.params.train_size=32", "data.params.val_size=16",
                 "data.params.test_size=16", "data.params.image_size=16", "evaluate.subset_size=4",
                 "evaluate.explainers=[gradcam]", "report.enabled=false", "device=cpu"]
"""``--set`` overrides that shrink a shipped shapes experiment to a few seconds."""


def smoke_run_experiment(name: str, out: Path, overrides: list[str] = SHRUNK_SHAPES) -> Path:
    """``--smoke`` run of ``experiments/<name>`` with ``overrides``; returns the seed-0 folder."""
    from xkd.run import main

    path = Path(__file__).resolve().parents[1] / "experiments" / name
    args = [str(path), "--smoke", "--out", str(out)] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 0
    return out / "seed-0"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a gloo process group, torchrun's
    --master_port or a local server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gloo_env(rank: int, world: int, port: int) -> None:
    """Inside an ``mp.spawn`` worker: the environment torchrun would set for ``rank`` of
    ``world`` on this machine, no progress bars, one torch thread."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "XKD_NO_PROGRESS": "1"})
    torch.set_num_threads(1)
