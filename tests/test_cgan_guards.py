"""cGAN-KD guards (issue 13, item 13): a base method with per-sample state is refused at config time
(``--check``, exit 2, one line, no run folder), and the teacher filter's quantile follows the
reference per task when the file leaves it out."""

from __future__ import annotations

from pathlib import Path

import pytest

from xkd.gan.config import REFERENCE_QUANTILE, FilterConfig
from xkd.run import main
from tests.test_cgan_flow import CE, CLS, _cg, _exp


@pytest.mark.parametrize("base, params", [("introspective", {"refresh_every": 2}), ("hkd", {"k": 2})])
def test_base_with_per_sample_state_is_refused_at_config_time(tmp_path: Path, capsys, base, params):
    path = _exp(tmp_path, CLS, [CE, _cg(base=base, base_params=params)])
    assert main([str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: students[1].params.base") and "per-sample state" in err
    assert "\n" not in err and not (tmp_path / "runs").exists()


def test_introspective_without_target_cache_is_accepted(tmp_path: Path, capsys):
    path = _exp(tmp_path, CLS, [CE, _cg(base="introspective", base_params={"refresh_every": 1})])
    assert main([str(path), "--check"]) == 0, capsys.readouterr().err


def test_filter_quantile_default_is_the_reference_rho_per_task():
    # seed_methods.md 5.4: rho = 0.9 per class (classification), rho = 0.7 over all fakes (regression)
    assert FilterConfig().quantile is None
    assert FilterConfig().resolved("classification").quantile == 0.9
    assert FilterConfig().resolved("regression").quantile == 0.7
    assert FilterConfig(quantile=0.5).resolved("regression").quantile == 0.5  # explicit wins
    assert REFERENCE_QUANTILE == {"classification": 0.9, "regression": 0.7}


def test_flow_filters_regression_fakes_at_rho_07(tmp_path: Path, monkeypatch):
    """The pipeline hands the resolved quantile to the filter: 0.7 for a regression run."""
    import xkd.pipeline.generated_process as GP

    seen: list[float] = []
    real = GP.filter_regression

    def spy(pred, labels, quantile, *a, **kw):
        seen.append(quantile)
        return real(pred, labels, quantile, *a, **kw)

    monkeypatch.setattr(GP, "filter_regression", spy)
    data = {"name": "shapes_angle", "params": {"image_size": 16, "train_size": 48, "val_size": 16,
                                                "test_size": 16}}
    path = _exp(tmp_path, data, [CE, _cg(subsample=False)])
    assert main([str(path), "--out", str(tmp_path / "run"), "--set", "report.enabled=false"]) == 0
    assert seen == [0.7]
