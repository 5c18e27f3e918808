"""Literature suites: ``experiments/<suite>/suite.yaml`` names the experiment files a suite runs, in
order, and the top-1 (%) each paper reports for the students of a file. Any folder with a
``suite.yaml`` is a suite (``python -m xkd.reproduce path/to/folder``); the shipped ones are found
under the repository's ``experiments/``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from xkd.config import Strict, _error_from_validation
from xkd.config.loading import load_raw
from xkd.errors import UserError

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
"""The repository's experiment folder (xkd is installed from the source tree with ``pip install -e``)."""


class PaperNumber(Strict):
    top1: float = Field(..., ge=0, le=100, description="top-1 accuracy (%) on the test set")
    source: str = Field(..., description="paper (and table) the number is from")
    verified: bool = Field(True, description="false: recalled in xkd's notes, not checked against the paper")


class SuiteRun(Strict):
    file: str = Field(..., description="experiment file, relative to the suite folder")
    pair: str = Field(..., description="teacher -> student, as the paper's table names it")
    paper: dict[str, PaperNumber] = Field(default_factory=dict, description="model name (teacher or "
                                          "a student of the file) -> the paper's number")


class DryRunSpec(Strict):
    data: Literal["cifar100", "imagefolder"] = Field(..., description="kind of fake data to write")
    overrides: list[str] = Field(default_factory=list, description="--set values of the dry run (tiny sizes)")


class Suite(Strict):
    name: str
    title: str
    dry_run: DryRunSpec
    runs: list[SuiteRun]

    folder: Path = Field(Path("."), exclude=True)

    def path(self, run: SuiteRun) -> Path:
        """The experiment file of ``run``."""
        return self.folder / run.file


def available() -> dict[str, Path]:
    """Shipped suites: name -> folder (every ``experiments/*/suite.yaml``)."""
    return {p.parent.name: p.parent for p in sorted(EXPERIMENTS.glob("*/suite.yaml"))}


def load_suite(name_or_path: str) -> Suite:
    """A shipped suite by name (``cifar100``) or any folder holding a ``suite.yaml``."""
    shipped = available()
    folder = shipped.get(name_or_path, Path(name_or_path))
    spec = folder / "suite.yaml"
    if not spec.is_file():
        raise UserError(f"unknown suite '{name_or_path}'; shipped suites: {', '.join(shipped) or 'none'} "
                        "(or give a folder holding a suite.yaml)")
    try:
        raw = yaml.safe_load(spec.read_text(encoding="utf-8")) or {}
        suite = Suite.model_validate(raw)
    except yaml.YAMLError as e:
        raise UserError(f"{spec}: not valid YAML: {getattr(e, 'problem', e)}") from None
    except ValidationError as e:
        raise UserError(f"{spec}: {_error_from_validation(e)}") from None
    suite.folder = folder
    for run in suite.runs:
        if not suite.path(run).is_file():
            raise UserError(f"{spec}: runs: file not found: {suite.path(run)}")
        unknown = sorted(set(run.paper) - set(models_of(suite.path(run))))
        if unknown:
            raise UserError(f"{spec}: runs[{run.file}].paper: {', '.join(unknown)} is not the teacher "
                            f"or a student of {run.file}")
    return suite


def models_of(path: Path) -> list[str]:
    """``teacher`` (when the file has one) and the student names of an experiment file, in order."""
    return list(methods_of(path))


def methods_of(path: Path) -> dict[str, str]:
    """Model name -> method (``pretrained`` or ``trained`` for the teacher) of an experiment file."""
    raw = load_raw(path)
    out: dict[str, str] = {}
    if raw.get("teacher"):
        out["teacher"] = "pretrained" if raw["teacher"].get("pretrained") else "trained"
    for s in raw.get("students") or []:
        out[str(s.get("name"))] = str(s.get("method"))
    return out


def list_rows(suites: list[Suite]) -> list[dict[str, object]]:
    """One row per model of every run: suite, pair, file, model (method), the paper's number."""
    rows: list[dict[str, object]] = []
    for suite in suites:
        for run in suite.runs:
            for model, method in methods_of(suite.path(run)).items():
                p = run.paper.get(model)
                rows.append({"suite": suite.name, "pair": run.pair, "file": run.file, "model": model,
                             "method": method,
                             "paper_top1": None if p is None else p.top1,
                             "source": "" if p is None else p.source,
                             "verified": True if p is None else p.verified})
    return rows
