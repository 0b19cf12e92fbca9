"""Shared fixtures: small models and a hand-built block whose decisions we can dictate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adafuse_plugin as af


class TinyBlock(nn.Module):
    """A minimal residual block: x + conv2(act1(conv1(x)))."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act1(self.conv1(x)))


af.register_block_adapter(
    TinyBlock, first_stage="act1", first_conv="conv1", second_conv="conv2", overwrite=True
)


def force_decisions(gate: af.AdaFuseGate, actions: list[int]) -> None:
    """Make a learned gate choose ``actions[group]`` for every frame (in eval mode)."""
    net = gate.policy_net
    with torch.no_grad():
        net.fc2.weight.zero_()
        bias = torch.zeros(len(actions), 3)
        bias[torch.arange(len(actions)), torch.tensor(actions)] = 10.0
        net.fc2.bias.copy_(bias.flatten())


def always_choose(mode: str):
    """A `_ModeTimer.choose` that picks ``mode`` whenever it is allowed (forces a path)."""

    def choose(self, modes, selected):
        assert mode in modes, modes
        return mode

    return choose


def randomize_norms(model: nn.Module) -> nn.Module:
    """Give every norm layer random affine weights and running stats.

    timm zero-initialises the last norm of each residual branch, which makes the branch
    (and so anything AdaFuse does to it) invisible in the output: tests would pass
    vacuously. This makes every branch count.
    """
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.affine:
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                if module.running_var is not None:
                    module.running_mean.normal_(0.0, 0.1, generator=generator)
                    module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on 2-core machines a second thread only adds
    oversubscription with small tensors and data pipelines (several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(TinyBlock(4), TinyBlock(4))


@pytest.fixture
def resnet18() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return randomize_norms(timm.create_model("resnet18", num_classes=5))


@pytest.fixture
def spread_resnet18():
    """Builds a patched timm ResNet-18 (5 classes, random BatchNorm statistics) whose
    policies take every action (fc2 weights drawn wide): ``spread_resnet18(num_segments)``."""
    timm = pytest.importorskip("timm")

    def build(num_segments: int) -> nn.Module:
        torch.manual_seed(0)
        net = randomize_norms(timm.create_model("resnet18", num_classes=5))
        af.patch_model(net, num_segments=num_segments)
        for _, gate in af.iter_gates(net):
            nn.init.normal_(gate.policy_net.fc2.weight, 0.0, 0.5)
        return net

    return build
