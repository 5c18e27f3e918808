"""Read a run folder safely (DESIGN section 5): config, environment, per-model metrics and
history, explanation arrays, and the trained models rebuilt from their checkpoints.

Every file is checked before it is used: YAML with ``yaml.safe_load``, JSON through
:func:`xkd.io.read_json`, checkpoints through :func:`xkd.io.torch_load` (``weights_only=True``),
``.npz`` with ``allow_pickle=False``. A missing, corrupt or foreign file, or one written by a newer
``format_version``, raises one :class:`~xkd.errors.UserError` line naming the file.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from xkd import FORMAT_VERSION, io
from xkd.config import ExperimentConfig, ModelConfig, _error_from_validation
from xkd.errors import UserError
from xkd.runfolder import RunFolder

CONTROL_PREFIX = "control_"
"""Names of the control rows are ``control_random`` and ``control_uniform``."""


@dataclass
class ModelEntry:
    """One trained model of the run."""

    name: str
    role: str  # "teacher" or "student"
    config: ModelConfig
    folder: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    pretrained: bool = False


@dataclass
class RunData:
    """Everything the report reads from one run folder (arrays are float32/int64 numpy)."""

    folder: RunFolder
    cfg: ExperimentConfig
    env: dict[str, Any]
    models: dict[str, ModelEntry]
    index: dict[str, Any] | None = None
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    task: str = "classification"
    _built: dict[str, torch.nn.Module] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.folder.root

    @property
    def n(self) -> int:
        return int(self.inputs["images"].shape[0]) if self.inputs else 0

    @property
    def explainers(self) -> list[str]:
        return list(self.index.get("explainers", [])) if self.index else []

    @property
    def has_masks(self) -> bool:
        return "masks" in self.inputs

    @property
    def teacher(self) -> str | None:
        return "teacher" if "teacher" in self.arrays else None

    @property
    def students(self) -> list[str]:
        return [n for n in self.arrays if n != "teacher"]

    @property
    def alignment_rule(self) -> str:
        """Class of the shared maps ``map_*`` that alignment compares (teacher_top1 or label)."""
        return str((self.index or {}).get("target_rule", "teacher_top1"))

    @property
    def faithfulness_rule(self) -> str:
        """Class each model is explained and scored for by the per-model metrics: ``predicted``
        (its own top-1) or ``label``; a run exported before per-model targets (explanations
        version 1) has only the shared maps, so its rule is the alignment rule."""
        return str((self.index or {}).get("faithfulness_target_rule", self.alignment_rule))

    def own(self, model: str, explainer: str | None = None) -> np.ndarray:
        """The model's own-class map for ``explainer`` (its ``own_target`` when None); the
        shared map / target for a version-1 run."""
        a = self.arrays[model]
        if explainer is None:
            return a.get("own_target", a["target"])
        return a.get(f"own_map_{explainer}", a[f"map_{explainer}"])

    def subset(self, n: int | None) -> None:
        """Keep the first ``n`` eval samples (all when ``n`` is None or larger)."""
        if n is None or not self.inputs:
            return
        if n < 1:
            raise UserError(f"--subset must be >= 1 (got {n})")
        self.inputs = {k: v[:n] for k, v in self.inputs.items()}
        self.arrays = {m: {k: v[:n] for k, v in a.items()} for m, a in self.arrays.items()}

    def model(self, name: str) -> torch.nn.Module:
        """The trained model ``name`` rebuilt from its stored config and checkpoint (cached, eval)."""
        if name not in self._built:
            self._built[name] = _load_model(self, self.models[name])
        return self._built[name]


# ----------------------------------------------------------------------------- files


def read_config(path: Path) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The resolved experiment stored in ``config.yaml`` (format_version checked)."""
    raw = dict(io.read_yaml(path))
    raw.pop("format_version", None)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{path} is not a valid xkd config: {_error_from_validation(e)}") from None
    return cfg, raw


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``history.jsonl`` file (absent -> empty); each line's format_version checked."""
    if not path.is_file():
        return []
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"corrupt file {path}: not UTF-8 text") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"corrupt file {path}: line {i}: {e.msg}") from None
        io.check_version(row, f"{path} line {i}")
        rows.append(row)
    return rows


def read_npz(path: Path, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (float16 -> float32), refusing pickles; ``required`` keys checked."""
    if not path.is_file():
        raise UserError(f"missing file {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"corrupt or foreign file {path}: {str(e).splitlines()[0][:160]}") from None
    miss = [k for k in required if k not in out]
    if miss:
        raise UserError(f"{path} lacks arrays {miss}; it was not written by this xkd version")
    return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in out.items()}


def _task(models: dict[str, ModelEntry]) -> str:
    for m in models.values():
        if any(k.endswith("_mae") for k in m.metrics):
            return "regression"
    return "classification"


def load_run(run_dir: str | Path, need_explanations: bool = True) -> RunData:
    """Read ``run_dir``; explanations are required for classification runs."""
    folder = RunFolder(Path(run_dir))
    if not folder.root.is_dir():
        raise UserError(f"run folder {folder.root} does not exist")
    cfg, _ = read_config(folder.config)
    env = io.read_json(folder.env)
    models: dict[str, ModelEntry] = {}
    if cfg.teacher is not None:
        t = folder.teacher
        models["teacher"] = ModelEntry("teacher", "teacher", cfg.teacher.model, t,
                                       io.read_json(t / "metrics.json"),
                                       read_jsonl(t / "history.jsonl"), cfg.teacher.pretrained)
    for name, tc in (cfg.teachers or {}).items():  # named teachers of a multi-modal run (issue 7)
        t = folder.root / "teachers" / name
        models[name] = ModelEntry(name, "teacher", tc.model, t, io.read_json(t / "metrics.json"),
                                  read_jsonl(t / "history.jsonl"), tc.pretrained)
    for sc in cfg.students:
        if sc.name.startswith(CONTROL_PREFIX):
            raise UserError(f"student name '{sc.name}' clashes with the report's control rows "
                            f"({CONTROL_PREFIX}random, {CONTROL_PREFIX}uniform); rename it")
        d = folder.student(sc.name)
        models[sc.name] = ModelEntry(sc.name, "student", sc.model, d, io.read_json(d / "metrics.json"),
                                     read_jsonl(d / "history.jsonl"))
    data = RunData(folder, cfg, env, models, task=_task(models))
    index_path = folder.explanations / "index.json"
    if data.task != "classification" and not index_path.is_file():
        return data
    if not need_explanations and not index_path.is_file():
        return data
    if not index_path.is_file() and (folder.explanations / "video_index.json").is_file():
        return data  # multi-modal run: per-frame video explanations only (xkd.pipeline.export_video)
    _load_explanations(data, index_path)
    return data


def _load_explanations(data: RunData, index_path: Path) -> None:
    index = io.read_json(index_path)
    ex = data.folder.explanations
    inputs = read_npz(ex / "inputs.npz", ("images", "labels", "indices"))
    n = inputs["images"].shape[0]
    if inputs["images"].ndim != 4:
        raise UserError(f"{ex / 'inputs.npz'}: images must be (N,C,H,W); got {inputs['images'].shape}")
    h, w = inputs["images"].shape[2:]
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for name, entry in (index.get("models") or {}).items():
        if name not in data.models:
            raise UserError(f"{index_path} lists model '{name}' that config.yaml does not define")
        fname = str(entry.get("file", "")) if isinstance(entry, dict) else ""
        if not fname or Path(fname).name != fname:
            raise UserError(f"{index_path}: model '{name}' has a bad file entry {fname!r}")
        path = ex / fname
        maps = tuple(f"map_{e}" for e in index.get("explainers", []))
        own = tuple(f"own_map_{e}" for e in index.get("explainers", [])) + ("own_target",) \
            if "faithfulness_target_rule" in index else ()
        arr = read_npz(path, ("logits", "target") + maps + own)
        for k, v in arr.items():
            if v.shape[0] != n:
                raise UserError(f"{path}: '{k}' has {v.shape[0]} samples, inputs.npz has {n}")
            if k.startswith(("map_", "own_map_")) and tuple(v.shape[1:]) != (1, h, w):
                raise UserError(f"{path}: '{k}' has shape {v.shape}, expected ({n}, 1, {h}, {w})")
        arrays[name] = arr
    if not arrays:
        raise UserError(f"{index_path} lists no models")
    data.index, data.inputs, data.arrays = index, inputs, arrays


# ----------------------------------------------------------------------------- models


def _check_ckpt(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise UserError(f"{path} is not an xkd checkpoint (no 'model' state_dict)")
    v = obj.get("format_version")
    if isinstance(v, int) and v > FORMAT_VERSION:
        raise UserError(f"{path} has format_version {v}, newer than this xkd ({FORMAT_VERSION}); "
                        "upgrade xkd")
    return obj["model"]


def _load_model(data: RunData, m: ModelEntry) -> torch.nn.Module:
    from xkd.models import build

    x = data.inputs["images"]
    num_classes = int(data.arrays[m.name]["logits"].shape[1]) if m.name in data.arrays else 1
    kw = dict(num_classes=num_classes, in_channels=int(x.shape[1]), image_size=int(x.shape[2]))
    path = f"{m.role}.model" if m.role == "teacher" else f"students[{m.name}].model"
    if m.role == "teacher":
        ckpt = m.folder / "checkpoint.pt"
        if m.pretrained and not ckpt.is_file():
            src = m.config.checkpoint
            if not src or not Path(src).is_file():
                raise UserError(f"missing file {ckpt} and the pretrained teacher checkpoint {src}")
            return build(m.config, path=path, **kw).eval()
        state = _check_ckpt(io.torch_load(ckpt), ckpt)
    else:
        ckpt = m.folder / "best.pt"
        if not ckpt.is_file() and (m.folder / "last.pt").is_file():
            ckpt = m.folder / "last.pt"
        full = _check_ckpt(io.torch_load(ckpt), ckpt)
        state = {k[len("student."):]: v for k, v in full.items() if k.startswith("student.")}
        if not state:
            raise UserError(f"{ckpt} holds no 'student.*' weights; it is not a student checkpoint")
    model = build(m.config.model_copy(update={"checkpoint": None}), path=path, **kw)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{ckpt} does not match model '{m.name}' "
                        f"({m.config.name or m.config.factory}): {first[:160]}") from None
    return model.eval()
