"""``python -m xkd.reproduce``: the suites' --list table, the fake data in the real formats, the
paper | xkd | difference table, restart where a suite stopped, and a dry run of two CIFAR-100
pairs end to end (the whole suite is the slow test at the bottom)."""

from __future__ import annotations

import pickle
import re
import time
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.datasets import CIFAR100

from xkd import io
from xkd.config import ModelConfig
from xkd.config.loading import load_raw
from xkd.reproduce import fake_data, results
from xkd.reproduce.cli import main
from xkd.reproduce.suites import available, load_suite

ROOT = Path(__file__).resolve().parents[1]
TWO_PAIRS = ["resnet56_resnet20", "wrn40-2_wrn40-1"]


def _list_table(out: str) -> list[list[str]]:
    lines = out.strip().splitlines()
    assert lines[0].split() == ["suite", "pair", "model", "method", "paper", "top-1", "source"]
    starts = [m.start() for m in re.finditer(r"\S+", lines[1])]  # the dashes under each column
    rows = []
    for line in lines[2:-1]:
        rows.append([line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])])
    return rows


def test_list_shows_at_least_12_cifar100_pairs_with_the_papers_numbers(capsys):
    assert main(["--list"]) == 0
    rows = _list_table(capsys.readouterr().out)
    c100 = [r for r in rows if r[0] == "cifar100"]
    pairs = {r[1] for r in c100 if r[1] != "FFSD online (no teacher)"}
    assert len(pairs) >= 12
    reviewkd = {r[1]: r[4] for r in c100 if r[2] == "reviewkd"}
    # values of the ReviewKD paper (tables 1-2), as in reference/seed_methods.md 1.8
    assert reviewkd["ResNet56 -> ResNet20"] == "71.89" and reviewkd["ResNet32x4 -> ResNet8x4"] == "75.63"
    assert reviewkd["ResNet32x4 -> ShuffleNetV2"] == "77.78" and reviewkd["VGG13 -> MobileNetV2"] == "70.37*"
    with_number = {r[1] for r in c100 if r[2] == "reviewkd" and r[4] != "-"}
    assert len(with_number) >= 11  # every pair but ResNet50 -> VGG8, whose number the notes lack
    hkd = {r[1]: r[4] for r in c100 if r[2] == "hkd"}
    assert hkd == {"ResNet32x4 -> ResNet8x4": "76.13", "ResNet32x4 -> ShuffleNetV2": "76.92",
                   "VGG13 -> MobileNetV2": "70.48", "ResNet50 -> VGG8": "74.88",
                   "ResNet50 -> MobileNetV2": "70.72"}
    assert {r[2] for r in c100 if r[1] == "FFSD online (no teacher)"} >= {"ffsd_resnet20", "ffsd_wrn40-2"}
    assert any(r[0] == "imagenet" and r[2] == "reviewkd" and r[4] == "71.61" for r in rows)
    for r in c100:  # each method of the brief is in every ReviewKD pair
        if r[2] == "teacher":
            assert r[3] == "pretrained"
    methods = {(r[1], r[3]) for r in c100}
    for pair in pairs:
        assert {(pair, m) for m in ("ce", "kd", "reviewkd", "e2kd")} <= methods


def test_suite_files_share_one_schedule_and_follow_the_papers():
    suite = load_suite("cifar100")
    assert set(available()) >= {"cifar100", "imagenet"}
    small_lr = {"mobilenetv2_kd", "shufflenetv1", "shufflenetv2"}
    for run in suite.runs:
        raw = load_raw(suite.path(run))
        text = suite.path(run).read_text()
        assert "base: _base.yaml" in text and "epochs: 240" not in text  # schedule in one place
        t = raw["train"]
        if run.file == "ffsd.yaml":
            assert (t["epochs"], t["batch_size"], t["optimizer"]["lr"]) == (300, 128, 0.1)
            continue
        assert (t["epochs"], t["batch_size"], t["schedule"]["milestones"]) == (240, 64, [150, 180, 210])
        assert t["optimizer"]["weight_decay"] == 5e-4 and t["optimizer"]["momentum"] == 0.9
        student = raw["students"][0]["model"]["name"]
        assert t["optimizer"]["lr"] == (0.01 if student in small_lr else 0.05), run.file
        assert raw["teacher"]["pretrained"] is True and raw["data"]["name"] == "cifar100"
        review = {s["name"]: s["params"] for s in raw["students"] if s["method"] == "reviewkd"}
        assert review["reviewkd_gradcam"]["saliency_mix"] > 0 and "saliency_mix" not in review["reviewkd"]
        # the recommended guided student: the pair's own review settings plus e2KD's term
        guided = dict(review["reviewkd_e2kd"])
        assert (guided.pop("kd_weight"), guided.pop("T"), guided.pop("e2kd_weight")) == (1.0, 1.0, 1.0)
        assert guided == review["reviewkd"], run.file
    weights = {r.file: {s["name"]: s.get("params", {}) for s in load_raw(suite.path(r))["students"]}
               for r in suite.runs}
    # the official scripts' review weights (reference/seed_methods.md 1.7)
    assert weights["resnet56_resnet20.yaml"]["reviewkd"]["review_weight"] == 0.6
    assert weights["resnet110_resnet32.yaml"]["reviewkd"]["review_weight"] == 1.0
    assert weights["resnet32x4_shufflenetv2.yaml"]["reviewkd"]["review_weight"] == 8.0
    assert weights["wrn40-2_wrn16-2.yaml"]["reviewkd"]["review_weight"] == 5.0


def test_fake_cifar100_is_read_by_torchvision_and_keeps_the_md5_check_elsewhere(tmp_path):
    root = fake_data.write_cifar100(tmp_path, train_per_class=2, test_per_class=1)
    with pytest.raises(RuntimeError, match="corrupted"):  # real archive's checksums: refused
        CIFAR100(str(root), train=True, download=False)
    with fake_data.unverified_cifar100():
        train = CIFAR100(str(root), train=True, download=False)
        test = CIFAR100(str(root), train=False, download=False)
    assert CIFAR100.train_list[0][1] == "16019d7e3df5f24257cddd939b257f8d"  # restored
    assert len(train) == 200 and len(test) == 100 and len(train.classes) == 100
    assert sorted(train.targets) == sorted(list(range(100)) * 2)
    with open(root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    img, label = train[5]
    # row layout of the archive: 1024 red, 1024 green, 1024 blue values, row-major 32x32
    row = raw["data"][5]
    assert img.size == (32, 32) and label == raw["fine_labels"][5]
    assert img.getpixel((7, 3)) == (row[3 * 32 + 7], row[1024 + 3 * 32 + 7], row[2048 + 3 * 32 + 7])


def test_fake_imagefolder_and_teacher_checkpoint(tmp_path):
    from xkd.models import build
    from xkd.models.checkpoint import load_checkpoint

    root = fake_data.write_imagefolder(tmp_path / "img", classes=3, train_per_class=2, test_per_class=1)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["n01440764", "n01440765", "n01440766"]
    assert len(list((root / "test").rglob("*.JPEG"))) == 3
    mc = ModelConfig(name="resnet8")
    ckpt = fake_data.write_teacher(tmp_path / "t.pt", mc, num_classes=5, seed=3)
    saved = torch.load(ckpt, weights_only=True)["model"]
    net = build(mc, num_classes=5)
    load_checkpoint(net, str(ckpt), "teacher.model.checkpoint")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())


def _suite_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    """A one-pair suite on the tiny built-in shapes data (fast), in a folder of its own."""
    d = tmp_path / "suite"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    return d


PAIR = """
name: tiny-pair
seed: 0
device: cpu
data: {name: shapes, params: {num_classes: 3, image_size: 16, train_size: 48, val_size: 24, test_size: 24}}
teacher: {model: {name: resnet8}, train: {epochs: 1}}
students:
  - {name: ce, method: ce, model: {name: resnet8}}
  - {name: kd, method: kd, model: {name: resnet8}}
train: {epochs: 2, batch_size: 16, max_steps_per_epoch: 2}
evaluate: {subset_size: 4, explainers: [gradcam], metrics: [agreement, cosine]}
report: {enabled: false}
"""


def _mtimes(folder: Path) -> dict[str, int]:
    """Modification times of the training checkpoints (last.pt, best.pt) of a run folder."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.pt")
            if p.name in ("last.pt", "best.pt")}


def test_real_run_writes_the_table_and_restarts_where_it_stopped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    suite_yaml = {"name": "tiny", "title": "tiny", "dry_run": {"data": "cifar100"},
                  "runs": [{"file": "pair.yaml", "pair": "ResNet8 -> ResNet8",
                            "paper": {"ce": {"top1": 40.0, "source": "made up"},
                                      "kd": {"top1": 45.5, "source": "made up", "verified": False}}}]}
    d = _suite_dir(tmp_path, {"pair.yaml": PAIR, "suite.yaml": yaml.safe_dump(suite_yaml)})
    out, folder = tmp_path / "out", tmp_path / "out" / "pair"
    assert main([str(d), "--out", str(out)]) == 0
    rows = {r["model"]: r for r in io.read_json(out / "results.json")["rows"]}
    summary = {r["model"]: r for r in io.read_json(folder / "summary.json")["rows"]}
    assert rows["ce"]["xkd"] == pytest.approx(100 * summary["ce"]["test_acc"])
    assert rows["kd"]["difference"] == pytest.approx(100 * summary["kd"]["test_acc"] - 45.5)
    assert rows["teacher"]["paper"] is None and rows["teacher"]["difference"] is None
    md = (out / "results.md").read_text()
    assert "| ResNet8 -> ResNet8 | kd | 45.50* |" in md and "Dry run" not in md

    # the same command again: the finished file is skipped, nothing is rewritten
    before = _mtimes(folder)
    assert main([str(d), "--out", str(out)]) == 0
    assert "finished before, skipped" in capsys.readouterr().out
    assert _mtimes(folder) == before

    # stopped while the kd student trained: the restart resumes the folder (teacher and ce kept)
    (folder / "summary.json").unlink()
    import shutil

    shutil.rmtree(folder / "students" / "kd")
    assert results.file_state(folder) != "complete"
    assert main([str(d), "--out", str(out)]) == 0
    after = _mtimes(folder)
    assert {k: v for k, v in after.items() if not k.startswith("students/kd")} == \
        {k: v for k, v in before.items() if not k.startswith("students/kd")}
    assert "students/kd/last.pt" in after and (folder / "summary.json").is_file()


def test_a_folder_that_is_not_a_run_fails_that_file_only(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    suite_yaml = {"name": "tiny", "title": "tiny", "dry_run": {"data": "cifar100"},
                  "runs": [{"file": "a.yaml", "pair": "a"}, {"file": "b.yaml", "pair": "b"}]}
    d = _suite_dir(tmp_path, {"a.yaml": PAIR, "b.yaml": PAIR.replace("tiny-pair", "b"),
                              "suite.yaml": yaml.safe_dump(suite_yaml)})
    (tmp_path / "out" / "a").mkdir(parents=True)
    (tmp_path / "out" / "a" / "notes.txt").write_text("mine")
    (tmp_path / "out" / "b").mkdir()
    (tmp_path / "out" / "b" / "status.json").write_text("{}")  # stopped before its config.yaml
    assert main([str(d), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "FAILED a.yaml" in err and "not a run folder" in err
    assert (tmp_path / "out" / "a" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "out" / "b" / "summary.json").is_file()


def test_dry_run_of_two_cifar100_pairs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    args = ["cifar100", "--dry-run", "--out", str(tmp_path / "dry")]
    for stem in TWO_PAIRS:
        args += ["--only", stem]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "dry run cifar100: 2 of 2 files ran" in out
    rows = [r for r in io.read_json(tmp_path / "dry" / "results.json")["rows"]
            if Path(r["file"]).stem in TWO_PAIRS]
    assert {r["state"] for r in rows} == {"complete"} and {Path(r["file"]).stem for r in rows} == set(TWO_PAIRS)
    assert {r["model"] for r in rows} >= {"teacher", "ce", "kd", "reviewkd", "reviewkd_gradcam", "reviewkd_e2kd", "e2kd"}
    assert all(0 <= r["xkd"] <= 100 for r in rows)
    for stem in TWO_PAIRS:
        cfg = io.read_yaml(tmp_path / "dry" / stem / "config.yaml")
        assert cfg["data"]["download"] is False and "_fake_data" in cfg["data"]["root"]
        assert io.read_json(tmp_path / "dry" / stem / "env.json")["smoke"] is True
    assert "Dry run on fake data" in (tmp_path / "dry" / "results.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dry"]


def test_usage_mistakes_are_one_line_exit_2(capsys):
    assert main(["nope"]) == 2
    assert main(["cifar100", "--only", "resnet9_resnet1"]) == 2
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("error: ") for e in err)
    assert "resnet56_resnet20" in err[1]


@pytest.mark.slow
def test_full_cifar100_dry_run(tmp_path, monkeypatch):
    """Every file of the CIFAR-100 suite on fake data (under 10 minutes on a 2-core CPU)."""
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    assert main(["cifar100", "--dry-run", "--out", str(tmp_path / "dry")]) == 0
    rows = io.read_json(tmp_path / "dry" / "results.json")["rows"]
    assert len({r["file"] for r in rows}) == len(load_suite("cifar100").runs)
    assert {r["state"] for r in rows} == {"complete"}
    print(f"full cifar100 dry run: {time.perf_counter() - t0:.0f} s")


def test_teachers_dir_replaces_the_files_checkpoint_folder():
    from xkd.reproduce.runner import _teacher_override

    suite = load_suite("cifar100")
    by = {r.file: suite.path(r) for r in suite.runs}
    assert _teacher_override(by["resnet56_resnet20.yaml"], "/t") == [
        "teacher.model.checkpoint=/t/resnet56_vanilla/ckpt_epoch_240.pth"]
    assert _teacher_override(by["resnet56_resnet20.yaml"], None) == []
    assert _teacher_override(by["ffsd.yaml"], "/t") == []  # no teacher


def test_dry_run_under_torchrun_two_ranks(tmp_path):
    """``torchrun --nproc_per_node 2`` (gloo): rank 0 writes the fake data and teacher, the other
    rank waits for them; one pair runs end to end and one table is written."""
    import os
    import subprocess
    import sys

    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XKD_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "xkd.reproduce", "cifar100", "--dry-run", "--out", str(tmp_path / "dry"),
           "--only", "resnet56_resnet20"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("dry run cifar100: 1 of 1 files ran") == 1
    rows = [x for x in io.read_json(tmp_path / "dry" / "results.json")["rows"] if x["file"] == "resnet56_resnet20.yaml"]
    assert {x["state"] for x in rows} == {"complete"}
    assert len(list((tmp_path / "dry" / "_fake_teachers").iterdir())) == 1


def test_a_disk_fault_is_one_line_with_exit_2(monkeypatch, capsys):
    """Like xkd.run and xkd.report (the shared ``xkd.errors.run_cli``): an OSError while a suite
    writes is one ``error:`` line naming the file and the cause, exit 2, no traceback."""
    import errno

    from xkd.reproduce import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/reproduce-cifar100/results.md")

    monkeypatch.setattr(cli, "_run", full)
    assert cli.main(["cifar100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: /runs/reproduce-cifar100/results.md: No space left")
    assert "[errno 28]" in err[0] and "run the same command again" in err[0]
