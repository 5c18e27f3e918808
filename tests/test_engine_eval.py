"""predict / evaluate_predictions / agreement against hand-worked values; device and environment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.test_engine_helpers import TinyData, TinyNet
from xkd.engine import agreement, environment_info, evaluate_predictions, predict, resolve_device, seed_everything
from xkd.errors import ConfigError, UserError


def test_predict_eval_mode_no_grad_and_restores_mode():
    torch.manual_seed(0)
    net = TinyNet(3).train()
    src = TinyData(10)
    data = [{"image": src.images[i], "label": src.labels[i]} for i in range(10)]  # no augmentation
    logits, labels = predict(net, data, "cpu", batch_size=4)
    assert net.training  # restored
    assert logits.shape == (10, 3) and logits.dtype == torch.float32 and not logits.requires_grad
    assert torch.equal(labels, src.labels)
    # eval mode: deterministic (dropout off, BN running stats) -> equals a manual eval forward
    net.eval()
    with torch.no_grad():
        ref = net(src.images)
    assert torch.allclose(logits, ref, atol=1e-5)


def test_evaluate_predictions_classification_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    m = evaluate_predictions(logits, labels, "classification")
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(1)), math.log(1 + math.exp(-2))]
    assert m["acc"] == pytest.approx(2 / 3)
    assert m["loss"] == pytest.approx(sum(ce) / 3, rel=1e-6)
    assert m["n"] == 3


def test_evaluate_predictions_regression_by_hand():
    m = evaluate_predictions(torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.5, 2.0, 1.0]), "regression")
    assert m["mae"] == pytest.approx((0.5 + 0 + 3) / 3)
    assert m["loss"] == pytest.approx((0.25 + 0 + 9) / 3)


def test_agreement_and_kl_against_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)) * 2
    t[0] = s[0] + 0.1  # at least one agreeing row
    ps = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    pt = np.exp(t) / np.exp(t).sum(1, keepdims=True)
    kl = float(np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1)))
    agree = float(np.mean(s.argmax(1) == t.argmax(1)))
    out = agreement(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    assert out["agreement"] == pytest.approx(agree)
    assert out["kl"] == pytest.approx(kl, rel=1e-5)
    same = agreement(torch.tensor(s), torch.tensor(s))
    assert same["agreement"] == 1.0 and same["kl"] == pytest.approx(0.0, abs=1e-6)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(UserError, match="^device: .*cuda"):
            resolve_device("cuda")


def test_environment_info_and_seeding():
    info = environment_info(5, ["xkd.run", "exp.yaml", "--set", "a=b c"])
    assert info["seed"] == 5 and info["command"] == "xkd.run exp.yaml --set 'a=b c'"
    assert info["torch"] == torch.__version__
    for k in ("python", "torchvision", "captum", "device", "cuda", "hostname", "git_commit"):
        assert k in info
    seed_everything(3)
    a = (torch.rand(3), np.random.rand(3))
    seed_everything(3)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
