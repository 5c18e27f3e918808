"""A run's own teacher reused as a pretrained teacher (issue 13 item 12).

``teacher: {pretrained: true, model: {checkpoint: RUN/teacher/best.pt}}`` (or ``checkpoint.pt``,
``last.pt``) must load the teacher the first run trained: its test accuracy and loss in the second
run are identical to the first run's. ``teacher.checkpoint`` (the wrong place) is one line that lists
the teacher section's fields and points at ``teacher.model.checkpoint``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xkd.config import parse
from xkd.errors import ConfigError
from xkd.run import main

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY = ["data.params.train_size=32", "data.params.val_size=16", "data.params.test_size=24",
        "data.params.image_size=16", "train.epochs=1", "teacher.train.epochs=1",
        "students=[{name: ce, method: ce, model: {name: resnet8}}]", "evaluate.subset_size=4",
        "evaluate.explainers=[gradcam]", "report.enabled=false", "device=cpu", "explain.cache=false"]


def _run(file: str, out: Path, extra: list[str] = ()) -> dict:
    args = [str(EXPERIMENTS / file), "--out", str(out)]
    for o in [*TINY, *extra]:
        args += ["--set", o]
    assert main(args) == 0
    return json.loads((out / "teacher" / "metrics.json").read_text())


def test_quickstart_teacher_reused_by_the_pretrained_teacher_experiment(tmp_path: Path) -> None:
    first = _run("quickstart.yaml", tmp_path / "quickstart")
    assert (tmp_path / "quickstart" / "teacher" / "best.pt").is_file()
    for name in ("best.pt", "checkpoint.pt", "last.pt"):
        ckpt = tmp_path / "quickstart" / "teacher" / name
        second = _run("quickstart_pretrained_teacher.yaml", tmp_path / f"reuse-{name}",
                      [f"teacher.model.checkpoint={ckpt}"])
        assert second["source"] == str(ckpt)
        assert "train_seconds" not in second, "a pretrained teacher is not trained again"
        assert (second["test_acc"], second["test_loss"]) == (first["test_acc"], first["test_loss"]), name


@pytest.mark.parametrize("layout", ["plain", "model", "state_dict", "ddp"])
def test_wrapped_state_dicts_load_as_teacher(tmp_path: Path, layout: str) -> None:
    import xkd.models as M
    from xkd.config import ModelConfig

    torch.manual_seed(1)
    src = M.build("resnet8", num_classes=4).eval()
    sd = src.state_dict()
    obj = {"plain": sd, "model": {"model": sd, "epoch": 2}, "state_dict": {"state_dict": sd, "step": 9},
           "ddp": {"model": {f"module.{k}": v for k, v in sd.items()}}}[layout]
    torch.save(obj, tmp_path / "t.pt")
    m = M.build(ModelConfig(name="resnet8", checkpoint=str(tmp_path / "t.pt")), 4).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), src(x), rtol=0, atol=0)


def test_teacher_checkpoint_in_the_wrong_place_lists_the_fields() -> None:
    raw = {"teacher": {"model": {"name": "resnet8"}, "pretrained": True, "checkpoint": "t.pt"},
           "students": [{"name": "ce", "method": "ce", "model": {"name": "resnet8"}}]}
    with pytest.raises(ConfigError) as e:
        parse(raw)
    msg = str(e.value)
    assert msg.startswith("teacher.checkpoint: unknown key 'checkpoint'") and "\n" not in msg
    assert "allowed: model, modality, train, pretrained, data" in msg
    assert "did you mean teacher.model.checkpoint?" in msg


def test_unknown_key_in_a_list_entry_lists_that_sections_fields() -> None:
    raw = {"students": [{"name": "ce", "method": "ce", "model": {"name": "resnet8", "weights": "x"}}]}
    with pytest.raises(ConfigError, match=r"^students\[0\]\.model\.weights: unknown key 'weights'; "
                                          r"allowed: name, factory, params, checkpoint$"):
        parse(raw)


def test_cli_reports_the_wrong_place_in_one_line(tmp_path: Path, capsys) -> None:
    exp = tmp_path / "e.yaml"
    exp.write_text("teacher: {model: {name: resnet8}, checkpoint: t.pt}\n"
                   "students: [{name: ce, method: ce, model: {name: resnet8}}]\n")
    assert main([str(exp), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "teacher.model.checkpoint" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()


def test_unknown_registered_params_list_their_schema_fields() -> None:
    """The same listing for sections validated against a registry's params model (checks.py)."""
    from tests.conftest import tiny_experiment
    from xkd.pipeline.checks import validate

    exp = tiny_experiment()
    exp["students"][1]["params"] = {"temp": 2}
    with pytest.raises(ConfigError, match=r"^students\[1\]\.params\.temp: unknown key 'temp'; allowed: T, alpha$"):
        validate(exp)
    exp = tiny_experiment()
    exp["data"]["params"]["num_clases"] = 3
    with pytest.raises(ConfigError, match=r"allowed: num_classes, .*did you mean data\.params\.num_classes\?\)$"):
        validate(exp)
