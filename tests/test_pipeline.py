"""End to end: ``python -m xkd.run`` on a tiny experiment writes the run-folder contract,
resumes after a kill to the same weights, refuses to overwrite, and lists registered names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import tiny_experiment
from xkd import FORMAT_VERSION, io
from xkd.run import main


def _exp(**over):
    exp = tiny_experiment(**over)
    exp["students"].append({"name": "rkd_sal", "method": "reviewkd", "model": {"name": "resnet8"},
                            "params": {"warmup_epochs": 0, "saliency_mix": 0.5}})
    return exp


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(_exp()))
    out = root / "run"
    assert main([str(path), "--smoke", "--out", str(out), "--set", "report.enabled=false"]) == 0
    return out


def test_run_folder_contract(smoke_run: Path):
    r = smoke_run
    for f in ["config.yaml", "env.json", "summary.json", "status.json", "teacher/checkpoint.pt",
              "teacher/metrics.json", "explanations/index.json", "explanations/inputs.npz"]:
        assert (r / f).is_file(), f
    for s in ["ce", "kd", "rkd_sal"]:
        for f in ["last.pt", "best.pt", "history.jsonl", "metrics.json"]:
            assert (r / "students" / s / f).is_file(), (s, f)
    # every JSON/YAML file carries the format version
    assert yaml.safe_load((r / "config.yaml").read_text())["format_version"] == FORMAT_VERSION
    for f in list(r.rglob("*.json")):
        assert json.loads(f.read_text())["format_version"] == FORMAT_VERSION, f
    # the resolved config writes defaults out and validates again
    cfg = yaml.safe_load((r / "config.yaml").read_text())
    assert cfg["students"][2]["params"]["saliency_mix"] == 0.5
    assert cfg["train"]["optimizer"]["momentum"] == 0.9
    env = json.loads((r / "env.json").read_text())
    assert env["torch"] == torch.__version__ and "--smoke" in " ".join(env["command"] if isinstance(env["command"], list) else [env["command"]])
    assert json.loads((r / "status.json").read_text())["state"] == "complete"
    summary = json.loads((r / "summary.json").read_text())
    assert [row["model"] for row in summary["rows"]] == ["teacher", "ce", "kd", "rkd_sal"]
    assert no_temp_files(r)


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*.tmp")]


def test_checkpoints_load_weights_only(smoke_run: Path):
    for p in smoke_run.rglob("*.pt"):
        torch.load(p, weights_only=True)


def test_explanations_export(smoke_run: Path):
    ex = smoke_run / "explanations"
    index = json.loads((ex / "index.json").read_text())
    inputs = np.load(ex / "inputs.npz")
    n = index["n"]
    assert inputs["images"].shape[0] == n == 4 and inputs["display"].dtype == np.uint8
    assert inputs["masks"].shape == (n, 1, 16, 16)
    teacher = np.load(ex / "teacher.npz")
    for name, entry in index["models"].items():
        arr = np.load(ex / entry["file"])
        # every model is explained for the teacher's top-1 class
        np.testing.assert_array_equal(arr["target"], teacher["logits"].argmax(1))
        m = arr["map_gradcam"]
        assert m.shape == (n, 1, 16, 16) and (m >= 0).all()
    rkd = np.load(ex / "student_rkd_sal.npz")
    stages = index["models"]["rkd_sal"]["attention"]
    assert stages, "ReviewKD students export ABF attention maps"
    for stage, shape in stages.items():
        a = rkd[f"attn_{stage}"]
        assert a.shape[1] == 2 and list(a.shape[1:]) == shape
        assert (a > 0).all() and (a < 1).all()  # sigmoid attention
    assert rkd["weight_map"].shape == (n, 1, 16, 16)
    assert "attn_stage0" not in np.load(ex / "student_ce.npz")


def test_out_folder_is_never_overwritten(smoke_run: Path, tmp_path: Path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_exp()))
    before = (smoke_run / "summary.json").read_bytes()
    assert main([str(path), "--smoke", "--out", str(smoke_run)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (smoke_run / "summary.json").read_bytes() == before


def test_bad_explainer_layer_fails_before_any_folder(tmp_path: Path, capsys):
    exp = _exp()
    exp["explain"] = {"method": "gradcam", "params": {"layer": "no.such.layer"}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    assert main([str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "explain.params.layer" in err
    assert not (tmp_path / "run").exists()


def test_list_names_every_family(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for word in ["datasets: ", "shapes", "models: ", "resnet20", "tv:NAME", "methods: ", "reviewkd",
                 "explainers: ", "gradcam"]:
        assert word in out


def test_resume_after_kill_matches_uninterrupted(tmp_path: Path, monkeypatch):
    """A run killed in its second student epoch, resumed, ends with the same weights."""
    exp = _exp(deterministic=True)
    exp["students"] = exp["students"][1:2]  # kd only
    exp["train"] = {"epochs": 2, "batch_size": 16}
    exp["report"] = {"enabled": False}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    full = tmp_path / "full"
    assert main([str(path), "--out", str(full)]) == 0

    import xkd.pipeline.context as E

    real_fit = E.fit

    def killing_fit(distiller, *a, desc="", **kw):
        if desc == "kd":
            kw["stop_after_epoch"] = 1
            real_fit(distiller, *a, desc=desc, **kw)
            raise KeyboardInterrupt
        return real_fit(distiller, *a, desc=desc, **kw)

    part = tmp_path / "part"
    monkeypatch.setattr(E, "fit", killing_fit)
    assert main([str(path), "--out", str(part)]) == 130
    assert not (part / "summary.json").exists()
    assert json.loads((part / "status.json").read_text())["state"] == "failed"
    monkeypatch.setattr(E, "fit", real_fit)
    assert main([str(path), "--out", str(part), "--resume"]) == 0
    a = io.torch_load(full / "students/kd/last.pt")["trainable"]
    b = io.torch_load(part / "students/kd/last.pt")["trainable"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(line)["epoch"] for line in (part / "students/kd/history.jsonl").read_text().splitlines()]
    assert rows == [1, 2]


def test_cli_module_entry_point(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: nope}\n")
    proc = subprocess.run([sys.executable, "-m", "xkd.run", str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: data.name: unknown dataset 'nope'")
    assert "Traceback" not in proc.stderr


def test_aggregate_seeds_mean_and_sample_std():
    from xkd.pipeline.flow import aggregate_seeds

    s = [{"rows": [{"model": "ce", "method": "ce", "test_acc": a, "params": 10}]} for a in (0.5, 0.7, 0.9)]
    row = aggregate_seeds(s)[0]
    assert row["n_seeds"] == 3
    assert row["test_acc_mean"] == pytest.approx(0.7)
    assert row["test_acc_std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert row["params_std"] == 0


def test_weight_map_quality_against_hand_values():
    from xkd.pipeline.teacher_saliency import weight_map_quality

    class Cache:  # maps at the image size, read in chunks (cache.batch)
        array = np.zeros((2, 1, 4, 4), dtype=np.float16)

        def batch(self, rows):
            return torch.from_numpy(self.array[list(rows)].astype(np.float32))

    Cache.array[0, 0, 0, 0] = 3.0  # inside the mask
    Cache.array[0, 0, 3, 3] = 1.0  # outside
    Cache.array[1, 0, 3, 3] = 2.0  # all mass outside, far from the mask
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1
    ds = [{"mask": mask}, {"mask": mask}]
    q = weight_map_quality(Cache(), ds, tolerance=0.0, chunk=1)
    assert q["weight_map_relevance_mass"] == pytest.approx((0.75 + 0.0) / 2)
    assert q["weight_map_pointing_game"] == pytest.approx((1.0 + 0.0) / 2)
