"""Experiment-file validation: every bad file names the exact field, the CLI exits 2, no folder."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.conftest import tiny_experiment
from xkd.pipeline import checks as C
from xkd.errors import ConfigError, UserError
from xkd.run import main


def _with(path: list, value):
    exp = tiny_experiment()
    node = exp
    for p in path[:-1]:
        node = node.setdefault(p, {}) if isinstance(node, dict) else node[p]
    node[path[-1]] = value
    return exp


BAD = [
    # (description, mapping, field path that must appear in the message, fragment of the message)
    ("unknown top-level key", {**tiny_experiment(), "trian": {}}, "trian", "unknown key"),
    ("wrong type", _with(["train", "epochs"], "many"), "train.epochs", "integer"),
    ("bad value", _with(["train", "epochs"], 0), "train.epochs", "greater than or equal to 1"),
    ("bad literal", _with(["device"], "tpu"), "device", "'auto', 'cpu' or 'cuda'"),
    ("unknown dataset", _with(["data", "name"], "imagenet9"), "data.name", "allowed: "),
    ("unknown model", _with(["teacher", "model", "name"], "resnet9000"), "teacher.model.name", "allowed: "),
    ("unknown method", _with(["students", 1, "method"], "kdd"), "students[1].method", "allowed: ccl, ce, "),
    ("bad method param", _with(["students", 1, "params"], {"T": -1}), "students[1].params.T", "greater than"),
    ("unknown method param", _with(["students", 1, "params"], {"temp": 2}), "students[1].params.temp", "unknown key"),
    ("missing checkpoint", _with(["teacher", "model", "checkpoint"], "/nonexistent/t.pt"),
     "teacher.model.checkpoint", "file not found"),
    ("unknown explainer", _with(["explain", "method"], "lime"), "explain.method", "allowed: "),
    ("bad target rule", _with(["explain", "target"], "top5"), "explain.target", "label"),
    ("duplicate student", _with(["students", 1, "name"], "ce"), "students", "used twice"),
    ("bad dataset param", _with(["data", "params", "num_classes"], 99), "data.params.num_classes", ""),
    ("model name and factory", _with(["teacher", "model", "factory"], "pkg.mod:fn"), "teacher.model",
     "exactly one"),
    ("unknown optimizer", _with(["train", "optimizer"], {"name": "lion"}), "train.optimizer.name", "sgd"),
]


@pytest.mark.parametrize("desc,exp,field,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_file_names_the_field(desc, exp, field, fragment, write_experiment):
    path = write_experiment(exp)
    with pytest.raises(UserError) as info:
        C.load(path)
    msg = str(info.value)
    assert msg.startswith(field), msg
    assert fragment in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("desc,exp,field,fragment", BAD[:6], ids=[b[0] for b in BAD[:6]])
def test_cli_exit_code_2_one_line_no_folder(desc, exp, field, fragment, write_experiment, tmp_path, capsys):
    path = write_experiment(exp)
    out = tmp_path / "run"
    code = main([str(path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and field in err
    assert "Traceback" not in err
    assert not out.exists()


def test_yaml_that_executes_code_is_refused(write_experiment):
    path = write_experiment("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        C.load(path)


def test_missing_file_and_non_mapping(tmp_path, write_experiment):
    with pytest.raises(UserError, match="not found"):
        C.load(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="top level must be a mapping"):
        C.load(write_experiment("- a\n- b\n"))


def test_overrides_are_coerced_by_the_schema(write_experiment):
    path = write_experiment(tiny_experiment())
    cfg = C.load(path, ["train.epochs=3", "students[1].params.T=2.5", "students.kd.model.name=resnet14",
                        "train.optimizer.lr=1e-2", "data.params.decoy=null"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert C.method_params(cfg.students[1]).T == 2.5
    assert cfg.students[1].model.name == "resnet14"
    assert cfg.train.optimizer.lr == pytest.approx(0.01)
    with pytest.raises(ConfigError, match=r"^train.epochs"):
        C.load(path, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="key.path=value"):
        C.load(path, ["train.epochs"])


def test_resolved_config_writes_every_default(write_experiment):
    cfg = C.load(write_experiment(tiny_experiment()))
    res = C.resolved_dict(cfg)
    assert res["train"]["optimizer"]["momentum"] == 0.9
    assert res["students"][1]["params"]["T"] == 4  # method params resolved through their schema
    assert "alpha" in res["students"][1]["params"]
    # the resolved file validates back to the same config
    again = C.validate(copy.deepcopy(res))
    assert C.resolved_dict(again) == res
    yaml.safe_dump(res)


def test_per_model_train_override_inherits_the_rest(write_experiment):
    exp = tiny_experiment()
    exp["students"][0]["train"] = {"epochs": 5}
    cfg = C.load(write_experiment(exp))
    t = cfg.train_for(cfg.students[0].train)
    assert t.epochs == 5 and t.batch_size == 16
