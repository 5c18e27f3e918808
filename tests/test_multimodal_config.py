"""Multi-modal config and preflight (issue 7): every bad input is one line naming the field, exit
code 2 and no run folder; the schema fields and their defaults."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import yaml

from xkd.config import ExperimentConfig
from xkd.pipeline.checks import validate
from xkd.data import build_data
from xkd.errors import ConfigError
from xkd.pipeline.multimodal import check_modalities, has_audio, model_geometry
from xkd.run import main

DATA = {"name": "av_shapes", "params": {"n_train": 8, "n_val": 4, "n_test": 4, "num_classes": 3,
                                        "frames": 2, "image_size": 16, "n_mels": 16}}
VIDEO = {"name": "r2plus1d_tiny", "params": {"widths": [8, 8, 16]}}
BASE = {
    "name": "mm", "device": "cpu", "data": DATA,
    "teachers": {"img": {"modality": "image", "model": {"name": "resnet8"}},
                 "aud": {"modality": "audio", "model": {"name": "resnet8"}}},
    "students": [{"name": "ce", "method": "ce", "modality": "video", "model": VIDEO},
                 {"name": "kd_a", "method": "kd", "modality": "video", "teacher": "aud", "model": VIDEO},
                 {"name": "ccl", "method": "ccl", "modality": "video", "model": VIDEO,
                  "params": {"variant": "AI"}}],
    "train": {"epochs": 1, "batch_size": 4},
}


def _run(tmp_path: Path, exp: dict, capsys) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / "run"
    assert main([str(path), "--out", str(out)]) == 2
    assert not out.exists()  # preflight: nothing written
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def _with(**changes) -> dict:
    exp = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = exp
        *head, last = path.split("__")
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(last) if isinstance(node, list) else last] = value
    return exp


CASES = [
    (_with(students__0__modality="depth"),
     r"students\[0\]\.modality: 'depth' is not an input of dataset 'av_shapes'; allowed: video, image, audio"),
    (_with(teachers__aud__modality="sound"),
     r"teachers\.aud\.modality: 'sound' is not an input of dataset 'av_shapes'"),
    (_with(students__1__teacher="nobody"), r"students\[1\]\.teacher: 'nobody' is not a named teacher; allowed: aud, img"),
    (_with(students__1__teacher=None), r"students\[1\]\.teacher: method 'kd' learns from one teacher; name it"),
    (_with(teachers__aud__model={"name": "resnet8x4"}),
     r"teachers\.aud\.model: pooled embedding width 256 differs from the students\[2\] student's 16"),
    (_with(data__params__missing_audio=1.0), r"data\.params\.missing_audio: every clip would lack audio"),
    (_with(teacher={"model": {"name": "resnet8"}}), r"teachers: set either 'teacher' .* or 'teachers'"),
    (_with(students__0__model={"name": "resnet8"}),
     r"students\[0\]\.model: 'resnet8' cannot read the 'video' input of shape \(3, 2, 16, 16\)"),
    (_with(students__0__method="reviewkd", students__0__teacher="img"),
     r"students\[0\]\.modality: method 'reviewkd' reads image input only, got student modality 'video'"),
    (_with(students__2__params={"variant": "AV"}), r"students\[2\]\.params\.variant"),
]


@pytest.mark.parametrize("exp,pattern", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bad_input_is_one_line_exit_2_no_folder(tmp_path: Path, capsys, exp: dict, pattern: str):
    line = _run(tmp_path, exp, capsys)
    assert re.search(pattern, line), line


def test_image_only_dataset_refuses_video_student(tmp_path: Path, capsys):
    exp = {"name": "x", "device": "cpu",
           "data": {"name": "shapes", "params": {"num_classes": 3, "image_size": 16, "train_size": 8,
                                                 "val_size": 4, "test_size": 4}},
           "students": [{"name": "v", "method": "ce", "modality": "video", "model": VIDEO}]}
    line = _run(tmp_path, exp, capsys)
    assert "students[0].modality: 'video' is not an input of dataset 'shapes'; allowed: image" in line


def test_schema_defaults_and_geometry():
    cfg = validate(copy.deepcopy(BASE))
    assert cfg.teachers["aud"].modality == "audio" and cfg.students[1].teacher == "aud"
    plain = ExperimentConfig.model_validate({"students": [{"name": "s", "method": "ce", "model": {"name": "resnet8"}}]})
    assert plain.teachers is None and plain.students[0].modality == "image" and plain.students[0].teacher is None
    with pytest.raises(ConfigError, match=r"students\[0\]\.teacher: 'img' names a teacher, but there is no 'teachers'"):
        validate({"teacher": {"model": {"name": "resnet8"}},
                  "students": [{"name": "s", "method": "kd", "teacher": "img", "model": {"name": "resnet8"}}]})
    b = build_data(cfg.data, 0)
    assert model_geometry(b, "video") == (3, 16) and model_geometry(b, "audio") == (1, 16)


def test_every_clip_without_audio_is_refused_when_audio_is_used():
    cfg = validate(copy.deepcopy(BASE))
    b = build_data(cfg.data, 0)
    assert has_audio(b)
    b.train.data["audio_mask"] = torch.zeros_like(b.train.data["audio_mask"])
    assert not has_audio(b)
    with pytest.raises(ConfigError, match=r"teachers\.aud\.modality: uses audio, but every training sample"):
        check_modalities(cfg, b)
    only_image = copy.deepcopy(BASE)
    del only_image["teachers"]["aud"]
    only_image["students"] = [only_image["students"][0],
                              {**only_image["students"][2], "params": {"variant": "I"}}]
    check_modalities(validate(only_image), b)  # nobody reads audio: fine
