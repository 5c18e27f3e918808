"""``--help`` of the CLIs starts without the heavy stack (issue 17): torch, captum, matplotlib and
torchvision are not imported, measured with ``python -X importtime`` in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "captum", "matplotlib", "torchvision", "pydantic", "numpy")


def imported(*args: str) -> tuple[set[str], str]:
    """Top-level packages a fresh ``python -X importtime ARGS`` imported, and its stdout."""
    p = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    mods = set()
    for line in p.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            mods.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return mods, p.stdout


@pytest.mark.parametrize("args", [("-m", "xkd.run", "--help"), ("-m", "xkd", "--help")])
def test_help_does_not_import_the_heavy_stack(args):
    mods, out = imported(*args)
    assert "usage: python -m xkd" in out
    assert "xkd" in mods  # the measurement sees our own imports ...
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))  # ... and none of the heavy ones


def test_import_xkd_stays_light_until_the_api_is_used():
    code = ("import sys, xkd; light = 'torch' not in sys.modules; xkd.losses; "
            "print(light, 'torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["True", "True"], p.stderr[-2000:]
