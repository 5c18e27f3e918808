"""Every shipped experiment file validates and passes preflight (``--check`` builds its data, models,
distillers and explainers without writing anything), so a file in ``experiments/`` cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from xkd.run import main

ROOT = Path(__file__).resolve().parents[1] / "experiments"
EXPERIMENTS = sorted(ROOT.glob("*.yaml")) + sorted((ROOT / "guidance").glob("*.yaml"))  # issue 15


def test_the_shipped_files_are_found():
    names = {p.name for p in EXPERIMENTS}
    assert {"quickstart.yaml", "decoy_shapes.yaml", "decoy_saliency_mix_sweep.yaml",
            "decoy_shapes_distill_only.yaml"} <= names


def _earlier_run(path: Path, tmp_path: Path) -> list[str]:
    """``--set`` for a file that reads an earlier run's output: the teacher checkpoint that
    ``quickstart_pretrained_teacher.yaml`` reuses (a resnet14 on the quickstart's 4 classes)."""
    if path.stem != "quickstart_pretrained_teacher":
        return []
    import torch

    from xkd.models import build

    ckpt = tmp_path / "earlier" / "checkpoint.pt"
    ckpt.parent.mkdir()
    torch.save({"format_version": 1, "model": build("resnet14", num_classes=4).state_dict()}, ckpt)
    return ["--set", f"teacher.model.checkpoint={ckpt}"]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[str(p.relative_to(ROOT).with_suffix("")) for p in EXPERIMENTS])
def test_experiment_file_passes_preflight(path: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run folder written by mistake would land here
    assert main([str(path), "--check", "--set", "device=cpu", *_earlier_run(path, tmp_path)]) == 0
    assert not (tmp_path / "runs").exists()
