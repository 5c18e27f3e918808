"""cGAN-KD in the experiment flow (the experiment files: test_cgan_experiments.py, slow): a GAN
killed mid-training and resumed with the run's --resume ends with the same generator, the
fake-set cache, and the bad-input lines (exit 2, one line, no run folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from xkd import io
from xkd.config import DataConfig
from xkd.data import build_data
from xkd.gan.fakeset import FakeSplit, RealOnly, load_fake_set, save_fake_set
from xkd.errors import UserError
from xkd.run import main

SMALL = {"image_size": 16, "train_size": 48, "val_size": 16, "test_size": 16}


def _exp(tmp: Path, data: dict, students: list[dict], name: str = "exp.yaml") -> Path:
    exp = {"name": "cg", "device": "cpu", "data": data, "teacher": {"model": {"name": "resnet8"}},
           "cgan": {"gan": {"steps": 4, "batch_size": 8, "g_channels": 8, "d_channels": 8,
                            "z_dim": 8, "embed_dim": 8, "checkpoint_every": 1, "log_every": 1},
                    "subsample": {"steps": 2, "batch_size": 8, "burn_in": 8, "proposal_batch": 8}},
           "students": students, "train": {"epochs": 1, "batch_size": 8},
           "evaluate": {"subset_size": 4, "explainers": ["gradcam"]},
           "output": {"root": str(tmp / "runs")}}
    path = tmp / name
    path.write_text(yaml.safe_dump(exp))
    return path


CLS = {"name": "shapes", "params": {"num_classes": 3, **SMALL}}
CE = {"name": "ce", "method": "ce", "model": {"name": "resnet8"}}


def _cg(name: str = "cg", **params) -> dict:
    return {"name": name, "method": "cgan_kd", "model": {"name": "resnet8"},
            "params": {"fake_size": 12, "init_from": "ce", **params}}


def test_regression_fake_set_is_cached_in_the_label_range_and_reported(tmp_path: Path):
    data = {"name": "shapes_angle", "params": SMALL}
    path = _exp(tmp_path, data, [CE, _cg(filter={"enabled": True, "quantile": 0.5, "relabel": True})])
    out = tmp_path / "run"
    assert main([str(path), "--out", str(out), "--set", "report.enabled=false"]) == 0
    b = build_data(DataConfig(**data), 0)
    (fake_file,) = (out / "cgan").glob("fake_*.npz")
    images, labels, meta = load_fake_set(fake_file, b)
    assert images.shape == (12, 3, 16, 16) and meta["dataset"] == "shapes_angle"
    lo, hi = b.label_offset, b.label_offset + b.label_scale
    assert float(labels.min()) >= lo - 1e-6 and float(labels.max()) <= hi + 1e-6
    rows = {r["model"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    assert rows["cg"]["fake_used"] == 12 and "test_rmse" in rows["cg"]


def test_gan_killed_mid_training_resumes_to_the_same_generator(tmp_path: Path, monkeypatch):
    import xkd.gan.training as T

    path = _exp(tmp_path, CLS, [CE, _cg()])
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([str(path), "--out", str(a), "--set", "report.enabled=false"]) == 0
    real = T.train_gan

    def killed(*args, **kw):
        real(*args, **{**kw, "stop_after": 2})
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "train_gan", killed)
    assert main([str(path), "--out", str(b), "--set", "report.enabled=false"]) == 130
    assert (b / "cgan" / "last.pt").is_file() and not (b / "cgan" / "generator.pt").exists()
    monkeypatch.setattr(T, "train_gan", real)
    assert main([str(path), "--out", str(b), "--resume", "--set", "report.enabled=false"]) == 0
    ga, gb = io.torch_load(a / "cgan" / "generator.pt"), io.torch_load(b / "cgan" / "generator.pt")
    assert all(torch.equal(ga["state"][k], gb["state"][k]) for k in ga["state"])
    steps = [json.loads(line)["step"] for line in (b / "cgan" / "history.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    sa, sb = (json.loads((r / "summary.json").read_text())["rows"] for r in (a, b))
    assert sa[-1]["test_acc"] == sb[-1]["test_acc"]


@pytest.mark.parametrize("student, fragment", [
    (_cg(filter={"quantile": 1.5}), "students[1].params.filter.quantile"),
    (_cg(filter={"quantile": 0.0}), "students[1].params.filter.quantile"),
    (_cg(init_from="later"), "students[1].params.init_from"),
    (_cg(base="hkd"), "students[1].params.base"),
    (_cg(base_params={"T": -1}, base="kd"), "students[1].params.base_params.T"),
    (_cg(base_params={"tau": 4}, base="kd"), "students[1].params.base_params.tau: unknown parameter"),
])
def test_bad_cgan_input_is_one_line_exit_2_and_no_folder(tmp_path: Path, capsys, student, fragment):
    path = _exp(tmp_path, CLS, [CE, student])
    assert main([str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "run").exists()


def test_fake_file_from_another_dataset_or_label_range_is_refused(tmp_path: Path, capsys):
    cls = build_data(DataConfig(**CLS), 0)
    other = tmp_path / "digits_fakes.npz"
    save_fake_set(other, torch.zeros(4, 3, 16, 16), torch.zeros(4, dtype=torch.long),
                  build_data(DataConfig(name="shapes", params={"num_classes": 4, **SMALL}), 0), {})
    path = _exp(tmp_path, CLS, [CE, _cg(fake_data=str(other))])
    assert main([str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "students[1].params.fake_data" in err[0] and "num_classes" in err[0]
    assert not (tmp_path / "run").exists()
    ang = {"name": "shapes_angle", "params": SMALL}
    narrow = build_data(DataConfig(name="shapes_angle", params={**SMALL, "max_angle": 30}), 0)
    f2 = tmp_path / "narrow.npz"
    save_fake_set(f2, torch.zeros(4, 3, 16, 16), torch.zeros(4), narrow, {})
    with pytest.raises(UserError, match="label range"):
        load_fake_set(f2, build_data(DataConfig(**ang), 0))
    with pytest.raises(UserError, match="made for dataset 'shapes'"):
        load_fake_set(other, build_data(DataConfig(**ang), 0))
    # a matching file is accepted and its samples collate with the real ones
    good = tmp_path / "good.npz"
    save_fake_set(good, torch.ones(4, 3, 16, 16), torch.tensor([0, 1, 2, 0]), cls, {})
    images, labels, _ = load_fake_set(good, cls)
    fake, real = FakeSplit(images, labels, offset=len(cls.train)), RealOnly(cls.train)
    assert set(fake[0]) == set(real[0]) == {"image", "label", "index"}
    assert int(fake[3]["index"]) == len(cls.train) + 3 and fake[3]["label"].dtype == real[0]["label"].dtype


def test_budgeted_rejection_accepts_with_probability_r_over_m_and_stops_at_budget():
    from xkd.pipeline.generated_process import budgeted_rejection

    gen = torch.Generator().manual_seed(0)

    def propose(ys: torch.Tensor) -> torch.Tensor:  # x ~ U(0, 1), ratio r(x) = x, M -> 1
        return torch.rand(len(ys), generator=gen)

    def ratio(x: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return x

    levels = torch.tensor([0, 1])
    x, ys, st = budgeted_rejection(propose, ratio, levels, quota=2000, seed=3, burn_in=200, batch_size=500)
    # accepted density 2x on [0, 1]: mean 2/3, P(x < 1/2) = 1/4; acceptance E[r]/M = 1/2
    assert len(x) == 4000 and (ys == 0).sum() == 2000 == (ys == 1).sum()
    assert abs(float(x.mean()) - 2 / 3) < 0.015 and abs(float((x < 0.5).float().mean()) - 0.25) < 0.02
    assert abs(st["acceptance_rate"] - 0.5) < 0.03

    def rare(x: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:  # E[r] / M ~ 1/51: ~2% accepted
        return x.double() ** 50

    x, ys, st = budgeted_rejection(propose, rare, torch.tensor([0]), quota=50, seed=3, burn_in=10,
                                   batch_size=100, budget=4)
    assert st["proposed"] == 200 and len(x) == st["accepted"] < 50


def test_balanced_subset_keeps_every_level_when_n_is_not_a_multiple():
    from xkd.pipeline.generated_process import _balanced

    # 3 levels, 4 kept samples each (grouped by level, as rejection sampling returns them)
    labels = torch.tensor([0.0] * 4 + [0.5] * 4 + [1.0] * 4)
    levels = torch.tensor([0.0, 0.5, 1.0])
    keep = torch.ones(12, dtype=torch.bool)
    idx = _balanced(labels, keep, levels, 7)  # 3 + 2 + 2 (not 3 + 3 + 1: the last level cut short)
    assert idx.tolist() == [0, 1, 2, 4, 5, 8, 9]
    # a short level (one survivor at 0.5) is topped up from the others' remaining kept samples
    keep[5:8] = False
    assert _balanced(labels, keep, levels, 6).tolist() == [0, 1, 2, 4, 8, 9]
    assert _balanced(labels, keep, levels, 20).tolist() == keep.nonzero().flatten().tolist()
