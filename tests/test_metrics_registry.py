"""Registry and call convention, controls, seeding, and the model-randomisation sanity check."""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import xkd.metrics as M
from xkd.errors import ConfigError, UnknownNameError, UserError


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 4)).eval()


def grad_factory(model: nn.Module):
    def explain(x, target):
        x = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x).gather(1, target.view(-1, 1)).sum(), x)
        return g.abs().amax(1, keepdim=True)
    return explain


def inputs(n: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    model = tiny_cnn()
    x = torch.randn(n, 3, 8, 8, generator=g)
    return {"model": model, "x": x, "attribution": torch.rand(n, 1, 8, 8, generator=g),
            "second_map": torch.rand(n, 1, 8, 8, generator=g), "logits": torch.randn(n, 4, generator=g),
            "second_logits": torch.randn(n, 4, generator=g), "explainer": grad_factory(model),
            "explainer_factory": grad_factory}


def test_every_metric_declares_metadata():
    infos = M.list_metrics()
    assert {i["category"] for i in infos} == set(M.CATEGORIES)
    for i in infos:
        assert isinstance(i["higher_is_better"], bool) and i["description"]
        assert set(i["needs"]) | set(i["optional"]) <= set(M.INPUT_NAMES)
    names = {i["name"] for i in infos}
    assert {"deletion", "insertion", "aopc_morf", "aopc_lerf", "faithfulness_correlation",
            "infidelity", "max_sensitivity", "road_morf", "road_lerf", "pointing_game",
            "energy_pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy",
            "top_k_intersection", "cosine", "spearman", "kendall_tau", "ssim", "topk_iou",
            "agreement", "kl_divergence", "model_randomisation"} <= names
    assert [i["name"] for i in M.list_metrics("prediction")] == ["agreement", "kl_divergence"]


def test_run_metrics_skips_with_reasons_and_returns_per_sample_values():
    inp = inputs()
    fast = {"deletion": {"steps": 4}, "insertion": {"steps": 4}, "faithfulness_correlation": {"runs": 4},
            "road_morf": {"percentages": [0.5]}, "road_lerf": {"percentages": [0.5]},
            "aopc_morf": {"patch_size": 4}, "aopc_lerf": {"patch_size": 4}}
    results, skipped = M.run_metrics(inp, params=fast)
    localisation = {i["name"] for i in M.list_metrics("localisation")}
    assert set(skipped) == localisation | {"max_sensitivity"}
    assert all(skipped[n] == "missing inputs: mask" for n in localisation)
    assert skipped["max_sensitivity"] == "missing inputs: target"  # explicit target required
    assert set(results) == set(M.METRICS.names()) - set(skipped)
    for name, res in results.items():
        assert res.values.shape == (3,) and res.values.dtype == torch.float64, name
    inp["mask"] = torch.ones(3, 1, 8, 8)
    inp["target"] = torch.tensor([0, 1, 2])
    results, skipped = M.run_metrics(inp, names=["pointing_game", "cosine", "max_sensitivity"])
    assert set(results) == {"pointing_game", "cosine", "max_sensitivity"} and not skipped


def test_user_mistakes_are_one_line_errors():
    with pytest.raises(UnknownNameError, match="allowed: .*deletion"):
        M.METRICS.build("delition")
    with pytest.raises(ConfigError, match="metrics.deletion.steps"):
        M.METRICS.build("deletion", steps=0)
    with pytest.raises(ConfigError, match="metrics.ssim.windw"):
        M.METRICS.build("ssim", windw=7)
    with pytest.raises(UnknownNameError):
        M.run_metrics(inputs(), params={"nope": {}})
    with pytest.raises(UserError, match="needs inputs"):
        M.METRICS.build("cosine").compute(attribution=torch.rand(1, 1, 4, 4))
    with pytest.raises(UserError, match="NaN"):
        M.cosine(torch.full((1, 1, 4, 4), float("nan")), torch.rand(1, 1, 4, 4))


@pytest.mark.parametrize("name,params", [
    ("faithfulness_correlation", {"runs": 5}), ("aopc_morf", {"patch_size": 2}),
    ("road_lerf", {"percentages": [0.3, 0.6]}), ("infidelity", {}),
])
def test_seeded_metrics_are_reproducible(name, params):
    inp = inputs(4)
    m = M.METRICS.build(name, **params)
    first = m.compute(**inp).values
    assert torch.equal(first, m.compute(**inp).values)
    other = M.METRICS.build(name, **params, seed=1).compute(**inp).values
    assert not torch.equal(first, other)
    passed = m.compute(**inp, generator=torch.Generator().manual_seed(0)).values
    assert torch.equal(first, passed)
    if name != "infidelity":  # draws do not depend on the chunking
        assert torch.allclose(first, M.METRICS.build(name, **params, max_batch=3).compute(**inp).values,
                              atol=1e-6)


def test_controls():
    g = torch.Generator()
    r1 = M.random_attribution((2, 1, 4, 4), g.manual_seed(3))
    assert torch.equal(r1, M.random_attribution((2, 1, 4, 4), g.manual_seed(3)))
    assert r1.shape == (2, 1, 4, 4) and 0 <= float(r1.min()) and float(r1.max()) < 1
    assert torch.equal(M.uniform_attribution((2, 1, 4, 4)), torch.ones(2, 1, 4, 4))
    c = M.control_maps(r1, g.manual_seed(0))
    assert set(c) == {"random", "uniform"} and c["random"].shape == r1.shape


def test_model_randomisation_cascade_matches_reference():
    model = tiny_cnn()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 2])
    res = M.model_randomisation(model, x, grad_factory, t, generator=torch.Generator().manual_seed(5))
    assert res.info["layers"] == ["3", "0"] and res.curves.shape == (3, 2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # original untouched
    twin, g = copy.deepcopy(model), torch.Generator().manual_seed(5)
    orig = grad_factory(twin)(x, t)
    for step, layer in enumerate([twin[3], twin[0]]):
        M.randomise_layer_(layer, g)
        new = grad_factory(twin)(x, t)
        for n in range(3):
            ref = spearmanr(orig[n].abs().numpy().ravel(), new[n].abs().numpy().ravel()).statistic
            assert float(res.curves[n, step]) == pytest.approx(ref, abs=1e-6)
    assert float(res.curves.mean()) < 0.9  # gradients depend on the weights
    same = M.model_randomisation(model, x, lambda m: (lambda xx, tt: xx.abs().sum(1, keepdim=True)), t,
                                 generator=torch.Generator().manual_seed(5))
    assert torch.allclose(same.curves, torch.ones(3, 2, dtype=torch.float64))
    assert torch.allclose(same.extras["ssim"], torch.ones(3, 2, dtype=torch.float64))


def test_randomise_layer_redraws_with_the_original_scale():
    lin = nn.Linear(50, 40)
    w0 = lin.weight.detach().clone()
    M.randomise_layer_(lin, torch.Generator().manual_seed(0))
    rms = float(w0.pow(2).mean().sqrt())
    assert not torch.equal(w0, lin.weight)
    assert float(lin.weight.detach().abs().max()) <= 2 * rms + 1e-6
    assert 0.7 * rms < float(lin.weight.detach().std()) < 1.0 * rms  # truncated normal std ~ 0.88 sigma
