"""Multi-modal plumbing (issue 7; docs/CONTRACTS.md "Multi-modal plumbing"): named teachers, model
modalities (the batch key a model reads) and their checks.

A dataset declares ``DataBundle.modalities`` (input key -> per-sample shape; empty means
image-only). Every teacher and student names its ``modality``; named teachers live in the
``teachers`` section (``RUN/teachers/<name>/``), and single-teacher methods (``kd``) pick one
with ``students[i].teacher``. Mistakes become one :class:`~xkd.errors.ConfigError` line.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.utils.data import Subset

from xkd.errors import ConfigError

if TYPE_CHECKING:
    from xkd.config import ExperimentConfig, StudentConfig
    from xkd.data import DataBundle
    from xkd.distill.ccl import TeacherRef
    from xkd.models import FeatureModel

NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def is_multimodal(cfg: "ExperimentConfig") -> bool:
    """True when the experiment uses named teachers or any model reads a key other than image."""
    mods = [s.modality for s in cfg.students] + [t.modality for t in (cfg.teachers or {}).values()]
    if cfg.teacher is not None:
        mods.append(cfg.teacher.modality)
    return bool(cfg.teachers) or any(m != "image" for m in mods)


def dataset_modalities(bundle: "DataBundle") -> dict[str, tuple[int, ...]]:
    """Input keys of a dataset and their per-sample shapes (image-only datasets: ``image``)."""
    mods = dict(getattr(bundle, "modalities", None) or {})
    if not mods:
        mods = {"image": (bundle.in_channels, bundle.image_size, bundle.image_size)}
    return mods


def model_geometry(bundle: "DataBundle", modality: str) -> tuple[int, int]:
    """``(in_channels, image_size)`` for a model reading ``modality``: the first and last entries
    of its per-sample shape (C,H,W images and spectrograms, C,T,H,W clips)."""
    shape = dataset_modalities(bundle).get(modality)
    if shape is None:
        return bundle.in_channels, bundle.image_size
    return int(shape[0]), int(shape[-1])


def check_teachers(cfg: "ExperimentConfig", check_model: Callable[[Any, str], None]) -> None:
    """Names, exclusivity and references of named teachers (no data needed)."""
    from xkd.distill import METHODS

    if cfg.teachers is not None:
        if cfg.teacher is not None:
            raise ConfigError("teachers", "set either 'teacher' (one unnamed teacher) or 'teachers' "
                              "(named teachers), not both")
        if not cfg.teachers:
            raise ConfigError("teachers", "is empty; name at least one teacher or drop the section")
        students = {s.name for s in cfg.students}
        for name, tc in cfg.teachers.items():
            where = f"teachers.{name}"
            if not NAME.fullmatch(name) or name == "teacher" or name.startswith("control_"):
                raise ConfigError(where, f"bad teacher name '{name}'; use letters, digits, _ . - "
                                  "(not 'teacher' or control_*)")
            if name in students:
                raise ConfigError(where, f"'{name}' is also a student name; names must be unique")
            check_model(tc.model, f"{where}.model")
            if tc.pretrained and tc.model.checkpoint is None:
                raise ConfigError(f"{where}.pretrained", f"true needs {where}.model.checkpoint to be set")
    for i, s in enumerate(cfg.students):
        where = f"students[{i}].teacher"
        if s.teacher is not None:
            if not cfg.teachers:
                raise ConfigError(where, f"'{s.teacher}' names a teacher, but there is no 'teachers' "
                                  "section (the single 'teacher' section needs no name)")
            if s.teacher not in cfg.teachers:
                raise ConfigError(where, f"'{s.teacher}' is not a named teacher; allowed: "
                                  f"{', '.join(cfg.teachers)}")
            continue
        entry = METHODS.entry(s.method, path=f"students[{i}].method")
        if cfg.teachers and entry.meta.get("needs_teacher", True) and len(cfg.teachers) > 1:
            raise ConfigError(where, f"method '{s.method}' learns from one teacher; name it "
                              f"(allowed: {', '.join(cfg.teachers)})")


def check_modalities(cfg: "ExperimentConfig", bundle: "DataBundle") -> None:
    """Every model's modality is an input of the dataset; audio users need some audio."""
    mods = dataset_modalities(bundle)
    users: list[tuple[str, str]] = [(f"students[{i}].modality", s.modality) for i, s in enumerate(cfg.students)]
    if cfg.teacher is not None:
        users.append(("teacher.modality", cfg.teacher.modality))
    users += [(f"teachers.{n}.modality", t.modality) for n, t in (cfg.teachers or {}).items()]
    for path, modality in users:
        if modality not in mods:
            raise ConfigError(path, f"'{modality}' is not an input of dataset '{bundle.name}'; "
                              f"allowed: {', '.join(mods)}")
    from xkd.distill.ccl import CCLParams

    default = CCLParams.model_fields["variant"].default
    audio = [path for path, m in users if m == "audio"]
    audio += [f"students[{i}].params.variant" for i, s in enumerate(cfg.students)
              if s.method == "ccl" and "A" in str(s.params.get("variant", default))]
    if audio and "audio_mask" in _first_sample(bundle) and not has_audio(bundle):
        raise ConfigError(audio[0], "uses audio, but every training sample of dataset "
                          f"'{bundle.name}' is missing its audio (audio_mask is 0 everywhere); "
                          "lower data.params.missing_audio below 1")


def _first_sample(bundle: "DataBundle") -> dict[str, Any]:
    return bundle.train[0] if len(bundle.train) else {}  # type: ignore[arg-type]


def has_audio(bundle: "DataBundle") -> bool:
    """Whether any training sample has audio (``audio_mask`` > 0): from the split's in-memory
    ``data["audio_mask"]`` tensor when it has one (av_shapes), else from the samples themselves."""
    ds: Any = bundle.train
    idx: Any = slice(None)
    if isinstance(ds, Subset):
        ds, idx = ds.dataset, list(ds.indices)
    data = getattr(ds, "data", None)
    mask = data.get("audio_mask") if isinstance(data, dict) else None
    if torch.is_tensor(mask):
        return bool(mask[idx].gt(0).any())
    return any(float(bundle.train[i]["audio_mask"]) > 0 for i in range(len(bundle.train)))  # type: ignore[arg-type]


def teacher_of(cfg: "ExperimentConfig", sc: "StudentConfig") -> str | None:
    """The named teacher a single-teacher student learns from (None: no named teacher)."""
    from xkd.distill import METHODS

    if not cfg.teachers or not METHODS.entry(sc.method).meta.get("needs_teacher", True):
        return None
    return sc.teacher or next(iter(cfg.teachers))


def input_extras(cfg: "ExperimentConfig", sc: "StudentConfig", bundle: "DataBundle",
                 teacher: "FeatureModel | None", named: dict[str, "TeacherRef"]
                 ) -> tuple["FeatureModel | None", dict[str, Any]]:
    """The teacher a student's distiller gets and its DistillContext extras: ``student_key``,
    ``teacher_key``, ``teachers`` (named, for ccl) and ``inputs`` (one example (1,...) per
    dataset modality, for dry runs)."""
    first = bundle.train[0]
    extras: dict[str, Any] = {"student_key": sc.modality, "teachers": named,
                              "inputs": {k: first[k].unsqueeze(0) for k in dataset_modalities(bundle)
                                         if k in first}}
    tname = teacher_of(cfg, sc)
    if tname is not None:
        teacher = named[tname].model
        extras["teacher_key"] = named[tname].modality
    elif cfg.teacher is not None:
        extras["teacher_key"] = cfg.teacher.modality
    return teacher, extras
