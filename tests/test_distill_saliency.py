"""Saliency weight pyramid: sources, shuffle control, gating, per-stage Grad-CAM, pipeline hooks."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradCam

from tests.test_distill_toy import TinyNet
from xkd.distill import DistillContext, build_distiller
from xkd.losses import hcl
from xkd.distill.reviewkd.weights import SaliencyWeighting, derangement, level_weights
from xkd.errors import UserError


def _one_hot_maps(b: int, size: int = 8) -> torch.Tensor:
    """Sample i has all its mass at pixel (i, i): every map is distinct."""
    m = torch.zeros(b, 1, size, size)
    for i in range(b):
        m[i, 0, i, i] = 1.0
    return m


def _weighting(**kw) -> SaliencyWeighting:
    args = dict(mix=1.0, shuffle=False, gate_wrong=False, gate_diffuse=None, levels="input",
                target_rule="teacher_top1", task="classification")
    args.update(kw)
    return SaliencyWeighting(**args)


def test_derangement_has_no_fixed_point():
    torch.manual_seed(0)
    for n in (2, 3, 7):
        perm = derangement(n)
        assert sorted(perm.tolist()) == list(range(n))
        assert all(perm[i] != i for i in range(n))


def test_shuffle_permutes_maps_across_the_batch():
    torch.manual_seed(1)
    m = _one_hot_maps(5)
    batch = {"image": torch.zeros(5, 3, 8, 8), "label": torch.zeros(5, dtype=torch.long),
             "saliency": m}
    logits = torch.zeros(5, 3)
    (w_plain,), _ = _weighting().weights(batch, logits, [(8, 8)])
    (w_shuf,), _ = _weighting(shuffle=True).weights(batch, logits, [(8, 8)])
    sources = []
    for i in range(5):
        match = [j for j in range(5) if torch.equal(w_shuf[i], w_plain[j])]
        assert len(match) == 1
        sources.append(match[0])
    assert sorted(sources) == list(range(5)) and all(s != i for i, s in enumerate(sources))


def test_gate_wrong_makes_wrong_teacher_samples_uniform():
    m = _one_hot_maps(3)
    batch = {"image": torch.zeros(3, 3, 8, 8), "label": torch.tensor([0, 1, 2]), "saliency": m}
    logits = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 0, 5.0]])  # sample 1 is wrong
    (w,), diag = _weighting(gate_wrong=True, mix=0.6).weights(batch, logits, [(4, 4)])
    assert torch.equal(w[1], torch.ones(1, 4, 4))
    assert not torch.allclose(w[0], torch.ones(1, 4, 4)) and not torch.allclose(w[2], torch.ones(1, 4, 4))
    assert diag["sal_uniform_frac"].item() == pytest.approx(1 / 3)


def test_gate_diffuse_makes_high_entropy_maps_uniform():
    m = torch.ones(2, 1, 8, 8) + 0.01 * torch.rand(2, 1, 8, 8)
    m[1] = 0.0
    m[1, 0, :2, :2] = 1.0  # entropy log 4 / log 64 = 1/3
    batch = {"image": torch.zeros(2, 3, 8, 8), "label": torch.zeros(2, dtype=torch.long), "saliency": m}
    (w,), _ = _weighting(gate_diffuse=0.9).weights(batch, torch.zeros(2, 3), [(8, 8)])
    assert torch.equal(w[0], torch.ones(1, 8, 8))
    assert w[1].max().item() == pytest.approx(16.0)


def test_online_explainer_used_when_batch_has_no_saliency():
    calls = []

    class FakeExplainer:
        def explain(self, x, target):
            calls.append(target.clone())
            return _one_hot_maps(x.shape[0])

    sw = _weighting()
    batch = {"image": torch.zeros(2, 3, 8, 8), "label": torch.tensor([2, 0])}
    with pytest.raises(UserError, match="saliency"):
        sw.weights(batch, torch.zeros(2, 3), [(8, 8)])
    sw.set_explainer(FakeExplainer(), "label")
    (w,), _ = sw.weights(batch, torch.tensor([[0.0, 1, 0], [0, 1, 0]]), [(8, 8)])
    assert calls[0].tolist() == [2, 0]
    assert torch.equal(w, level_weights(_one_hot_maps(2), (8, 8), 1.0))
    with pytest.raises(UserError, match="target rule"):
        sw.set_explainer(FakeExplainer(), "nope")


def _pair():
    torch.manual_seed(0)
    return TinyNet((8, 16, 32)), TinyNet((4, 8, 12))


def _batch(b=4, size=16):
    g = torch.Generator().manual_seed(5)
    return {"image": torch.randn(b, 3, size, size, generator=g),
            "label": torch.randint(0, 5, (b,), generator=g),
            "saliency": torch.rand(b, 1, size, size, generator=g) ** 3}


def test_reviewkd_constant_saliency_equals_plain_and_hooks():
    teacher, student = _pair()
    ctx = DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5)
    plain = build_distiller("reviewkd", student, teacher, {}, ctx)
    weighted = build_distiller("reviewkd", student, teacher, {"saliency_mix": 0.7}, ctx)
    weighted.abfs.load_state_dict(plain.abfs.state_dict())
    assert not plain.needs_saliency and plain.saliency_spec() is None
    assert weighted.needs_saliency
    finest = max(weighted.level_sizes, key=lambda s: s[0] * s[1])
    assert finest == weighted.level_sizes[0]  # shallow -> deep: the first level is the finest
    assert weighted.saliency_spec() == {"method": None, "target": None, "params": None,
                                        "cache": None, "max_batch": None, "read_size": finest}
    for entropy in ({"gate_diffuse": 0.9}, {"saliency_adaptive": "concentration"}):  # read whole maps
        d = build_distiller("reviewkd", student, teacher, {"saliency_mix": 0.7, **entropy}, ctx)
        assert d.saliency_spec()["read_size"] is None
    b = _batch()
    const = dict(b, saliency=torch.full_like(b["saliency"], 2.0))
    plain.eval(), weighted.eval()
    lp = plain(b, 30).losses["review"]
    lw = weighted(const, 30).losses["review"]
    assert lw.item() == pytest.approx(lp.item(), rel=1e-6)
    lr = weighted(b, 30).losses["review"]
    assert abs(lr.item() - lp.item()) > 1e-4
    # without a cached map and without an explainer: a clear error
    del b["saliency"]
    with pytest.raises(UserError, match="set_teacher_explainer"):
        weighted(b, 30)


def test_reviewkd_explainer_override_and_validation():
    teacher, student = _pair()
    ctx = DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5)
    d = build_distiller("reviewkd", student, teacher,
                        {"saliency_mix": 0.5, "explainer": {"method": "saliency", "target": "label"}}, ctx)
    spec = d.saliency_spec()
    assert spec["method"] == "saliency" and spec["target"] == "label" and spec["params"] is None
    with pytest.raises(UserError, match="per_stage"):
        build_distiller("reviewkd", student, teacher, {"saliency_mix": 0.5, "saliency_levels": "per_stage",
                                                       "explainer": {"method": "saliency"}}, ctx)


def test_per_stage_weights_are_teacher_layer_gradcam():
    teacher, student = _pair()
    ctx = DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5,
                         extras={"explain": {"target": "label"}})
    d = build_distiller("reviewkd", student, teacher,
                        {"saliency_mix": 1.0, "saliency_levels": "per_stage"}, ctx)
    assert not d.needs_saliency and d.saliency_spec() is None  # computed by the distiller itself
    b = _batch()
    del b["saliency"]
    tf = teacher.features(b["image"])
    weights, _ = d.weighting.weights(b, tf.logits, d.level_sizes, teacher, teacher.stage_layers())
    for layer, w, size in zip(teacher.stage_layers(), weights, d.level_sizes):
        ref = LayerGradCam(teacher, layer).attribute(b["image"], target=b["label"],
                                                     relu_attributions=True).detach()
        assert ref.shape[-2:] == size
        assert torch.allclose(w, level_weights(ref, size, 1.0), atol=1e-5)
    d.train()
    out = d(b, 5)
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert torch.isfinite(out.losses["review"])


def test_weighted_review_is_sum_of_weighted_levels():
    teacher, student = _pair()
    ctx = DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5)
    d = build_distiller("reviewkd", student, teacher, {"saliency_mix": 1.0, "review_weight": 2.0,
                                                       "warmup_epochs": 0}, ctx).eval()
    b = _batch()
    got = d(b, 0).losses["review"]
    # independent of the distiller's plumbing: level weights by hand from the map
    from xkd.losses import weighted_hcl

    sf, tf = student.features(b["image"]), teacher.features(b["image"])
    outs, _ = d.abfs(sf.stages + [sf.pooled[:, :, None, None]])
    tt = tf.preact + [tf.pooled[:, :, None, None]]
    total = hcl(outs[-1], tt[-1])
    for u, t in zip(outs[:-1], tt[:-1]):
        m = torch.nn.functional.adaptive_avg_pool2d(b["saliency"], t.shape[-2:])
        w = m / m.mean(dim=(1, 2, 3), keepdim=True)
        total = total + weighted_hcl(u, t, w)
    assert got.item() == pytest.approx(2.0 * total.item(), rel=1e-5)


def test_online_xkd_explainer_matches_cached_maps():
    from xkd.explain import build as build_explainer

    teacher, student = _pair()
    ctx = DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5)
    d = build_distiller("reviewkd", student, teacher, {"saliency_mix": 0.8, "warmup_epochs": 0}, ctx)
    d.eval()
    b = _batch()
    del b["saliency"]
    explainer = build_explainer("gradcam", teacher)
    d.set_teacher_explainer(explainer, "label")
    online = d(b, 0).losses["review"]
    cached = d(dict(b, saliency=explainer.explain(b["image"], b["label"])), 0).losses["review"]
    assert online.item() == pytest.approx(cached.item(), rel=1e-6)
    d.set_teacher_explainer(explainer, "teacher_top1")
    top1 = teacher(b["image"]).argmax(1)
    other = d(dict(b, saliency=explainer.explain(b["image"], top1)), 0).losses["review"]
    assert d(b, 0).losses["review"].item() == pytest.approx(other.item(), rel=1e-6)
