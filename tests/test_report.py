"""The report: ``python -m xkd.report RUN`` on a real (tiny, smoke) run folder.

One run folder is trained once per module (teacher resnet8, students ce and saliency-weighted
reviewkd on 16 px shapes); every test that changes files works on a copy.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from xkd import io
from xkd.config import ExperimentConfig
from xkd.pipeline.checks import resolved_dict
from xkd.errors import UserError
from xkd.report import build_report, build_seed_report
from xkd.report.cli import main as report_main
from xkd.report.loading import load_run
from xkd.report.stats import bootstrap_summary
from xkd.run import main as run_main


def experiment() -> dict:
    return {
        "name": "reptiny", "seed": 0, "device": "cpu",
        "data": {"name": "shapes", "params": {"num_classes": 3, "image_size": 16, "train_size": 48,
                                              "val_size": 16, "test_size": 16}},
        "teacher": {"model": {"name": "resnet8"}},
        "students": [
            {"name": "ce", "method": "ce", "model": {"name": "resnet8"}},
            {"name": "reviewkd", "method": "reviewkd", "model": {"name": "resnet8"},
             "params": {"saliency_mix": 0.5, "warmup_epochs": 0}},
        ],
        "train": {"epochs": 1, "batch_size": 16},
        "evaluate": {"subset_size": 16, "explainers": ["gradcam", "saliency"]},
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report")
    exp = base / "exp.yaml"
    exp.write_text(yaml.safe_dump(experiment()))
    out = base / "run"
    assert run_main([str(exp), "--smoke", "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def _agg(run: Path) -> dict:
    return io.read_json(run / "metrics" / "aggregates.json")


def test_report_files_exist_and_html_is_self_contained(run_dir: Path) -> None:
    rep = run_dir / "report"
    assert (rep / "report.md").is_file() and (rep / "report.html").is_file()
    pngs = sorted(p.name for p in (rep / "figures").glob("*.png"))
    for name in ("curves_gradcam.png", "alignment_gradcam.png", "topk_gradcam.png",
                 "examples_gradcam.png", "attention_reviewkd.png", "sanity.png", "training.png"):
        assert name in pngs
    html = (rep / "report.html").read_text()
    srcs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in html and "<script" not in html and "http://" not in html
    assert html.count("<img") == len(pngs)
    assert not list(run_dir.glob(".report-build-*"))


def test_tables_hold_every_model_and_the_control_rows(run_dir: Path) -> None:
    agg = _agg(run_dir)
    rows = {(r["metric"], r["model"], r["explainer"]) for r in agg["results"]}
    for e in ("gradcam", "saliency"):
        for model in ("teacher", "ce", "reviewkd"):
            assert ("deletion", model, e) in rows and ("pointing_game", model, e) in rows
        for student in ("ce", "reviewkd"):
            assert ("cosine", student, e) in rows and ("kendall_tau", student, e) in rows
        for c in ("control_random", "control_uniform"):
            assert ("cosine", c, e) in rows
    for c in ("control_random", "control_uniform"):
        assert ("deletion", c, "") in rows and ("relevance_mass_accuracy", c, "") in rows
    assert ("agreement", "ce", "") in rows and ("kl_divergence", "reviewkd", "") in rows
    assert ("model_randomisation", "teacher", "gradcam") in rows
    md = (run_dir / "report" / "report.md").read_text()
    for title in ("## Provenance", "## Prediction fidelity", "## Faithfulness", "## Localisation",
                  "## Teacher-student alignment", "## Sanity check", "## Skipped", "## Cost"):
        assert title in md
    faith = md.split("## Faithfulness")[1].split("## Localisation")[0]
    for name in ("| teacher |", "| ce |", "| reviewkd |", "| control_random |", "| control_uniform |"):
        assert name in faith
    assert "deletion ↓" in faith and "insertion ↑" in faith
    assert set(agg["cost_seconds"]) == {r["metric"] for r in agg["results"]}


def test_aggregates_equal_a_recomputation_from_the_csv(run_dir: Path) -> None:
    agg = _agg(run_dir)
    assert agg["format_version"] == 1 and agg["results"]
    for r in agg["results"]:
        with open(run_dir / "metrics" / r["file"]) as f:
            header = f.readline().strip().split(",")
            vals = np.array([float(line.split(",")[header.index("value")]) for line in f])
        ok = vals[~np.isnan(vals)]
        assert r["n"] == ok.size and r["n_nan"] == vals.size - ok.size
        if ok.size:
            assert r["mean"] == pytest.approx(ok.mean(), rel=1e-12, abs=1e-15)
            rng = np.random.default_rng(agg["bootstrap"]["seed"])
            means = ok[rng.integers(0, ok.size, (agg["bootstrap"]["resamples"], ok.size))].mean(1)
            assert r["ci_low"] == pytest.approx(np.quantile(means, 0.025), abs=1e-12)
            assert r["ci_high"] == pytest.approx(np.quantile(means, 0.975), abs=1e-12)
        else:
            assert r["mean"] is None  # NaN is written as null


def test_cli_recomputes_a_subset_from_the_checkpoints_without_retraining(copy_run: Path, capsys) -> None:
    pts = sorted(copy_run.rglob("*.pt"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in pts}
    rc = report_main([str(copy_run), "--metrics", "deletion,cosine", "--subset", "8",
                      "--perturbation-samples", "6", "--no-figures", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in pts} == before
    agg = _agg(copy_run)
    assert {r["metric"] for r in agg["results"]} == {"deletion", "cosine"} and agg["n_samples"] == 8
    assert {r["n"] + r["n_nan"] for r in agg["results"] if r["metric"] == "deletion"} == {6}
    assert {r["n"] + r["n_nan"] for r in agg["results"] if r["metric"] == "cosine"} == {8}
    assert not list((copy_run / "report").glob("figures/*.png"))
    # the teacher rebuilt from teacher/checkpoint.pt gives the deletion values the CSV holds
    from xkd.metrics import deletion
    from xkd.models import build

    teacher = build("resnet8", num_classes=3, in_channels=3, image_size=16)
    teacher.load_state_dict(torch.load(copy_run / "teacher" / "checkpoint.pt", weights_only=True)["model"])
    inp = np.load(copy_run / "explanations" / "inputs.npz")
    arr = np.load(copy_run / "explanations" / "teacher.npz")
    x = torch.from_numpy(inp["images"][:6].astype(np.float32))
    ref = deletion(teacher.eval(), x, torch.from_numpy(arr["map_gradcam"][:6].astype(np.float32)),
                   torch.from_numpy(arr["target"][:6]), steps=16, baseline="zero").values.numpy()
    with open(copy_run / "metrics" / "deletion__teacher__gradcam.csv") as f:
        f.readline()
        got = np.array([float(line.split(",")[2]) for line in f])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def _csv_values(path: Path) -> np.ndarray:
    with open(path) as f:
        f.readline()
        return np.array([float(line.split(",")[2]) for line in f])


@pytest.mark.parametrize("explainer", ["saliency", "gradcam"])
def test_students_faithfulness_is_scored_for_their_own_top1(run_dir: Path, explainer: str) -> None:
    """Where a student disagrees with its teacher, its deletion score is the deletion of its own
    top-1 on its map for that class (DESIGN 7), recomputed here from the saved checkpoint."""
    from xkd.config import ExplainConfig
    from xkd.explain import build_from_config
    from xkd.metrics.faithfulness import deletion

    from xkd.data import build_data

    data = load_run(run_dir)
    k = 16  # the report's perturbation samples (PERTURBATION_SAMPLES), the whole subset here
    x = torch.from_numpy(data.inputs["images"][:k])  # float16-rounded, as the report reads them
    bundle = build_data(data.cfg.data, data.cfg.seed)  # the exact float32 images the export explained
    x32 = torch.stack([bundle.test[int(i)]["image"] for i in data.inputs["indices"][:k]])
    teacher_top1 = data.arrays["teacher"]["logits"][:k].argmax(1)
    checked = 0
    for name in ("ce", "reviewkd"):
        model = data.model(name)
        with torch.no_grad():
            own = model(x32).argmax(1).numpy()  # the saved student's own top-1, from its checkpoint
        differ = np.flatnonzero(own != teacher_top1)
        checked += len(differ)
        arrs = np.load(run_dir / "explanations" / f"student_{name}.npz")
        assert np.array_equal(arrs["own_target"][:k], own)
        assert np.array_equal(arrs["target"][:k], teacher_top1)  # alignment keeps the teacher's class
        # the stored own-class map is the explainer's map for the student's own top-1 (float16)
        fresh = build_from_config(ExplainConfig(method=explainer), model).explain(x32, torch.from_numpy(own))
        np.testing.assert_allclose(arrs[f"own_map_{explainer}"][:k].astype(np.float32), fresh.numpy(),
                                   atol=1e-3, rtol=1e-3)
        # target=None: the metric's own default, the model's top-1 on the clean image (RISE)
        ref = deletion(model, x, torch.from_numpy(arrs[f"own_map_{explainer}"][:k].astype(np.float32)),
                       None, steps=16, baseline="zero").values.numpy()
        got = _csv_values(run_dir / "metrics" / f"deletion__{name}__{explainer}.csv")
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
        if len(differ):  # the teacher's class gives other numbers on exactly those samples
            old = deletion(model, x, torch.from_numpy(arrs[f"map_{explainer}"][:k].astype(np.float32)),
                           torch.from_numpy(teacher_top1), steps=16, baseline="zero").values.numpy()
            assert not np.allclose(old[differ], got[differ])
            same = np.setdiff1d(np.arange(k), differ)
            np.testing.assert_allclose(old[same], got[same], rtol=1e-5, atol=1e-6)
    assert checked >= 1, "the fixture's students agree with the teacher everywhere; nothing was tested"


def test_report_names_the_class_rule_of_every_metric_table(run_dir: Path) -> None:
    agg = _agg(run_dir)
    assert agg["target_rule"] == "teacher_top1" and agg["faithfulness_target_rule"] == "predicted"
    by_cat = {}
    for r in agg["results"]:
        if r["category"] != "prediction":
            by_cat.setdefault(r["category"], set()).add(r["class_rule"])
    assert by_cat == {"faithfulness": {"predicted"}, "localisation": {"predicted"}, "sanity": {"predicted"},
                      "alignment": {"teacher_top1"}}
    md = (run_dir / "report" / "report.md").read_text()
    html = (run_dir / "report" / "report.html").read_text()
    own = "each model's own top-1 class on the clean image"
    teach = "the teacher's top-1 class on the clean image, for teacher and student alike"
    for title, text in (("## Faithfulness", own), ("## Localisation", own), ("## Sanity check", own),
                        ("## Teacher-student alignment", teach)):
        section = md.split(title)[1].split("\n## ")[0]
        line = next(li for li in section.splitlines() if li.startswith("Class explained and scored:"))
        assert text in line, (title, line)
        assert "`deletion`" in line if title == "## Faithfulness" else True
        assert "`cosine`" in line if title == "## Teacher-student alignment" else True
    import html as H

    assert html.count("Class explained and scored:") == 4 and H.escape(own) in html and H.escape(teach) in html


def test_a_run_exported_before_per_model_classes_still_reports_and_says_so(copy_run: Path) -> None:
    ex = copy_run / "explanations"
    index = io.read_json(ex / "index.json")
    for key in ("faithfulness_target_rule", "explanations_version"):
        index.pop(key)
    io.write_json(ex / "index.json", index)
    for entry in index["models"].values():
        arrs = dict(np.load(ex / entry["file"]))
        io.save_npz(ex / entry["file"], **{k: v for k, v in arrs.items() if not k.startswith("own_")})
    build_report(copy_run, metrics=["deletion", "cosine"], log=lambda *_: None, figures=False)
    agg = _agg(copy_run)
    assert {r["class_rule"] for r in agg["results"]} == {"teacher_top1"}
    arrs = np.load(ex / "student_ce.npz")
    x = torch.from_numpy(np.load(ex / "inputs.npz")["images"][:16].astype(np.float32))
    from xkd.metrics.faithfulness import deletion

    ref = deletion(load_run(copy_run).model("ce"), x, torch.from_numpy(arrs["map_gradcam"][:16].astype(np.float32)),
                   torch.from_numpy(arrs["target"][:16]), steps=16, baseline="zero").values.numpy()
    np.testing.assert_allclose(_csv_values(copy_run / "metrics" / "deletion__ce__gradcam.csv"), ref,
                               rtol=1e-5, atol=1e-6)
    assert "exported before per-model classes" in (copy_run / "report" / "report.md").read_text()


def test_students_are_rebuilt_from_their_best_checkpoint(run_dir: Path) -> None:
    data = load_run(run_dir)
    x = torch.from_numpy(data.inputs["images"])
    for name in ("teacher", "ce", "reviewkd"):
        with torch.no_grad():
            logits = data.model(name)(x).numpy()
        np.testing.assert_allclose(logits, data.arrays[name]["logits"], atol=0.05, rtol=0.02)


def test_dataset_without_masks_lists_localisation_as_skipped(copy_run: Path) -> None:
    ex = copy_run / "explanations"
    inputs = dict(np.load(ex / "inputs.npz"))
    del inputs["masks"]
    io.save_npz(ex / "inputs.npz", **inputs)
    build_report(copy_run, metrics=["pointing_game", "relevance_mass_accuracy", "cosine"],
                 log=lambda *_: None, figures=False)
    agg = _agg(copy_run)
    skipped = {s["metric"]: s["reason"] for s in agg["skipped"]}
    assert set(skipped) == {"pointing_game", "relevance_mass_accuracy"}
    assert all("mask" in reason for reason in skipped.values())
    assert {r["metric"] for r in agg["results"]} == {"cosine"}
    md = (copy_run / "report" / "report.md").read_text().split("## Skipped")[1]
    assert "`pointing_game`" in md and "no ground-truth masks" in md
    assert "## Localisation" not in (copy_run / "report" / "report.md").read_text()


def _newer_config(run: Path) -> str:
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["format_version"] = 99
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    return "config.yaml"


def _corrupt_checkpoint(run: Path) -> str:
    (run / "teacher" / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    return "checkpoint.pt"


def _missing_student_maps(run: Path) -> str:
    (run / "explanations" / "student_ce.npz").unlink()
    return "student_ce.npz"


def _foreign_student_checkpoint(run: Path) -> str:
    io.torch_save(run / "students" / "ce" / "best.pt",
                  {"format_version": 1, "model": {"student.fc.weight": torch.zeros(2, 2)}})
    return "best.pt"


@pytest.mark.parametrize("damage", [_newer_config, _corrupt_checkpoint, _missing_student_maps,
                                    _foreign_student_checkpoint])
def test_bad_run_folder_exits_2_naming_the_file_and_keeps_the_old_report(copy_run: Path, damage, capsys) -> None:
    kept = {p: p.read_bytes() for d in ("report", "metrics") for p in (copy_run / d).rglob("*") if p.is_file()}
    name = damage(copy_run)
    rc = report_main([str(copy_run), "--metrics", "deletion,cosine", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and name in err
    now = {p: p.read_bytes() for d in ("report", "metrics") for p in (copy_run / d).rglob("*") if p.is_file()}
    assert now == kept
    assert not list(copy_run.glob(".report-build-*"))


def _raising_metrics(monkeypatch, metric: str, error: Exception, model_index: int = 0) -> list:
    """Make ``metric`` raise ``error`` on its ``model_index``-th row (0 = the first one computed)."""
    import xkd.report.compute as C
    from xkd.metrics import METRICS

    calls: list = []

    class Proxy:
        def __getattr__(self, name):
            return getattr(METRICS, name)

        def build(self, name, **kw):
            real = METRICS.build(name, **kw)
            if name != metric:
                return real

            class Raising:
                def compute(self, **inputs):
                    calls.append(1)
                    if len(calls) == model_index + 1:
                        raise error
                    return real.compute(**inputs)
            return Raising()

    monkeypatch.setattr(C, "METRICS", Proxy())
    return calls


@pytest.mark.parametrize("error", [RuntimeError("shape '[2, 3]' is invalid for input of size 5"),
                                   UserError("attribution shape (4, 1, 8, 8) does not match input")])
def test_a_metric_that_raises_fails_the_report_naming_metric_and_model(copy_run: Path, monkeypatch,
                                                                         capsys, error) -> None:
    kept = {p: p.read_bytes() for d in ("report", "metrics") for p in (copy_run / d).rglob("*") if p.is_file()}
    _raising_metrics(monkeypatch, "cosine", error)  # first row: student ce, explainer gradcam
    rc = report_main([str(copy_run), "--metrics", "deletion,cosine", "--no-figures", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "metric 'cosine' failed on model 'ce' (explainer gradcam)" in err
    assert str(error) in err and type(error).__name__ in err
    now = {p: p.read_bytes() for d in ("report", "metrics") for p in (copy_run / d).rglob("*") if p.is_file()}
    assert now == kept  # no half report rendered as if complete
    assert not list(copy_run.glob(".report-build-*"))


def test_named_inapplicability_is_listed_with_its_reason(copy_run: Path, monkeypatch) -> None:
    from xkd.errors import NotApplicable

    _raising_metrics(monkeypatch, "cosine", NotApplicable("needs two maps of one size"))
    build_report(copy_run, metrics=["cosine"], log=lambda *_: None, figures=False)
    agg = _agg(copy_run)
    skipped = [s for s in agg["skipped"] if s["metric"] == "cosine"]
    assert len(skipped) == 1 and skipped[0]["model"] == "ce"
    assert skipped[0]["reason"] == "not applicable (gradcam): needs two maps of one size"
    rows = {(r["model"], r["explainer"]) for r in agg["results"]}
    assert ("ce", "gradcam") not in rows and ("ce", "saliency") in rows and ("reviewkd", "gradcam") in rows
    md = (copy_run / "report" / "report.md").read_text().split("## Skipped (not applicable)")[1]
    assert "needs two maps of one size" in md


def test_randomisation_on_a_model_without_parameter_layers_is_not_applicable() -> None:
    from xkd.errors import NotApplicable
    from xkd.metrics import METRICS

    m = METRICS.build("model_randomisation")
    with pytest.raises(NotApplicable, match="no layer with parameters"):
        m.compute(model=torch.nn.Flatten(), x=torch.zeros(2, 1, 4, 4), target=torch.zeros(2, dtype=torch.long),
                  explainer_factory=lambda model: (lambda x, t: torch.ones(x.shape[0], 1, 4, 4)))


def test_a_run_whose_report_crashes_is_marked_failed_naming_metric_and_model(tmp_path: Path, monkeypatch,
                                                                              capsys) -> None:
    exp = experiment()
    exp["students"] = exp["students"][:1]
    exp["evaluate"]["explainers"] = ["saliency"]
    exp["evaluate"]["metrics"] = ["deletion", "cosine"]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    _raising_metrics(monkeypatch, "deletion", RuntimeError("CUDA out of memory (simulated)"), model_index=1)
    out = tmp_path / "run"
    assert run_main([str(path), "--smoke", "--out", str(out)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "metric 'deletion' failed on model 'ce' (explainer saliency)" in err[0]
    status = io.read_json(out / "status.json")
    assert status["state"] == "failed"
    assert "metric 'deletion' failed on model 'ce'" in status["error"] and "simulated" in status["error"]
    assert not (out / "summary.json").exists() and not (out / "report").exists()
    assert (out / "students" / "ce" / "best.pt").is_file()  # the trained models are kept


def test_regression_run_lists_every_metric_as_skipped(tmp_path: Path) -> None:
    from xkd.report.compute import compute_metrics
    from xkd.report.loading import RunData
    from xkd.runfolder import RunFolder

    cfg = ExperimentConfig.model_validate({"students": []})
    data = RunData(RunFolder(tmp_path), cfg, {}, {}, task="regression")
    comp = compute_metrics(data, ["deletion", "cosine", "pointing_game"], log=lambda *_: None)
    assert not comp.rows
    assert [s["metric"] for s in comp.skipped] == ["deletion", "cosine", "pointing_game"]
    assert all("regression" in s["reason"] for s in comp.skipped)


def _seed_run(root: Path, accs: dict[str, list[float]], baseline: str | None = None) -> None:
    exp = experiment() | {"seeds": [0, 1], "report": {"baseline": baseline}}
    cfg = ExperimentConfig.model_validate(exp)
    io.write_yaml(root / "config.yaml", resolved_dict(cfg))
    for i, seed in enumerate((0, 1)):
        rows = [{"model": m, "role": "teacher" if m == "teacher" else "student", "test_acc": v[i],
                 "test_agreement": None if m == "teacher" else 0.5 + 0.1 * i} for m, v in accs.items()]
        io.write_json(root / f"seed-{seed}" / "summary.json",
                      {"seed": seed, "rows": rows, "task": "classification", "test_sets": ["test"]})


def test_seed_report_paired_difference_uses_the_student_t_interval(tmp_path: Path) -> None:
    accs = {"teacher": [0.9, 0.92], "ce": [0.61, 0.70], "reviewkd": [0.64, 0.69]}
    _seed_run(tmp_path, accs)
    out = build_seed_report(tmp_path, log=lambda *_: None)
    assert out.is_file() and (tmp_path / "report" / "report.md").is_file()
    res = io.read_json(tmp_path / "report" / "seeds.json")
    assert res["baseline"] == "reviewkd"  # default: the student named reviewkd
    d = np.array(accs["ce"]) - np.array(accs["reviewkd"])
    half = stats.t.ppf(0.975, df=1) * d.std(ddof=1) / math.sqrt(2)
    got = res["paired"]["ce"]["test_acc"]
    assert got["mean"] == pytest.approx(d.mean(), abs=1e-12)
    assert got["ci_low"] == pytest.approx(d.mean() - half, abs=1e-12)
    assert got["ci_high"] == pytest.approx(d.mean() + half, abs=1e-12)
    assert got["n"] == 2
    ms = res["mean_std"]["teacher"]["test_acc"]
    assert ms["mean"] == pytest.approx(0.91) and ms["std"] == pytest.approx(np.std([0.9, 0.92], ddof=1))
    assert "reviewkd" not in res["paired"] and "teacher" not in res["paired"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Paired difference" in md and "t-interval" in md


def test_seed_report_refuses_an_unknown_baseline(tmp_path: Path) -> None:
    _seed_run(tmp_path, {"teacher": [0.9, 0.9], "ce": [0.5, 0.6], "reviewkd": [0.5, 0.6]}, baseline="nope")
    with pytest.raises(UserError, match="report.baseline"):
        build_seed_report(tmp_path, log=lambda *_: None)


def test_bootstrap_summary_ignores_nan_and_is_seeded() -> None:
    v = [0.1, float("nan"), 0.3, 0.5, 0.7]
    a, b = bootstrap_summary(v, 500, seed=3), bootstrap_summary(v, 500, seed=3)
    assert a == b and a["n"] == 4 and a["n_nan"] == 1 and a["mean"] == pytest.approx(0.4)
    assert a["ci_low"] <= a["mean"] <= a["ci_high"]
    assert math.isnan(bootstrap_summary([float("nan")])["mean"])
