"""The optional Quantus contender of ``python -m xkd.bench`` (issue 17): skipped with one line when
quantus is missing, and the perturbation it is aligned to is the one xkd's deletion runs."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from xkd.bench import main
from xkd.bench_quantus import SKIPPED, _restore_from, fixture
from xkd.metrics import faithfulness as FA
from xkd.metrics._ops import steps_schedule, substrate


def test_quantus_contender_skips_cleanly_without_quantus(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "quantus", None)  # makes `import quantus` raise ImportError
    out = tmp_path / "bench.json"
    assert main(["--only", "quantus", "report_forwards", "--tiny", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["quantus"] == {"skipped": SKIPPED}
    assert res["report_forwards"]["forwards_ratio"] > 0  # the bench went on after the skip
    lines = capsys.readouterr().out.splitlines()
    assert lines.count(SKIPPED) == 1
    assert not [line for line in lines if line.split()[:1] == ["quantus"] and line != SKIPPED]  # no table row


def _pixel_flipping(model, x, a, y, features_in_step, perturb):
    """Quantus' PixelFlipping loop as its docs describe it (numpy): the map broadcast over
    channels, argsort(-a) over all features, ``features_in_step`` features replaced per step,
    softmax of class ``y`` after every step (no clean point)."""
    n = x.shape[0]
    order = np.argsort(-np.broadcast_to(a, x.shape).reshape(n, -1), axis=1)
    cur, preds = x.copy(), []
    for s in range(-(-order.shape[1] // features_in_step)):
        idx = order[:, s * features_in_step:(s + 1) * features_in_step]
        cur = perturb(cur.reshape(n, -1), idx).reshape(x.shape)
        with torch.no_grad():
            p = model(torch.from_numpy(cur)).softmax(1).numpy()
        preds.append(p[np.arange(n), y])
    return np.stack(preds, 1)


def test_deletion_and_insertion_curves_match_quantus_style_pixel_flipping():
    f = fixture(3, 12)
    model, x, sal, target = f["model"], f["x"], f["sal"], f["target"]
    steps = 12
    _, counts = steps_schedule(144, steps)
    fis = 3 * int(counts[1])

    def zero(arr, idx):
        out = arr.copy()
        out[np.arange(arr.shape[0])[:, None], idx] = 0.0
        return out

    xn, an, yn = x.numpy(), sal.numpy(), target.numpy()
    dele = FA.deletion(model, x, sal, target, steps=steps, baseline=0.0)
    ref = _pixel_flipping(model, xn, an, yn, fis, zero)
    np.testing.assert_allclose(dele.curves[:, 1:].numpy(), ref, atol=1e-6)
    ins = FA.insertion(model, x, sal, target, steps=steps, baseline="blur")
    blur = substrate(x, "blur", 11, 5.0).numpy()
    ref = _pixel_flipping(model, blur, an, yn, fis, _restore_from(xn))
    np.testing.assert_allclose(ins.curves[:, 1:].numpy(), ref, atol=1e-6)
    with torch.no_grad():
        clean = model(x).softmax(1)[torch.arange(3), target].double()
    torch.testing.assert_close(ins.curves[:, -1], clean, atol=1e-6, rtol=0)  # ends on the clean image
