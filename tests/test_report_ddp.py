"""The report's metric rows split over DDP ranks (issue 18: no long rank-0-only stage): a run
under ``torchrun --nproc_per_node 2`` writes the same metric values as a one-process rebuild of
its report from the same run folder."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from tests.conftest import SHRUNK_SHAPES
from tests.test_ddp_methods import _torchrun

METRICS = "evaluate.metrics=[deletion,cosine,pointing_game]"


def _values(folder: Path) -> dict[str, list[list[str]]]:
    out = {}
    for p in sorted((folder / "metrics").glob("*.csv")):
        with p.open() as f:
            out[p.name] = list(csv.reader(f))
    return out


def test_report_rows_computed_on_two_ranks_equal_one_process(tmp_path: Path) -> None:
    from xkd.report import build_report

    overrides = [o for o in SHRUNK_SHAPES if o != "report.enabled=false"] + [
        "report.enabled=true", METRICS, "report.figures=false",
        "report.baseline=ce", "students=[{name: ce, method: ce, model: {name: resnet8}}, "
        "{name: kd, method: kd, model: {name: resnet8}}]"]
    out = tmp_path / "run"
    proc = _torchrun("hkd.yaml", out, overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "seed-0"
    ddp = _values(run)
    assert any(name.startswith("deletion__kd") for name in ddp) and any("cosine" in n for n in ddp)
    shares = json.loads((run / "metrics" / "aggregates.json").read_text())["rows_by_rank"]
    assert len(shares) == 2 and min(shares) > 0 and abs(shares[0] - shares[1]) <= 1
    again = tmp_path / "again"
    shutil.copytree(run, again)
    build_report(again, log=lambda *_: None)
    assert _values(again) == ddp
    assert json.loads((again / "metrics" / "aggregates.json").read_text())["rows_by_rank"] == [sum(shares)]
