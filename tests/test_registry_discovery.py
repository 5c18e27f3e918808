"""Families register themselves: importing a family imports every public member module, so adding
a method, model, explainer or metric is one new file (issue 12)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from xkd.registry import import_members


def test_import_members_imports_every_public_module(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "fam"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("SEEN = []\n")
    for name in ("alpha", "beta", "_private"):
        (pkg / f"{name}.py").write_text(f"import fam\nfam.SEEN.append('{name}')\n")
    (pkg / "sub" / "__init__.py").write_text("import fam\nfam.SEEN.append('sub')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import_members("fam")
        assert sorted(importlib.import_module("fam").SEEN) == ["alpha", "beta", "sub"]
    finally:
        for m in [m for m in sys.modules if m == "fam" or m.startswith("fam.")]:
            del sys.modules[m]


@pytest.mark.parametrize("family", ["distill", "models", "explain", "metrics"])
def test_every_member_file_of_a_family_is_loaded(family: str) -> None:
    importlib.import_module(f"xkd.{family}")
    root = Path(__file__).resolve().parents[1] / "xkd" / family
    names = [p.stem for p in root.glob("*.py") if not p.stem.startswith("_")]
    names += [p.parent.name for p in root.glob("*/__init__.py")]
    missing = [n for n in names if f"xkd.{family}.{n}" not in sys.modules]
    assert not missing
