"""CCL (Chen et al. CVPR 2021): label-aware contrastive loss against a hand-worked 4-sample example,
symmetric KL against scipy, composition-head shapes, gradient routing (the video network gets no
gradient from the head objective; the head gets both), audio masking, and R@k by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy
from torch import nn

from xkd.distill import DistillContext, build_distiller
from xkd.distill.ccl import CCLDistiller, TeacherRef
from xkd.distill.ccl.losses import (CompositionHead, label_contrastive, symmetric_contrastive,
                                    symmetric_kl)
from xkd.engine.retrieval import recall_at_k
from xkd.errors import ConfigError, UserError
from xkd.models.base import Features, FeatureModel


class Flat(FeatureModel):
    """Flatten -> Linear embedding (D) -> Linear logits: a stand-in for any modality's network."""

    def __init__(self, in_dim: int, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.fc = nn.Linear(dim, classes)

    def features(self, x: torch.Tensor) -> Features:
        e = torch.tanh(self.embed(x.flatten(1)))
        return Features([e], [e], e, self.fc(e))

    def stage_layers(self) -> list[nn.Module]:
        return [self.embed]


# ----------------------------------------------------------------------------- losses


def test_contrastive_matches_hand_worked_four_samples():
    # unit vectors at 0, 90, 180, 90 degrees; labels 0,0,1,1; tau = 1
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    y = torch.tensor([0, 0, 1, 1])
    # similarity rows s_bj = cos(p_b, q_j)
    s = [[1, 1, 0, 0], [0, 0, 1, -1], [-1, -1, 0, 0], [0, 0, 1, -1]]
    total = 0.0
    for b in range(4):
        z = sum(math.exp(v) for v in s[b])
        pi = [math.exp(v) / z for v in s[b]]
        pos = [j for j in range(4) if y[j] == y[b]]  # includes b itself
        neg = [j for j in range(4) if y[j] != y[b]]
        total += (sum(-math.log(pi[j]) for j in pos) / len(pos)
                  + sum(-math.log(1 - pi[j]) for j in neg) / len(neg))
    expected = total / 4
    got = label_contrastive(p, q, y, tau=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the same number written out: row 0 has pi = (e, e, 1, 1) / (2e + 2), rows 1 and 3 have
    # pi = (1, 1, e, 1/e) / (2 + e + 1/e), row 2 has pi = (1/e, 1/e, 1, 1) / (2/e + 2)
    assert expected == pytest.approx(1.548353, abs=1e-6)
    # scale invariance (rows are L2-normalised) and the symmetric form
    assert label_contrastive(3 * p, 0.5 * q, y, 1.0).item() == pytest.approx(expected, rel=1e-6)
    sym = symmetric_contrastive(p, q, y, 1.0)
    assert sym.item() == pytest.approx(expected + label_contrastive(q, p, y, 1.0).item(), rel=1e-6)


def test_contrastive_temperature_and_all_positive_batch():
    torch.manual_seed(0)
    p, q = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.zeros(5, dtype=torch.long)  # no negatives: only the positive term, mean over all j
    pn, qn = nn.functional.normalize(p, dim=1), nn.functional.normalize(q, dim=1)
    logp = torch.log_softmax(pn @ qn.t() / 0.1, dim=1)
    assert label_contrastive(p, q, y, 0.1).item() == pytest.approx((-logp.mean(1)).mean().item(), rel=1e-5)
    assert label_contrastive(p[:0], q[:0], y[:0], 0.5).item() == 0.0


def test_symmetric_kl_matches_scipy():
    torch.manual_seed(1)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    pa, pb = torch.softmax(a, 1).numpy().astype(np.float64), torch.softmax(b, 1).numpy().astype(np.float64)
    expected = np.mean([0.5 * (entropy(pa[i], pb[i]) + entropy(pb[i], pa[i])) for i in range(6)])
    assert symmetric_kl(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert symmetric_kl(a, b, weight=1.0).item() == pytest.approx(2 * expected, rel=1e-5)


def test_composition_head_shapes_and_residual_form():
    head = CompositionHead(teacher_dim=6, video_dim=4, num_classes=3)
    u, v = torch.randn(5, 6), torch.randn(5, 4)
    c, z = head(u, v)
    assert c.shape == (5, 6) and z.shape == (5, 3)
    assert head.residual.in_features == 10 and head.residual.out_features == 6
    nn.init.zeros_(head.residual.weight)
    nn.init.zeros_(head.residual.bias)
    c0, _ = head(u, v)
    assert torch.equal(c0, u)  # zero residual: the teacher embedding itself
    # the residual sees normalised inputs: scaling v changes nothing
    head2 = CompositionHead(6, 4, 3)
    assert torch.allclose(head2(u, v)[0], head2(u, 7 * v)[0], atol=1e-6)


def test_recall_at_k_hand_example():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7]])
    g_labels = torch.tensor([0, 1, 2, 1])
    query = torch.tensor([[0.9, 0.1], [0.1, 0.9], [-0.2, -1.0]])
    q_labels = torch.tensor([1, 1, 0])
    # q0 (label 1) ranks g0 (cos .99), g3 (.78), g1, g2 -> miss at 1, hit at 2 (g3)
    # q1 (label 1) ranks g1 (.99), g3, ... -> hit at 1
    # q2 (label 0) ranks g2 (.196), g0 (-.196), g3 (-.83), g1 (-.98) -> miss at 1, hit at 2 (g0)
    r = recall_at_k(query, q_labels, gallery, g_labels, (1, 2, 5))
    assert r["r1"] == pytest.approx(1 / 3)
    assert r["r2"] == pytest.approx(1.0)
    assert r["r5"] == pytest.approx(1.0)  # k beyond the gallery size: the whole gallery


# ----------------------------------------------------------------------------- distiller


def _setup(variant: str = "AI", dim: int = 4, audio_dim: int | None = None):
    torch.manual_seed(0)
    video, image, audio = Flat(2 * 3 * 4, dim), Flat(3 * 4, dim), Flat(1 * 4, audio_dim or dim)
    teachers = {"img": TeacherRef(image, "image"), "aud": TeacherRef(audio, "audio")}
    inputs = {"video": torch.randn(1, 2, 3, 4), "image": torch.randn(1, 3, 4), "audio": torch.randn(1, 1, 4)}
    ctx = DistillContext(example=inputs["video"], num_classes=3,
                         extras={"path": "students[0]", "student_key": "video", "teachers": teachers,
                                 "inputs": inputs})
    d = build_distiller("ccl", video, None, {"variant": variant}, ctx)
    batch = {"video": torch.randn(6, 2, 3, 4), "image": torch.randn(6, 3, 4), "audio": torch.randn(6, 1, 4),
             "audio_mask": torch.tensor([1.0, 1, 0, 1, 1, 0]), "label": torch.tensor([0, 1, 2, 0, 1, 2])}
    return d, batch


def _grads(module: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def test_gradient_routing_video_gets_only_its_objective_heads_get_both():
    d, batch = _setup("AI")
    assert isinstance(d, CCLDistiller) and sorted(d.heads) == ["aud", "img"] and d.weight == 0.5
    out = d(batch, 0)
    assert set(out.losses) == {"ce", "img_ct", "img_kl", "img_head", "aud_ct", "aud_kl", "aud_head"}
    head_loss = out.losses["img_head"] + out.losses["aud_head"]
    student_loss = sum(v for k, v in out.losses.items() if not k.endswith("_head"))
    # 1) the head objective alone reaches no video parameter, but does reach the heads
    d.zero_grad()
    head_loss.backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in d.student.parameters())
    g_head_only = _grads(d.heads)
    assert all(g is not None and g.abs().sum() > 0 for g in g_head_only)
    # 2) the student objective reaches the video network and the head's residual
    d.zero_grad()
    student_loss.backward(retain_graph=True)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters())
    g_student = _grads(d.heads)
    assert d.heads["img"].residual.weight.grad.abs().sum() > 0
    # 3) the summed objective the engine optimises gives the head both contributions
    d.zero_grad()
    sum(out.losses.values()).backward()
    for gs, gh, p in zip(g_student, g_head_only, d.heads.parameters()):
        expected = gh + (gs if gs is not None else 0)
        assert torch.allclose(p.grad, expected, atol=1e-6)
    # teachers stay frozen, outside the module tree and in eval mode
    d.train()
    assert all(not r.model.training for r in d.teacher_refs.values())
    assert not any(p.requires_grad for r in d.teacher_refs.values() for p in r.model.parameters())
    assert {id(p) for p in d.trainable_modules().parameters()} == \
        {id(p) for p in list(d.student.parameters()) + list(d.heads.parameters())}


def test_reference_objective_values_and_audio_mask():
    d, batch = _setup("A")
    assert d.weight == 1.0 and list(d.heads) == ["aud"]
    out = d(batch, 0)
    keep = batch["audio_mask"] > 0.5
    f = d.student.features(batch["video"])
    v, zv = f.pooled[keep], f.logits[keep]
    u = d.teacher_refs["aud"].model.features(batch["audio"][keep]).pooled
    y = batch["label"][keep]
    c, zc = d.heads["aud"](u, v)
    tau = 0.5
    ct = symmetric_contrastive(v, c, y, tau) + symmetric_contrastive(v, u, y, tau)
    head = (nn.functional.cross_entropy(zc, y) + symmetric_contrastive(v, c, y, tau)
            + symmetric_contrastive(c, u, y, tau) + symmetric_kl(zv, zc))
    assert out.losses["aud_ct"].item() == pytest.approx(ct.item(), rel=1e-5)
    assert out.losses["aud_kl"].item() == pytest.approx(symmetric_kl(zv, zc).item(), rel=1e-5)
    assert out.losses["aud_head"].item() == pytest.approx(head.item(), rel=1e-5)
    assert out.losses["ce"].item() == pytest.approx(
        nn.functional.cross_entropy(f.logits, batch["label"]).item(), rel=1e-6)
    assert out.logs["aud_kept"] == pytest.approx(4 / 6)
    # a batch without any audio: finite zero audio terms, CE unchanged
    batch["audio_mask"] = torch.zeros(6)
    out0 = d(batch, 0)
    assert out0.losses["aud_ct"].item() == 0.0 and out0.losses["aud_head"].item() == 0.0


def test_image_variant_uses_image_temperature_and_weight_override():
    torch.manual_seed(0)
    d, batch = _setup("I")
    assert [b[:2] for b in d.branches] == [("img", "image")] and d.branches[0][2] == 0.1
    video, image = d.student, d.teacher_refs["img"].model
    ctx = DistillContext(example=batch["video"][:1], num_classes=3,
                         extras={"student_key": "video", "teachers": {"img": TeacherRef(image, "image")},
                                 "inputs": {"image": batch["image"][:1]}})
    d2 = build_distiller("ccl", video, None, {"variant": "I", "loss_weight": 2.0}, ctx)
    d2.heads.load_state_dict(d.heads.state_dict())
    a, b = d(batch, 0), d2(batch, 0)
    assert b.losses["img_ct"].item() == pytest.approx(2 * a.losses["img_ct"].item(), rel=1e-5)
    assert b.losses["img_head"].item() == pytest.approx(a.losses["img_head"].item(), rel=1e-5)


def test_bad_inputs_one_line():
    with pytest.raises(ConfigError, match=r"teachers\.aud\.model: pooled embedding width 6 differs .* 4"):
        _setup("A", dim=4, audio_dim=6)
    video = Flat(24)
    ctx = DistillContext(example=torch.randn(1, 2, 3, 4), num_classes=3,
                         extras={"path": "students[2]", "student_key": "video", "teachers": {}})
    with pytest.raises(ConfigError, match=r"students\[2\]\.method: 'ccl' needs named teachers"):
        build_distiller("ccl", video, None, {}, ctx)
    img = TeacherRef(Flat(12), "image")
    ctx.extras.update(teachers={"img": img}, inputs={"image": torch.randn(1, 3, 4)})
    with pytest.raises(ConfigError, match=r"students\[2\]\.params\.audio_teacher: 0 teachers have modality 'audio'"):
        build_distiller("ccl", video, None, {"variant": "A"}, ctx)
    with pytest.raises(ConfigError, match=r"students\[2\]\.params\.image_teacher: 'x' is not a named teacher"):
        build_distiller("ccl", video, None, {"variant": "I", "image_teacher": "x"}, ctx)
    with pytest.raises(ConfigError, match=r"students\[2\]\.params\.variant"):
        build_distiller("ccl", video, None, {"variant": "V"}, ctx)
    # image-only methods refuse a video student with one line naming the field
    with pytest.raises(UserError, match=r"students\[2\]\.modality: method 'reviewkd' reads image input only"):
        build_distiller("reviewkd", video, img.model, {}, ctx)
    # a regression dataset is refused by the shared task check (registry meta tasks)
    ctx.task = "regression"
    with pytest.raises(UserError, match=r"students\[2\]\.method: 'ccl' supports classification only"):
        build_distiller("ccl", video, None, {"variant": "I"}, ctx)
