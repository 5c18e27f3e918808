"""The public API for a user's own training loop (issue 12): the README block runs as written,
``Distiller.to()`` moves the teacher, an unwrapped model is one line, and the method's own
optimiser settings reach the optimisers built by ``configure_optimizers`` (the engine's path)."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import xkd
from tests.tiny_models import TwoStage
from xkd.errors import UserError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Use it in your own training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_block_runs_and_trains_only_the_student() -> None:
    code = readme_block()
    assert len(code.strip().splitlines()) <= 22
    ns: dict = {}
    out = io.StringIO()
    torch.manual_seed(0)
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), ns)
    lines = out.getvalue().strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["0", "1", "2"]
    for ln in lines:  # every printed loss is finite, and the review term is active (mix 0.8)
        values = [float(v) for v in re.findall(r": (-?[\d.e+-]+)", ln)]
        assert values and all(math.isfinite(v) for v in values)
        assert "'review'" in ln
    teacher, student, distiller = ns["teacher"], ns["student"], ns["distiller"]
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not teacher.training and distiller.student.training
    # the same seed rebuilds the initial weights: the teacher is unchanged, the student trained
    torch.manual_seed(0)
    t0, s0 = torchvision.models.resnet18(num_classes=10), torchvision.models.mobilenet_v2(num_classes=10)
    assert all(torch.equal(a, b) for a, b in zip(t0.state_dict().values(), teacher.net.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(s0.parameters(), student.net.parameters()))


def tiny_distiller(method: str = "kd", **params) -> xkd.Distiller:
    torch.manual_seed(0)
    ctx = xkd.DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5, epochs=2)
    return xkd.build_distiller(method, TwoStage(), TwoStage(), params, ctx)


def test_to_moves_the_teacher_too() -> None:
    d = tiny_distiller()
    d.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in d.teacher.parameters())
    assert all(p.dtype == torch.float64 for p in d.student.parameters())
    # the teacher stays outside the module tree: not in the state dict, not optimised
    assert not any(k.startswith("teacher") for k in d.state_dict())


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_unwrapped_model_is_one_line(role: str) -> None:
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    ctx = xkd.DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5)
    models = {"student": TwoStage(), "teacher": TwoStage(), role: plain}
    with pytest.raises(UserError) as e:
        xkd.build_distiller("reviewkd", models["student"], models["teacher"], {}, ctx)
    msg = str(e.value)
    assert "\n" not in msg and f"the {role} (Sequential)" in msg and "xkd.wrap" in msg
    # logits-only methods take any classifier
    d = xkd.build_distiller("kd", models["student"], models["teacher"], {}, ctx)
    assert d(batch_of(4), 0).losses["kd"].isfinite()


def batch_of(n: int) -> dict:
    return {"image": torch.randn(n, 3, 16, 16), "label": torch.randint(0, 5, (n,))}


def test_configure_optimizers_keeps_ffsd_settings() -> None:
    d = tiny_distiller("ffsd", sd_optimizer="adam", sd_lr=1e-3, fusion_weight_decay=0.0)
    opts = d.configure_optimizers(name="sgd", lr=0.1, weight_decay=5e-4)
    assert type(opts.main) is torch.optim.SGD and len(opts.extras) == 1
    sd = opts.extras[0]
    assert sd.name == "sd" and type(sd.optimizer) is torch.optim.Adam
    assert sd.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    fusion = {id(p) for p in d.fusion.parameters()}
    groups = [g for g in opts.main.param_groups if {id(p) for p in g["params"]} == fusion]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    sd_params = {id(p) for p in sd.optimizer.param_groups[0]["params"]}
    main_params = {id(p) for g in opts.main.param_groups for p in g["params"]}
    assert not sd_params & main_params


def test_engine_builds_optimizers_through_the_method(tmp_path: Path, monkeypatch) -> None:
    from tests.test_engine_helpers import TinyData, make, train_cfg
    from xkd.engine import fit

    d = make(seed=0)
    calls = []
    real = type(d).configure_optimizers

    def spy(self, *a, **kw):
        calls.append((a, kw))
        return real(self, *a, **kw)

    monkeypatch.setattr(type(d), "configure_optimizers", spy)
    fit(d, TinyData(16), None, train_cfg(epochs=1), tmp_path, device=torch.device("cpu"), seed=0, log=lambda *_: None)
    assert len(calls) == 1 and calls[0][0][0].lr == train_cfg(epochs=1).optimizer.lr
