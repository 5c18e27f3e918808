"""distributed.timeout_minutes (issue 18): validated in the schema and passed to the process group."""

from __future__ import annotations

from datetime import timedelta

import pytest

from xkd.config import ExperimentConfig
from xkd.engine import distributed as D


def test_timeout_reaches_init_process_group(monkeypatch):
    seen: dict = {}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda **kw: seen.update(kw))
    cfg = ExperimentConfig.model_validate({"distributed": {"timeout_minutes": 2.5}})
    D.init_distributed("cpu", timeout_s=round(cfg.distributed.timeout_minutes * 60))
    assert seen["backend"] == "gloo" and seen["timeout"] == timedelta(seconds=150)


def test_timeout_schema():
    assert ExperimentConfig().distributed.timeout_minutes == 30
    with pytest.raises(Exception, match="timeout_minutes"):
        ExperimentConfig.model_validate({"distributed": {"timeout_minutes": 0}})
    with pytest.raises(Exception, match="timeout"):
        ExperimentConfig.model_validate({"distributed": {"timeout": 5}})
