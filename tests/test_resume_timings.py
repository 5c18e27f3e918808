"""``--resume`` keeps a run's timings and does not redo a complete run (issue 13, item 11).

A model's ``train_seconds`` is the sum of its epochs' seconds over every resumed part (the
``seconds`` of its history rows, written as the epochs ran), not the time of the resumed call,
which for an already trained model is the time to load a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_experiment
from xkd.run import main


def _history_seconds(folder: Path) -> float:
    rows = [json.loads(x) for x in (folder / "history.jsonl").read_text().splitlines() if x.strip()]
    return sum(r["seconds"] for r in rows)


def _rows(run: Path) -> dict[str, dict]:
    return {r["model"]: r for r in json.loads((run / "summary.json").read_text())["rows"]}


def test_resumed_run_reports_the_seconds_its_models_trained(tmp_path: Path, monkeypatch):
    exp = tiny_experiment(train={"epochs": 2, "batch_size": 16}, report={"enabled": False})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    import xkd.pipeline.context as C

    real_fit = C.fit

    def slow_then_killed(distiller, *a, desc="", **kw):
        if desc == "kd":  # killed after kd's first epoch; teacher and ce are done
            kw["stop_after_epoch"] = 1
            real_fit(distiller, *a, desc=desc, **kw)
            raise KeyboardInterrupt
        return real_fit(distiller, *a, desc=desc, **kw)

    run = tmp_path / "run"
    monkeypatch.setattr(C, "fit", slow_then_killed)
    assert main([str(path), "--out", str(run)]) == 130
    monkeypatch.setattr(C, "fit", real_fit)
    assert main([str(path), "--out", str(run), "--resume"]) == 0
    rows = _rows(run)
    for name, folder in (("teacher", run / "teacher"), ("ce", run / "students" / "ce"),
                         ("kd", run / "students" / "kd")):
        expected = _history_seconds(folder)  # teacher and ce: trained before the kill
        assert expected > 0.02
        assert rows[name]["train_seconds"] == pytest.approx(expected, abs=0.006), name
        assert rows[name]["epochs"] == 2


@pytest.mark.parametrize("seeds", [None, [0]])
def test_resume_of_a_complete_run_says_so_and_redoes_nothing(tmp_path: Path, capsys, monkeypatch, seeds):
    exp = tiny_experiment(report={"enabled": False}, seeds=seeds)
    exp["students"] = exp["students"][:1]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    run = tmp_path / "run"
    assert main([str(path), "--out", str(run)]) == 0
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    import xkd.pipeline.flow as F

    def no_seed(*a, **kw):
        raise AssertionError("a complete run was redone")

    monkeypatch.setattr(F, "run_one_seed", no_seed)
    capsys.readouterr()
    assert main([str(path), "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"{run}: run is complete; nothing to do" in out and "run folder:" in out
    after = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert after.keys() == before.keys()
    assert all(after[p] == before[p] for p in before if p.name not in {"status.json", ".lock"})
