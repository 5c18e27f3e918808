"""Issue 15's explanation-guidance variants of reviewkd: inverse and adaptive weighting, the
FGD-style foreground/background split, ABF attention supervision, review + e2KD alignment."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.test_distill_toy import TinyNet
from xkd.distill import DistillContext, build_distiller
from xkd.distill.reviewkd.fgbg import (attention_loss, channel_attention, foreground,
                                       spatial_attention, split_hcl)
from xkd.distill.reviewkd.guidance import attention_target
from xkd.distill.reviewkd.weights import SaliencyWeighting, adaptive_mix, invert_map
from xkd.errors import ConfigError
from xkd.losses import hcl


def _weighting(**kw) -> SaliencyWeighting:
    args = dict(mix=1.0, shuffle=False, gate_wrong=False, gate_diffuse=None, levels="input",
                target_rule="teacher_top1", task="classification")
    return SaliencyWeighting(**{**args, **kw})


def _batch(b: int = 4, size: int = 16, saliency: torch.Tensor | None = None) -> dict:
    g = torch.Generator().manual_seed(3)
    out = {"image": torch.randn(b, 3, size, size, generator=g), "label": torch.arange(b) % 5}
    out["saliency"] = torch.rand(b, 1, size, size, generator=g) if saliency is None else saliency
    return out


def _ctx() -> DistillContext:
    return DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5, epochs=3)


def test_inverse_weighting_of_a_one_hot_map_puts_the_weight_on_every_other_location():
    m = torch.zeros(2, 1, 4, 4)
    m[0, 0, 1, 2] = 3.0
    m[1, 0, 3, 0] = 0.5
    batch = {"image": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, dtype=torch.long), "saliency": m}
    (w,), _ = _weighting(invert=True).weights(batch, torch.zeros(2, 3), [(4, 4)])
    expected = torch.full((2, 1, 4, 4), 16 / 15)  # 1 on 15 pixels, normalised to mean 1
    expected[0, 0, 1, 2] = expected[1, 0, 3, 0] = 0.0
    torch.testing.assert_close(w, expected)
    assert torch.equal(invert_map(torch.zeros(1, 1, 3, 3)), torch.ones(1, 1, 3, 3))  # stays uniform


def test_adaptive_mix_follows_teacher_confidence_and_map_concentration():
    logits = torch.tensor([[100.0, 0, 0], [0.0, 0, 0]])  # confident, uniform
    a = adaptive_mix(0.8, "confidence", torch.rand(2, 1, 4, 4), logits).flatten()
    torch.testing.assert_close(a, torch.tensor([0.8, 0.8 / 3]))
    peaked, flat = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    peaked[0, 0, 0, 0] = 1.0
    c = adaptive_mix(0.5, "concentration", torch.cat([peaked, flat]), logits).flatten()
    torch.testing.assert_close(c, torch.tensor([0.5, 0.0]))
    m = torch.rand(2, 1, 4, 4)
    batch = {"image": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, dtype=torch.long), "saliency": m}
    (w_ad,), _ = _weighting(mix=0.8, adaptive="confidence").weights(batch, logits, [(4, 4)])
    (w_fix,), _ = _weighting(mix=0.8).weights(batch, logits, [(4, 4)])
    torch.testing.assert_close(w_ad[0], w_fix[0])  # confidence 1: the fixed mix
    torch.testing.assert_close(w_ad[1], 1 - 0.8 / 3 + (0.8 / 3) * m[1] / m[1].mean())


def test_fgd_attention_is_the_softmax_of_mean_absolute_activation():
    f = torch.randn(2, 3, 4, 5)
    a_s, a_c = spatial_attention(f, 0.5), channel_attention(f, 0.5)
    g = f.abs().mean(dim=1).flatten(1) / 0.5
    torch.testing.assert_close(a_s.flatten(1), 20 * g.exp() / g.exp().sum(dim=1, keepdim=True))
    torch.testing.assert_close(a_c.flatten(1), 3 * F.softmax(f.abs().mean(dim=(2, 3)) / 0.5, dim=1))
    torch.testing.assert_close(a_s.mean(dim=(1, 2, 3)), torch.ones(2))
    assert attention_loss(f, f, 0.5).item() == 0.0


def test_split_terms_recompose_plain_hcl_per_sample_without_attention():
    torch.manual_seed(0)
    u, t = torch.randn(1, 6, 8, 8), torch.randn(1, 6, 8, 8)
    fg = foreground(torch.rand(1, 1, 16, 16), (8, 8))
    l_fg, l_bg = split_hcl(u, t, fg, None)
    torch.testing.assert_close(fg.mean() * l_fg + (1 - fg).mean() * l_bg, hcl(u, t))


def test_split_terms_of_a_one_hot_map_hand_worked():
    # 2x2 level: HCL = (full term + 0.5 * 1x1 pooled term) / 1.5. Error [1, 3] at pixel (0, 1):
    # full e = (1 + 9) / 2 = 5 there; 1x1 pooled e = ((1/4)^2 + (3/4)^2) / 2 = 0.3125.
    u, t = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    u[0, :, 0, 1] = torch.tensor([1.0, 3.0])
    m = torch.zeros(1, 1, 2, 2)
    m[0, 0, 0, 1] = 2.0
    fg = foreground(m, (2, 2))
    assert torch.equal(fg, m / 2)
    l_fg, l_bg = split_hcl(u, t, fg, None)
    # foreground weight 4 at (0,1) (mean 1/4): full term 4*5/4 = 5; pooled weight 1
    assert math.isclose(l_fg.item(), (5 + 0.5 * 0.3125) / 1.5, rel_tol=1e-6)
    # background weight 0 at (0,1): full term 0; pooled weight 1
    assert math.isclose(l_bg.item(), (0 + 0.5 * 0.3125) / 1.5, rel_tol=1e-6)


def test_degenerate_maps_give_an_even_split():
    assert torch.equal(foreground(torch.zeros(2, 1, 8, 8), (4, 4)), torch.full((2, 1, 4, 4), 0.5))


def test_attention_target_is_zero_when_the_abf_attention_equals_the_normalised_map():
    m = torch.rand(2, 1, 8, 8)
    att = torch.cat([m / m.flatten(1).amax(1).view(-1, 1, 1, 1), torch.rand(2, 1, 8, 8)], dim=1)
    assert attention_target([att, None], [m, m]).item() < 1e-12
    assert attention_target([1 - att, None], [m, m]).item() > 0.01


def test_review_with_e2kd_weight_adds_e2kds_own_explanation_term():
    torch.manual_seed(0)
    s, t = TinyNet((4, 8, 12)), TinyNet((8, 16, 32))
    batch = _batch()
    rv = build_distiller("reviewkd", s, t, {"e2kd_weight": 2.0, "warmup_epochs": 0}, _ctx()).train()
    e2 = build_distiller("e2kd", s, t, {"kd_weight": 1.0, "lambda_exp": 1.0}, _ctx()).train()
    torch.testing.assert_close(rv(batch, 1).losses["exp"], 2.0 * e2(batch, 1).losses["exp"])


def test_shuffle_control_moves_the_split_and_attention_maps_across_the_batch():
    torch.manual_seed(0)
    s, t = TinyNet((4, 8, 12)), TinyNet((8, 16, 32))
    p = {"fg_weight": 1.0, "bg_weight": 0.5, "attention_target_weight": 1.0, "warmup_epochs": 0}
    d = build_distiller("reviewkd", s, t, {**p, "saliency_shuffle": True}, _ctx())
    batch = _batch()
    maps = d.weighting.maps(batch, torch.zeros(4, 5), 3)
    assert d.needs_saliency
    assert not any(torch.equal(maps[0][i], batch["saliency"][i]) for i in range(4))
    assert sorted(maps[0].flatten(1).sum(1).tolist()) == sorted(batch["saliency"].flatten(1).sum(1).tolist())


def test_every_variant_trains_one_step_with_its_own_loss_terms():
    s, t = TinyNet((4, 8, 12)), TinyNet((8, 16, 32))
    cases = {"saliency_invert": ({"saliency_mix": 0.8, "saliency_invert": True}, set()),
             "fgbg": ({"fg_weight": 1.0, "bg_weight": 0.5, "fgd_attention_weight": 1.0}, {"fgd_attention"}),
             "att": ({"attention_target_weight": 1.0}, {"attention_target"}),
             "e2kd": ({"e2kd_weight": 1.0}, {"exp"})}
    for params, extra in cases.values():
        d = build_distiller("reviewkd", s, t, {"warmup_epochs": 0, **params}, _ctx()).train()
        out = d(_batch(), 1)
        assert set(out.losses) == {"ce", "review"} | extra
        sum(out.losses.values()).backward()
        assert all(torch.isfinite(v) for v in out.losses.values())


@pytest.mark.parametrize("params, field", [
    ({"fg_weight": 1.0, "saliency_mix": 0.5}, "saliency_mix"),
    ({"saliency_adaptive": "confidence"}, "saliency_mix"),
    ({"saliency_adaptive": "entropy", "saliency_mix": 0.5}, "saliency_adaptive"),
])
def test_inconsistent_guidance_settings_are_one_line_config_errors(params, field):
    with pytest.raises(ConfigError, match=field):
        build_distiller("reviewkd", TinyNet(), TinyNet(), params, _ctx())


def test_shuffle_control_also_moves_the_e2kd_term_of_review():
    """``saliency_shuffle`` is the control of every guidance term, e2kd_weight's included: the
    review's explanation term equals e2KD's with the same derangement of teacher maps."""
    s, t = TinyNet((4, 8, 12)), TinyNet((8, 16, 32))
    batch = _batch()
    p = {"e2kd_weight": 1.0, "warmup_epochs": 0}
    rv = build_distiller("reviewkd", s, t, {**p, "saliency_shuffle": True}, _ctx()).train()
    e2 = build_distiller("e2kd", s, t, {"kd_weight": 1.0, "lambda_exp": 1.0,
                                          "explanation_shuffle": True}, _ctx()).train()
    plain = build_distiller("reviewkd", s, t, p, _ctx()).train()
    torch.manual_seed(5)
    shuffled = rv(batch, 1).losses["exp"]
    torch.manual_seed(5)
    torch.testing.assert_close(shuffled, e2(batch, 1).losses["exp"])
    assert not torch.allclose(shuffled, plain(batch, 1).losses["exp"])


def test_a_shuffle_control_with_nothing_to_shuffle_is_a_config_error():
    with pytest.raises(ConfigError, match="saliency_shuffle"):
        build_distiller("reviewkd", TinyNet(), TinyNet(), {"saliency_shuffle": True}, _ctx())


def test_gcblock_pools_by_softmax_attention_and_adds_the_transformed_context():
    from xkd.distill.reviewkd.fgbg import GcBlock

    torch.manual_seed(0)
    block = GcBlock(6)
    f = torch.randn(3, 6, 4, 5)
    logits = F.conv2d(f, block.key.weight, block.key.bias).flatten(1)
    w = torch.exp(logits - logits.amax(1, keepdim=True))
    w = w / w.sum(1, keepdim=True)
    ref_ctx = (f.flatten(2) * w[:, None]).sum(-1)[:, :, None, None]  # Σ_j softmax_j · f_j
    torch.testing.assert_close(block.context(f), ref_ctx)
    torch.nn.init.zeros_(block.key.weight)  # uniform attention: the context is the spatial mean
    mean = f.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(block.context(f), mean)
    h = F.relu(F.layer_norm(F.conv2d(mean, block.transform[0].weight, block.transform[0].bias),
                            [3, 1, 1], block.transform[1].weight, block.transform[1].bias))
    out = F.conv2d(h, block.transform[3].weight, block.transform[3].bias)
    torch.testing.assert_close(block(f), f + out)


def test_fgd_global_term_trains_both_gcblocks_and_vanishes_for_identical_sides():
    from xkd.distill.reviewkd.fgbg import GlobalRelation

    torch.manual_seed(0)
    rel = GlobalRelation([8])
    rel.teacher.load_state_dict(rel.student.state_dict())
    t = torch.randn(2, 8, 4, 4)
    assert rel([t.clone()], [t]).item() < 1e-12
    s, te = TinyNet((4, 8, 12)), TinyNet((8, 16, 32))
    d = build_distiller("reviewkd", s, te, {"warmup_epochs": 0, "fgd_global_weight": 2.0}, _ctx()).train()
    out = d(_batch(), 1)
    assert set(out.losses) == {"ce", "review", "fgd_global"} and out.losses["fgd_global"].item() > 0
    out.losses["fgd_global"].backward()
    blocks = d.extra_modules()[1]
    assert blocks is d.global_relation and len(blocks.student) == d.n_levels
    for side in (blocks.student, blocks.teacher):
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in side.parameters() if p.dim() > 1)
    plain = build_distiller("reviewkd", s, te, {"warmup_epochs": 0}, _ctx())
    assert len(plain.extra_modules()) == 1
