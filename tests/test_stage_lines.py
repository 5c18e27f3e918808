"""Feedback while a run goes (issue 13 item 14): the run folder first, then one line per stage as
it starts, in the order the stages run."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import tiny_experiment
from xkd.run import main


def test_one_line_per_stage_in_order(tmp_path: Path, write_experiment, capsys) -> None:
    exp = tiny_experiment()
    exp["evaluate"]["metrics"] = ["deletion"]
    out = tmp_path / "run"
    assert main([str(write_experiment(exp)), "--out", str(out)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[xkd] ")]
    stages = [ln.split(":")[0] for ln in lines if ln.startswith(("[xkd] stage", "[xkd] seed"))]
    assert stages[1:] == ["[xkd] stage teacher", "[xkd] stage student 1/2", "[xkd] stage student 2/2",
                      "[xkd] stage evaluation", "[xkd] stage explanations", "[xkd] stage report"]
    first = next(i for i, ln in enumerate(lines) if ln.startswith("[xkd] seed"))
    assert lines[first] == f"[xkd] seed 0 -> {out.resolve()}"
    assert all(not ln.startswith("[xkd] stage") for ln in lines[:first])
    assert "training resnet8, 1 epochs" in lines[first + 1]


def test_saliency_cache_lines_say_built_then_reused(tmp_path: Path, write_experiment, capsys) -> None:
    exp = tiny_experiment(students=[{"name": "rg", "method": "reviewkd", "model": {"name": "resnet8"},
                                     "params": {"saliency_mix": 0.5}}])
    exp["report"] = {"enabled": False}
    path = write_experiment(exp)
    out = tmp_path / "run"
    assert main([str(path), "--out", str(out)]) == 0
    first = capsys.readouterr()
    lines = [ln for ln in first.out.splitlines() if ln.startswith(("[xkd] stage teacher saliency", "[xkd] saliency"))]
    assert lines[0].startswith("[xkd] stage teacher saliency: gradcam maps of 48 training images")
    assert lines[1].endswith(": built")
    assert "missing" not in first.err  # the first build is normal, not a warning
    import shutil

    shutil.rmtree(out / "students")  # retrain the student in the same folder: its cache is kept
    (out / "summary.json").unlink()
    assert main([str(path), "--out", str(out), "--resume"]) == 0
    again = [ln for ln in capsys.readouterr().out.splitlines() if "saliency cache" in ln]
    assert again[-1].endswith("reused (built by an earlier run)")
