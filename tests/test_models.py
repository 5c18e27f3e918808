"""xkd.models: stage features, Captum compatibility, torchvision adapter, user factories.

References are independent of the code under test: stage widths from the ReviewKD/RepDistiller
tables (seed_methods.md 1.6) and the architecture papers, parameter counts from the literature,
Grad-CAM recomputed by hand from ``features()`` and compared with Captum's LayerGradCam, and
DeepLift's summation-to-delta property (which breaks if a ReLU module is reused).
"""

from __future__ import annotations

import copy
import sys
import textwrap

import pytest
import torch
from captum.attr import DeepLift, LayerGradCam
from torch import nn

import xkd.models as M
from xkd.config import ModelConfig
from xkd.errors import ConfigError, UnknownNameError
from xkd.models.hooked import HookedFeatureModel

CIFAR = [f"resnet{d}" for d in (8, 14, 20, 32, 44, 56)] + ["resnet8x4", "resnet32x4"]
BUILTINS = CIFAR + ["wrn-16-2", "wrn-40-1", "wrn-40-2", "mobilenetv2"]
TV = "tv:resnet18"
ALL = BUILTINS + [TV]

# (stage channels, stage spatial sizes for a 32x32 input, pooled width)
EXPECTED: dict[str, tuple[list[int], list[int], int]] = {
    **{n: ([16, 32, 64], [32, 16, 8], 64) for n in CIFAR if "x4" not in n},
    "resnet110": ([16, 32, 64], [32, 16, 8], 64),
    "resnet8x4": ([64, 128, 256], [32, 16, 8], 256),
    "resnet32x4": ([64, 128, 256], [32, 16, 8], 256),
    "wrn-16-2": ([32, 64, 128], [32, 16, 8], 128),
    "wrn-40-1": ([16, 32, 64], [32, 16, 8], 64),
    "wrn-40-2": ([32, 64, 128], [32, 16, 8], 128),
    # width 0.5, channels rounded to multiples of 8: 24->16, 32->16, 320->160; head 1280
    "mobilenetv2": ([16, 16, 160], [32, 16, 8], 1280),
    # ImageNet ResNet-18 on 32x32: stem /4 -> layer1 8, layer2 4, layer3 2, layer4 1
    TV: ([64, 128, 256, 512], [8, 4, 2, 1], 512),
}

_CACHE: dict[str, M.FeatureModel] = {}



def model(name: str) -> M.FeatureModel:
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = M.build(name, num_classes=10).eval()
    return _CACHE[name]


def batch(c: int = 3, s: int = 32) -> torch.Tensor:
    return torch.randn(2, c, s, s, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ALL)
def test_forward_equals_features_logits(name: str) -> None:
    m, x = model(name), batch()
    with torch.no_grad():
        out, f = m(x), m.features(x)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, f.logits, rtol=0, atol=1e-6)
    assert len(f.stages) == len(f.preact) == len(m.stage_layers())


@pytest.mark.parametrize("name", ALL)
def test_describe_matches_expected_shapes(name: str) -> None:
    m = model(name)
    m.train()
    infos, pooled = M.describe(m, batch()[0])
    assert m.training, "describe must restore train mode"
    m.eval()
    chans, sizes, width = EXPECTED[name]
    assert [(i.channels, i.height, i.width) for i in infos] == [(c, s, s) for c, s in zip(chans, sizes)]
    assert pooled == width


def test_resnet110_shapes_only() -> None:
    m = M.build("resnet110", num_classes=10)
    infos, pooled = M.describe(m, torch.zeros(3, 32, 32))
    chans, sizes, width = EXPECTED["resnet110"]
    assert [(i.channels, i.height) for i in infos] == list(zip(chans, sizes)) and pooled == width
    assert sum(1 for mod in m.modules() if isinstance(mod, nn.Conv2d)) == 109 + 2  # + 2 projections


@pytest.mark.parametrize("name,sizes", [
    ("resnet8", [40, 20, 10]), ("wrn-16-2", [40, 20, 10]), ("mobilenetv2", [40, 20, 10]),
    (TV, [10, 5, 3, 2]),  # conv s2 -> 20, maxpool -> 10, then ceil halvings
])
def test_other_input_sizes_and_channels(name: str, sizes: list[int]) -> None:
    m = M.build(name, num_classes=3, in_channels=1, image_size=40)
    infos, _ = M.describe(m, torch.zeros(1, 40, 40))
    assert [i.height for i in infos] == sizes
    assert m(torch.randn(2, 1, 40, 40)).shape == (2, 3)


@pytest.mark.parametrize("name", ALL)
def test_preact_relation(name: str) -> None:
    m = model(name)
    with torch.no_grad():
        f = m.features(batch())
    if m.preact_relation == "relu":
        for s, p in zip(f.stages, f.preact):
            assert (s >= 0).all()
            assert (p < 0).any(), "pre-activation maps must carry negative values"
            torch.testing.assert_close(s, torch.relu(p))
    else:
        assert m.preact_relation == "identity"
        assert all(p is s for s, p in zip(f.stages, f.preact))
    expected = "identity" if name == "mobilenetv2" else "relu"  # tv:resnet18: its blocks' ReLU inputs
    assert m.preact_relation == expected


@pytest.mark.parametrize("name", ALL)
def test_stage_layers_outputs_are_the_stages(name: str) -> None:
    m, x = model(name), batch()
    seen: dict[int, list[torch.Tensor]] = {}
    handles = [layer.register_forward_hook(lambda mod, i, o, k=k: seen.setdefault(k, []).append(o))
               for k, layer in enumerate(m.stage_layers())]
    try:
        with torch.no_grad():
            m(x)  # plain forward: the hooks must fire there too
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        f = m.features(x)
    assert sorted(seen) == list(range(len(f.stages)))
    for k, s in enumerate(f.stages):
        assert len(seen[k]) == 1, "each stage module runs once per forward"
        torch.testing.assert_close(seen[k][0], s)


@pytest.mark.parametrize("name,millions", [
    ("resnet20", 0.27), ("resnet56", 0.86), ("resnet8x4", 1.23), ("resnet32x4", 7.43),
    ("wrn-40-2", 2.26), ("wrn-16-2", 0.70),
])
def test_parameter_counts_match_literature(name: str, millions: float) -> None:
    n = sum(p.numel() for p in M.build(name, num_classes=100).parameters()) / 1e6
    # 0.01M slack: projection (option-B) shortcuts add ~0.008M to He et al.'s resnet20 count
    assert abs(n - millions) < 0.01, (name, n)


def _manual_gradcam(m: M.FeatureModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    f = m.features(x)
    a = f.stages[-1]
    g, = torch.autograd.grad(f.logits.gather(1, target[:, None]).sum(), a)
    return (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)


@pytest.mark.parametrize("name", ALL)
def test_captum_layer_gradcam_on_last_stage_matches_features(name: str) -> None:
    m, x = model(name), batch()
    target = torch.tensor([1, 7])
    cam = LayerGradCam(m, m.stage_layers()[-1]).attribute(x, target=target, relu_attributions=False)
    ref = _manual_gradcam(m, x, target)
    h = EXPECTED[name][1][-1]
    assert cam.shape == ref.shape == (2, 1, h, h)
    torch.testing.assert_close(cam, ref, rtol=1e-4, atol=1e-6)
    assert ref.abs().sum() > 0


def calibrated(name: str) -> M.FeatureModel:
    """A copy whose BatchNorm statistics come from one batch (as after training): at init, eval-mode
    BN is the identity, activations grow with depth and ReLU6 saturates to a constant output."""
    m = copy.deepcopy(model(name))
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    return m.eval()


@pytest.mark.parametrize("name", ["resnet8", "wrn-16-2", "mobilenetv2"])
def test_captum_deeplift_completeness(name: str) -> None:
    m, x = calibrated(name), batch()
    attr, delta = DeepLift(m).attribute(x, baselines=torch.zeros_like(x), target=3,
                                        return_convergence_delta=True)
    assert attr.shape == x.shape
    with torch.no_grad():
        gap = m(x)[:, 3] - m(torch.zeros_like(x))[:, 3]
    assert gap.abs().min() > 1e-4
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), gap, rtol=1e-3, atol=1e-4)
    assert delta.abs().max() < 1e-3


def test_deeplift_friendly_relu6_equals_relu6() -> None:
    from xkd.models.mobilenetv2 import ReLU6

    x = torch.linspace(-10, 10, 4001)
    torch.testing.assert_close(ReLU6()(x), nn.functional.relu6(x), rtol=0, atol=1e-6)


def test_every_relu_is_a_distinct_module() -> None:
    for name in BUILTINS:
        m = model(name)
        relus = [mod for mod in m.modules() if isinstance(mod, nn.ReLU)]
        calls: dict[int, int] = {}
        hs = [r.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1))
              for r in relus]
        with torch.no_grad():
            m(batch())
        for h in hs:
            h.remove()
        assert set(calls.values()) == {1} and len(calls) == len(relus), name


# ----------------------------------------------------------------------------- torchvision


def test_torchvision_stage_names_and_hook_hygiene() -> None:
    m = model(TV)
    assert isinstance(m, HookedFeatureModel)
    assert m.stage_names == ["layer1", "layer2", "layer3", "layer4"]
    m.features(batch())
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    twin = copy.deepcopy(m)
    with torch.no_grad():
        torch.testing.assert_close(twin.features(batch()).stages[-1], m.features(batch()).stages[-1])
    assert m.net.conv1.in_channels == 3


def test_torchvision_squeeze_excitation_net_stages() -> None:
    # MobileNetV3-Small (Howard et al. 2019, table 2) on 32x32: stem /2 (dropped), bneck s2 16ch
    # at 8, 24ch at 4, 40/48ch at 2, 96ch + 576 conv at 1. SE's 1x1 pooling is not a stage.
    m = M.build("tv:mobilenet_v3_small", num_classes=5)
    infos, _ = M.describe(m, torch.zeros(3, 32, 32))
    assert [(i.channels, i.height) for i in infos] == [(16, 8), (24, 4), (48, 2), (576, 1)]


def test_torchvision_explicit_stages_and_errors() -> None:
    cfg = ModelConfig(name=TV, params={"stage_modules": ["layer3", "layer4"]})
    m = M.build(cfg, num_classes=4)
    assert [i.channels for i in M.describe(m, torch.zeros(3, 32, 32))[0]] == [256, 512]
    with pytest.raises(ConfigError, match=r"teacher\.model\.name: .*'resnet19'.*tv:resnet18"):
        M.build("tv:resnet19", num_classes=4, path="teacher.model")
    bad = ModelConfig(name=TV, params={"weights": "NOPE"})
    with pytest.raises(ConfigError, match=r"teacher\.model\.params\.weights: .*IMAGENET1K_V1"):
        M.check(bad, "teacher.model")  # validated without building or downloading


# ----------------------------------------------------------------------------- names and params


def test_unknown_name_lists_allowed_names() -> None:
    with pytest.raises(UnknownNameError) as e:
        M.build("resnet9", num_classes=10, path="students[0].model")
    assert str(e.value).startswith("students[0].model.name: unknown model 'resnet9'")
    for n in BUILTINS + ["resnet110", "tv:NAME"]:
        assert n in e.value.allowed
    kd_zoo = ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "shufflenetv1", "shufflenetv2", "resnet50",
              "mobilenetv2_kd"]  # tests/test_models_kd_zoo.py
    assert set(BUILTINS + kd_zoo + ["resnet110", "tv:NAME", "r2plus1d_tiny", "frame_cnn"]) == set(M.list_models())


def test_bad_params_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"students\[1\]\.model\.params\.width"):
        M.build(ModelConfig(name="mobilenetv2", params={"width": 1.0}), 10, path="students[1].model")
    with pytest.raises(ConfigError, match=r"teacher\.model\.params\.drop_rate"):
        M.build(ModelConfig(name="wrn-16-2", params={"drop_rate": 2}), 10, path="teacher.model")
    m = M.build(ModelConfig(name="mobilenetv2", params={"width_mult": 1.0}), 10)
    assert M.describe(m, torch.zeros(3, 32, 32))[0][-1].channels == 320


# ----------------------------------------------------------------------------- user factories

USER_MODULE = '''
from torch import nn
from xkd.models.cifar_resnet import CifarResNet


def tiny(num_classes=10, width=8):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


def seven():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7))


def feature_model(num_classes):
    return CifarResNet(8, num_classes=num_classes)


NOT_CALLABLE = 3


def not_a_module():
    return 3
'''


@pytest.fixture
def user_mod(tmp_path, monkeypatch):
    name = "xkd_test_user_models"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    yield name
    sys.modules.pop(name, None)


def test_factory_wraps_plain_module(user_mod: str) -> None:
    cfg = ModelConfig(factory=f"{user_mod}:tiny", params={"width": 4})
    m = M.build(cfg, num_classes=6, path="teacher.model").eval()
    assert isinstance(m, HookedFeatureModel)
    assert m.stage_layers() == [m.net[2], m.net[4]]
    infos, pooled = M.describe(m, torch.zeros(3, 32, 32))
    assert [(i.channels, i.height) for i in infos] == [(4, 32), (8, 16)] and pooled == 8
    x = batch()
    with torch.no_grad():
        f = m.features(x)
        torch.testing.assert_close(f.pooled, f.stages[-1].mean(dim=(2, 3)))
        torch.testing.assert_close(f.logits, m.net(x))
    assert f.logits.shape == (2, 6)
    cam = LayerGradCam(m, m.stage_layers()[-1]).attribute(x, target=0, relu_attributions=False)
    torch.testing.assert_close(cam, _manual_gradcam(m, x, torch.zeros(2, dtype=torch.long)))


def test_single_resolution_net_has_one_stage() -> None:
    from xkd.models.hooked import wrap

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    m = wrap(net, in_channels=3, image_size=16)
    assert m.stage_layers() == [net[3]] and m.pooled_name == "6"


def test_factory_feature_model_is_used_as_is(user_mod: str) -> None:
    m = M.build(ModelConfig(factory=f"{user_mod}:feature_model"), num_classes=3)
    assert type(m).__name__ == "CifarResNet" and m.fc.out_features == 3


@pytest.mark.parametrize("layout", ["plain", "model", "state_dict", "ddp"])
def test_factory_loads_checkpoint(user_mod: str, tmp_path, layout: str) -> None:
    src = sys.modules.get(user_mod) or __import__(user_mod)
    torch.manual_seed(123)
    ref = src.tiny(num_classes=6, width=4)
    sd = ref.state_dict()
    obj = {"plain": sd, "model": {"model": sd, "epoch": 3}, "state_dict": {"state_dict": sd},
           "ddp": {f"module.{k}": v for k, v in sd.items()}}[layout]
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    cfg = ModelConfig(factory=f"{user_mod}:tiny", params={"width": 4}, checkpoint=str(path))
    m = M.build(cfg, num_classes=6, path="teacher.model").eval()
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref.eval()(x))


def test_checkpoint_mismatch_lists_keys(user_mod: str, tmp_path) -> None:
    src = __import__(user_mod)
    sd = src.tiny(num_classes=6, width=4).state_dict()
    sd.pop("0.weight")
    sd["extra.bias"] = torch.zeros(2)
    torch.save(sd, tmp_path / "bad.pt")
    cfg = ModelConfig(factory=f"{user_mod}:tiny", params={"width": 4}, checkpoint=str(tmp_path / "bad.pt"))
    with pytest.raises(ConfigError, match=r"teacher\.model\.checkpoint: .*missing keys \(1\): 0\.weight.*unexpected keys \(1\): extra\.bias"):
        M.build(cfg, num_classes=6, path="teacher.model")
    torch.save(src.tiny(num_classes=6, width=8).state_dict(), tmp_path / "wide.pt")
    cfg = ModelConfig(factory=f"{user_mod}:tiny", params={"width": 4}, checkpoint=str(tmp_path / "wide.pt"))
    with pytest.raises(ConfigError, match=r"checkpoint shapes do not match.*0\.weight \(8, 3, 3, 3\) vs \(4, 3, 3, 3\)"):
        M.build(cfg, num_classes=6, path="teacher.model")
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pt")
    cfg = ModelConfig(factory=f"{user_mod}:tiny", checkpoint=str(tmp_path / "odd.pt"))
    with pytest.raises(ConfigError, match="state_dict"):
        M.build(cfg, num_classes=10, path="teacher.model")


def test_builtin_checkpoint_round_trip(tmp_path) -> None:
    a = model("resnet8")
    torch.save({"model": a.state_dict()}, tmp_path / "r8.pt")
    torch.manual_seed(5)
    b = M.build(ModelConfig(name="resnet8", checkpoint=str(tmp_path / "r8.pt")), num_classes=10).eval()
    with torch.no_grad():
        torch.testing.assert_close(a(batch()), b(batch()))


@pytest.mark.parametrize("spec,match", [
    ("xkd_no_such_module_zz:make", r"students\[2\]\.model\.factory: cannot import module 'xkd_no_such_module_zz'"),
    ("{mod}:missing", r"students\[2\]\.model\.factory: module '.*' has no attribute 'missing'"),
    ("{mod}:NOT_CALLABLE", r"students\[2\]\.model\.factory: .*not a callable"),
    ("{mod}:not_a_module", r"students\[2\]\.model\.factory: .*returned int, not a torch\.nn\.Module"),
    ("{mod}:seven", r"students\[2\]\.model\.factory: .*outputs 7 logits but the data has 10 classes"),
])
def test_factory_errors_name_the_field(user_mod: str, spec: str, match: str) -> None:
    cfg = ModelConfig(factory=spec.format(mod=user_mod))
    with pytest.raises(ConfigError, match=match):
        M.build(cfg, num_classes=10, path="students[2].model")


def test_check_validates_without_building(user_mod: str, tmp_path) -> None:
    M.check(ModelConfig(factory=f"{user_mod}:tiny"), "teacher.model")
    with pytest.raises(ConfigError, match=r"teacher\.model\.factory: cannot import"):
        M.check(ModelConfig(factory="xkd_no_such_module_zz:f"), "teacher.model")
    with pytest.raises(ConfigError, match=r"students\[0\]\.model\.checkpoint: file not found"):
        M.check(ModelConfig(name="resnet8", checkpoint=str(tmp_path / "none.pt")), "students[0].model")
    with pytest.raises(UnknownNameError):
        M.check("wrn-16-3")


def test_factory_bad_params_name_params_field(user_mod: str) -> None:
    cfg = ModelConfig(factory=f"{user_mod}:tiny", params={"depth": 3})
    with pytest.raises(ConfigError, match=r"teacher\.model\.params: cannot call"):
        M.build(cfg, num_classes=10, path="teacher.model")
