"""The CIFAR-100 KD literature's architectures (issue 16): VGG-BN 8/11/13/16/19, ShuffleNet V1/V2,
the bottleneck ResNet-50 and the KD literature's MobileNetV2 (``mobilenetv2_kd``).

References, independent of the code under test:
* stage widths and sizes: ReviewKD's ``build_review_kd`` (official CIFAR-100 code; seed_methods.md
  1.6): VGG8 student 128, 256, 512, 512 + 512 at 16, 16->8, 4, 4; MobileNetV2 12, 16, 48, 160 + 1280
  at 16, 8, 4, 2; ShuffleV1 240, 480, 960 + 960 and ShuffleV2 116, 232, 464 + 1024 at 16, 8, 4;
  ResNet50 teacher 256, 512, 1024, 2048 + 2048 at 32, 16, 8, 4.
* parameter counts (CIFAR-100 heads) as quoted in the CIFAR-100 KD papers' model-size tables:
  VGG8 3.96M, VGG13 9.46M, ShuffleNetV1 0.95M, ShuffleNetV2 1.36M, MobileNetV2 0.81M, ResNet50
  23.71M; VGG8 and ResNet50 are also recomputed here by hand from the layer tables.
* one ReviewKD step per published pair, with the ABF widths of ReviewKD's code for that pair.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xkd.models as M
from xkd.distill import DistillContext, build_distiller

NEW = ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "shufflenetv1", "shufflenetv2", "resnet50",
       "mobilenetv2_kd"]
VGG_SHAPES = ([128, 256, 512, 512], [16, 8, 4, 4], 512)
EXPECTED: dict[str, tuple[list[int], list[int], int]] = {
    **{n: VGG_SHAPES for n in NEW if n.startswith("vgg")},
    "shufflenetv1": ([240, 480, 960], [16, 8, 4], 960),
    "shufflenetv2": ([116, 232, 464], [16, 8, 4], 1024),
    "resnet50": ([256, 512, 1024, 2048], [32, 16, 8, 4], 2048),
    "mobilenetv2_kd": ([12, 16, 48, 160], [16, 8, 4, 2], 1280),
}
_CACHE: dict[str, M.FeatureModel] = {}



def model(name: str, classes: int = 100) -> M.FeatureModel:
    key = f"{name}/{classes}"
    if key not in _CACHE:
        torch.manual_seed(0)
        _CACHE[key] = M.build(name, num_classes=classes)
    return _CACHE[key]


def batch(b: int = 2, s: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def n_params(m: nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


@pytest.mark.parametrize("name", NEW)
def test_stage_shapes_match_reviewkd(name: str) -> None:
    m = model(name)
    m.train()
    infos, pooled = M.describe(m, torch.zeros(3, 32, 32))
    assert m.training
    chans, sizes, width = EXPECTED[name]
    assert [(i.channels, i.height, i.width) for i in infos] == [(c, s, s) for c, s in zip(chans, sizes)]
    assert pooled == width


@pytest.mark.parametrize("name,millions", [
    ("vgg8", 3.96), ("vgg13", 9.46), ("shufflenetv1", 0.95), ("shufflenetv2", 1.36),
    ("mobilenetv2_kd", 0.81), ("resnet50", 23.71),
])
def test_parameter_counts_match_literature(name: str, millions: float) -> None:
    assert abs(n_params(model(name)) - millions) < 0.01, (name, n_params(model(name)))


def test_parameter_counts_by_hand() -> None:
    def conv(cin, cout, k, bias=False):
        return k * k * cin * cout + (cout if bias else 0)

    def bn(c):
        return 2 * c

    # VGG8: five 3x3 conv (bias) + BN layers 3-64-128-256-512-512, linear 512 -> 100
    widths = [3, 64, 128, 256, 512, 512]
    vgg8 = sum(conv(a, b, 3, True) + bn(b) for a, b in zip(widths, widths[1:])) + 512 * 100 + 100
    assert sum(p.numel() for p in model("vgg8").parameters()) == vgg8
    # ResNet-50 (He et al. table 1 bottlenecks 3-4-6-3) with a 3x3 64-channel stem, linear 2048 -> 100
    total, cin = conv(3, 64, 3) + bn(64), 64
    for planes, n in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for i in range(n):
            total += conv(cin, planes, 1) + bn(planes) + conv(planes, planes, 3) + bn(planes)
            total += conv(planes, 4 * planes, 1) + bn(4 * planes)
            if i == 0:
                total += conv(cin, 4 * planes, 1) + bn(4 * planes)
            cin = 4 * planes
    total += 2048 * 100 + 100
    assert sum(p.numel() for p in model("resnet50").parameters()) == total


@pytest.mark.parametrize("name", NEW)
def test_features_preact_and_stage_layers(name: str) -> None:
    m = model(name).eval()
    seen: dict[int, list[torch.Tensor]] = {}
    handles = [layer.register_forward_hook(lambda mod, i, o, k=k: seen.setdefault(k, []).append(o))
               for k, layer in enumerate(m.stage_layers())]
    x = batch()
    try:
        with torch.no_grad():
            out = m(x)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        f = m.features(x)
    torch.testing.assert_close(out, f.logits, rtol=0, atol=0)
    assert len(f.stages) == len(f.preact) == len(seen)
    for k, s in enumerate(f.stages):
        assert len(seen[k]) == 1
        torch.testing.assert_close(seen[k][0], s, rtol=0, atol=0)
    if m.preact_relation == "relu":
        for s, p in zip(f.stages, f.preact):
            assert (p < 0).any()
            torch.testing.assert_close(s, torch.relu(p), rtol=0, atol=0)
    else:
        assert all(p is s for s, p in zip(f.stages, f.preact))
    assert m.preact_relation == ("identity" if name == "mobilenetv2_kd" else "relu")


def test_every_relu_is_a_distinct_module_called_once() -> None:
    for name in NEW:
        m = model(name).eval()
        relus = [mod for mod in m.modules() if isinstance(mod, nn.ReLU)]
        calls: dict[int, int] = {}
        hs = [r.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1))
              for r in relus]
        with torch.no_grad():
            m(batch(1))
        for h in hs:
            h.remove()
        assert set(calls.values()) == {1} and len(calls) == len(relus), name


def test_vgg_pools_before_block4_only_on_larger_inputs() -> None:
    m = model("vgg8").eval()
    sizes = [i.height for i in M.describe(m, torch.zeros(3, 64, 64))[0]]
    assert sizes == [32, 16, 8, 4]  # the reference's 64 px behaviour
    assert [i.height for i in M.describe(m, torch.zeros(3, 32, 32))[0]] == [16, 8, 4, 4]


def test_shufflenet_channel_shuffle_is_the_papers_transpose() -> None:
    from xkd.models.shufflenetv1 import channel_shuffle

    x = torch.arange(6.0).view(1, 6, 1, 1)  # groups of 2: [0 1 2 | 3 4 5] -> [0 3 1 4 2 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_bad_shufflenet_groups_is_a_config_error() -> None:
    from xkd.config import ModelConfig
    from xkd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"students\[0\]\.model\.params: groups=7"):
        M.build(ModelConfig(name="shufflenetv1", params={"groups": 7}), 10, path="students[0].model")


# ReviewKD's CIFAR-100 pairs with these models: (teacher, student, student in_channels, teacher
# out_channels) of build_review_kd, shallow -> deep, the last entry being the pooled vector.
PAIRS = [
    ("vgg13", "vgg8", [128, 256, 512, 512, 512], [128, 256, 512, 512, 512]),
    ("vgg13", "mobilenetv2_kd", [12, 16, 48, 160, 1280], [128, 256, 512, 512, 512]),
    ("resnet50", "mobilenetv2_kd", [12, 16, 48, 160, 1280], [256, 512, 1024, 2048, 2048]),
    ("resnet50", "vgg8", [128, 256, 512, 512, 512], [256, 512, 1024, 2048, 2048]),
    ("resnet32x4", "shufflenetv1", [240, 480, 960, 960], [64, 128, 256, 256]),
    ("resnet32x4", "shufflenetv2", [116, 232, 464, 1024], [64, 128, 256, 256]),
    ("wrn-40-2", "shufflenetv1", [240, 480, 960, 960], [32, 64, 128, 128]),
    ("vgg19", "vgg11", [128, 256, 512, 512, 512], [128, 256, 512, 512, 512]),
    ("vgg16", "vgg8", [128, 256, 512, 512, 512], [128, 256, 512, 512, 512]),
]


@pytest.mark.parametrize("teacher_name,student_name,s_in,t_out", PAIRS)
def test_one_reviewkd_step_per_pair(teacher_name: str, student_name: str, s_in: list[int],
                                    t_out: list[int]) -> None:
    teacher, student = model(teacher_name, 10).eval(), model(student_name, 10)
    ctx = DistillContext(example=torch.randn(1, 3, 32, 32), num_classes=10)
    d = build_distiller("reviewkd", student, teacher, {"review_weight": 5.0, "warmup_epochs": 0}, ctx)
    assert [a.lateral[0].in_channels for a in d.abfs] == s_in
    assert [a.output[0].out_channels for a in d.abfs] == t_out
    d.train()
    b = {"image": batch(2), "label": torch.tensor([1, 7])}
    params = [p for p in d.trainable_modules().parameters()]
    out = d(b, 3)
    loss = sum(out.losses.values())
    assert torch.isfinite(loss) and out.losses["review"] > 0
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    assert len(grads) > len(list(student.parameters())) // 2 and all(torch.isfinite(g).all() for g in grads)
    for p in params:
        p.grad = None
