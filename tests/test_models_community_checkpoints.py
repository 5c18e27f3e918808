"""Standard CIFAR-100 teachers (issue 16 item 3): checkpoints written by the KD literature's reference
code (CRD / RepDistiller, reused by ReviewKD and mdistiller) load into xkd's models.

The community files are written here, by the test: ``{"epoch", "model": state_dict, "best_acc",
"optimizer"}`` whose key names come from ``community_keys`` below, a small re-statement of the
reference code's *naming only* (module attribute names and ``nn.Sequential`` indices per block),
written independently of xkd's mapping. The tensors are those of an xkd model with randomised
BatchNorm statistics, paired in registration order (shapes are checked), so loading the file into a
fresh model must give identical logits.
"""

from __future__ import annotations

import pytest
import torch

import xkd.models as M
from xkd.config import ModelConfig
from xkd.errors import ConfigError

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def bn(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in BN]


def cifar_resnet_keys(depth: int, filters: list[int]) -> list[str]:
    """RepDistiller resnet.py: conv1/bn1, layerL.i.{conv1,bn1,conv2,bn2,downsample.0/1}, fc."""
    n, keys, cin = (depth - 2) // 6, ["conv1.weight", *bn("bn1")], filters[0]
    for layer, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2)), start=1):
        for i in range(n):
            p = f"layer{layer}.{i}"
            keys += [f"{p}.conv1.weight", *bn(f"{p}.bn1"), f"{p}.conv2.weight", *bn(f"{p}.bn2")]
            if i == 0 and (stride != 1 or cin != planes):
                keys += [f"{p}.downsample.0.weight", *bn(f"{p}.downsample.1")]
            cin = planes
    return keys + ["fc.weight", "fc.bias"]


def wrn_keys(depth: int, widen: int) -> list[str]:
    """RepDistiller wrn.py: conv1, blockG.layer.i.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc."""
    n, keys = (depth - 4) // 6, ["conv1.weight"]
    chans = [16, 16 * widen, 32 * widen, 64 * widen]
    for g in range(1, 4):
        for i in range(n):
            p = f"block{g}.layer.{i}"
            keys += [*bn(f"{p}.bn1"), f"{p}.conv1.weight", *bn(f"{p}.bn2"), f"{p}.conv2.weight"]
            if i == 0 and chans[g - 1] != chans[g]:
                keys.append(f"{p}.convShortcut.weight")
    return keys + bn("bn1") + ["fc.weight", "fc.bias"]


def vgg_keys(convs: list[int]) -> list[str]:
    """RepDistiller vgg.py (batch_norm=True): blockB = Sequential(conv, bn, relu, conv, bn, ...)."""
    keys: list[str] = []
    for b, n in enumerate(convs):
        for j in range(n):
            keys += [f"block{b}.{3 * j}.weight", f"block{b}.{3 * j}.bias", *bn(f"block{b}.{3 * j + 1}")]
    return keys + ["classifier.weight", "classifier.bias"]


def shufflev1_keys(blocks: list[int]) -> list[str]:
    keys = ["conv1.weight", *bn("bn1")]
    for layer, n in enumerate(blocks, start=1):
        for i in range(n):
            p = f"layer{layer}.{i}"
            for c in (1, 2, 3):
                keys += [f"{p}.conv{c}.weight", *bn(f"{p}.bn{c}")]
    return keys + ["linear.weight", "linear.bias"]


def shufflev2_keys(blocks: list[int]) -> list[str]:
    keys = ["conv1.weight", *bn("bn1")]
    for layer, n in enumerate(blocks, start=1):
        for i in range(n + 1):  # DownBlock (5 convs) then n BasicBlocks (3 convs)
            p = f"layer{layer}.{i}"
            for c in range(1, 6 if i == 0 else 4):
                keys += [f"{p}.conv{c}.weight", *bn(f"{p}.bn{c}")]
    return keys + ["conv2.weight", *bn("bn2"), "linear.weight", "linear.bias"]


def resnet50_keys() -> list[str]:
    """RepDistiller resnetv2.py ResNet(Bottleneck, [3, 4, 6, 3]): shortcut.0/1 projections, linear."""
    keys = ["conv1.weight", *bn("bn1")]
    for layer, n in enumerate((3, 4, 6, 3), start=1):
        for i in range(n):
            p = f"layer{layer}.{i}"
            for c in (1, 2, 3):
                keys += [f"{p}.conv{c}.weight", *bn(f"{p}.bn{c}")]
            if i == 0:
                keys += [f"{p}.shortcut.0.weight", *bn(f"{p}.shortcut.1")]
    return keys + ["linear.weight", "linear.bias"]


def mobile_half_keys() -> list[str]:
    """RepDistiller mobilenetv2.py: conv1 = Sequential(conv, bn, relu); blocks.S.i.conv = 8 layers."""
    keys = ["conv1.0.weight", *bn("conv1.1")]
    for s, n in enumerate((1, 2, 3, 4, 3, 3, 1)):
        for i in range(n):
            for c in (0, 3, 6):
                keys += [f"blocks.{s}.{i}.conv.{c}.weight", *bn(f"blocks.{s}.{i}.conv.{c + 1}")]
    return keys + ["conv2.0.weight", *bn("conv2.1"), "classifier.0.weight", "classifier.0.bias"]


CASES = {
    "resnet8x4": lambda: cifar_resnet_keys(8, [32, 64, 128, 256]),
    "resnet20": lambda: cifar_resnet_keys(20, [16, 16, 32, 64]),
    "resnet32x4": lambda: cifar_resnet_keys(32, [32, 64, 128, 256]),
    "wrn-40-1": lambda: wrn_keys(40, 1),
    "wrn-16-2": lambda: wrn_keys(16, 2),
    "vgg8": lambda: vgg_keys([1, 1, 1, 1, 1]),
    "vgg13": lambda: vgg_keys([2, 2, 2, 2, 2]),
    "shufflenetv1": lambda: shufflev1_keys([4, 8, 4]),
    "shufflenetv2": lambda: shufflev2_keys([3, 7, 3]),
    "resnet50": resnet50_keys,
    "mobilenetv2_kd": mobile_half_keys,
}



def trained_like(name: str, seed: int = 3) -> M.FeatureModel:
    """An xkd model with non-trivial BN statistics (so buffers must be mapped too)."""
    torch.manual_seed(seed)
    m = M.build(name, num_classes=100)
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(1.0 + torch.rand(mod.num_features, generator=g))
            mod.weight.data.copy_(1.0 + 0.1 * torch.randn(mod.num_features, generator=g))
    return m.eval()


def community_file(name: str, path, drop_tracked: bool = False) -> M.FeatureModel:
    """Write ``name``'s weights under the community key names in the CRD format; return the source."""
    src = trained_like(name)
    ours = src.state_dict()
    keys = CASES[name]()
    assert len(keys) == len(ours), (len(keys), len(ours))
    sd = {}
    for k, (our_key, v) in zip(keys, ours.items()):
        assert k.rsplit(".", 1)[1] == our_key.rsplit(".", 1)[1], (k, our_key)
        sd[k] = v.clone()
    if drop_tracked:  # files from PyTorch < 0.4.1 have no num_batches_tracked buffers
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save({"epoch": 240, "model": sd, "best_acc": torch.tensor(79.42),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005, "params": [0, 1]}]}}, path)
    return src


@pytest.mark.parametrize("name", list(CASES))
def test_community_checkpoint_loads_with_equal_logits(name: str, tmp_path) -> None:
    path = tmp_path / f"{name}_vanilla.pth"
    src = community_file(name, path)
    cfg = ModelConfig(name=name, checkpoint=str(path))
    m = M.build(cfg, num_classes=100, path="teacher.model").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(m(x), src(x), rtol=0, atol=0)
        torch.testing.assert_close(m.features(x).preact[-1], src.features(x).preact[-1], rtol=0, atol=0)


def test_new_families_use_the_community_names_as_they_are() -> None:
    for name in ("vgg8", "shufflenetv1", "shufflenetv2", "resnet50", "mobilenetv2_kd"):
        assert list(trained_like(name).state_dict()) == CASES[name](), name


def test_file_without_num_batches_tracked_loads(tmp_path) -> None:
    src = community_file("wrn-16-2", tmp_path / "old.pth", drop_tracked=True)
    m = M.build(ModelConfig(name="wrn-16-2", checkpoint=str(tmp_path / "old.pth")), 100).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), src(x), rtol=0, atol=0)


def test_wrong_architecture_is_one_line_naming_keys_and_counts(tmp_path) -> None:
    community_file("resnet8x4", tmp_path / "r8x4.pth")
    cfg = ModelConfig(name="resnet32x4", checkpoint=str(tmp_path / "r8x4.pth"))
    with pytest.raises(ConfigError) as e:
        M.build(cfg, num_classes=100, path="teacher.model")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("teacher.model.checkpoint: checkpoint does not match")
    # resnet32x4 has 5 blocks per stage, resnet8x4 one: 3 x 4 blocks x (2 convs + 2 BNs x 4) missing
    # (num_batches_tracked buffers may be absent, so they are not listed)
    assert "missing keys (120): layer1.blocks.1.conv1.weight" in msg and "(+115 more)" in msg
    assert "unexpected keys" not in msg
    sd = torch.load(tmp_path / "r8x4.pth", weights_only=True)
    sd["model"]["fc.extra"] = torch.zeros(1)
    del sd["model"]["layer2.0.downsample.0.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    cfg = ModelConfig(name="resnet8x4", checkpoint=str(tmp_path / "bad.pth"))
    with pytest.raises(ConfigError, match=r"missing keys \(1\): layer2\.blocks\.0\.shortcut\.0\.weight; "
                                          r"unexpected keys \(1\): fc\.extra$"):
        M.build(cfg, num_classes=100, path="teacher.model")


def test_wrong_class_count_names_the_shapes(tmp_path) -> None:
    community_file("vgg8", tmp_path / "vgg8.pth")
    cfg = ModelConfig(name="vgg8", checkpoint=str(tmp_path / "vgg8.pth"))
    with pytest.raises(ConfigError, match=r"shapes do not match .*\(2\): classifier\.weight \(100, 512\) "
                                          r"vs \(10, 512\), classifier\.bias"):
        M.build(cfg, num_classes=10, path="teacher.model")
