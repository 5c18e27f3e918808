"""``base: FILE`` in an experiment file: the file's sections laid on the base's (mappings merge,
lists and scalars replace), relative paths, chains, cycles and missing files as one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xkd.config import load_raw, load_with_overrides
from xkd.config.loading import merge_base
from xkd.errors import ConfigError


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_merge_base_merges_mappings_and_replaces_lists():
    base = {"train": {"epochs": 240, "optimizer": {"lr": 0.05, "momentum": 0.9}},
            "students": [{"name": "a"}], "seed": 0}
    over = {"train": {"optimizer": {"lr": 0.01}}, "students": [{"name": "b"}]}
    out = merge_base(base, over)
    assert out == {"train": {"epochs": 240, "optimizer": {"lr": 0.01, "momentum": 0.9}},
                   "students": [{"name": "b"}], "seed": 0}
    assert base["train"]["optimizer"]["lr"] == 0.05  # inputs untouched


def test_base_is_relative_to_the_including_file_and_chains(tmp_path: Path):
    _write(tmp_path / "shared" / "root.yaml", {"seed": 3, "train": {"epochs": 240, "batch_size": 64}})
    _write(tmp_path / "shared" / "mid.yaml", {"base": "root.yaml", "train": {"epochs": 100}})
    f = _write(tmp_path / "suite" / "pair.yaml", {"base": "../shared/mid.yaml", "name": "pair",
                                                  "train": {"batch_size": 32}})
    assert load_raw(f) == {"seed": 3, "name": "pair", "train": {"epochs": 100, "batch_size": 32}}


def test_set_overrides_apply_after_the_base(tmp_path: Path):
    _write(tmp_path / "b.yaml", {"train": {"epochs": 240, "optimizer": {"lr": 0.05}}})
    f = _write(tmp_path / "f.yaml", {"base": "b.yaml", "train": {"optimizer": {"lr": 0.01}}})
    raw = load_with_overrides(f, ["train.optimizer.lr=0.2"])
    assert raw["train"] == {"epochs": 240, "optimizer": {"lr": 0.2}}


@pytest.mark.parametrize("case", ["self", "cycle", "missing", "not_a_path"])
def test_bad_base_is_one_config_error(tmp_path: Path, case: str):
    if case == "self":
        f = _write(tmp_path / "f.yaml", {"base": "f.yaml"})
        frag = "includes itself"
    elif case == "cycle":
        _write(tmp_path / "g.yaml", {"base": "f.yaml"})
        f = _write(tmp_path / "f.yaml", {"base": "g.yaml"})
        frag = "includes itself"
    elif case == "missing":
        f = _write(tmp_path / "f.yaml", {"base": "nope.yaml"})
        frag = "file not found"
    else:
        f = _write(tmp_path / "f.yaml", {"base": ["a.yaml"]})
        frag = "must be the path"
    with pytest.raises(ConfigError) as e:
        load_raw(f)
    assert str(e.value).startswith("base: ") and frag in str(e.value)
    assert "\n" not in str(e.value)
