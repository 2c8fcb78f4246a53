"""The 32x32 CIFAR networks defined here: ResNet-20/32/56 (option-A shortcuts), VGG-19-BN, DenseNet-40.

Plain ``nn.Module`` definitions only; `tdexport.zoo.registry` gives them their zoo names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelPadShortcut", "CifarDenseNet", "CifarResNet", "CifarVGG"]


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _kaiming_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ChannelPadShortcut(nn.Module):
    """Parameter-free "option A" shortcut ``(N, C, H, W) -> (N, C + 2 * pad, ceil(H/2), ceil(W/2))``.

    Subsamples H and W by 2 and zero-pads channels on both sides; a module, not a lambda, so that it
    pickles and exports to ONNX (as Slice + Pad).
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample and pad ``x`` of shape ``(N, C, H, W)``."""
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        same = stride == 1 and c_in == c_out
        self.shortcut: nn.Module = nn.Identity() if same else ChannelPadShortcut((c_out - c_in) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet of depth ``6n + 2``: ``(N, 3, 32, 32) -> (N, num_classes)``.

    Args:
        blocks_per_stage: ``n``, BasicBlocks in each of the three stages (16, 32, 64 channels).
        num_classes: size of the final linear layer.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        stages, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(_BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x`` of shape ``(N, 3, H, W)`` into logits of shape ``(N, num_classes)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


_VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip


class CifarVGG(nn.Module):
    """VGG-19 with BatchNorm for 32x32 input: ``(N, 3, 32, 32) -> (N, num_classes)``.

    Five max-pools bring 32x32 to 1x1, so the classifier is a single ``Linear(512, num_classes)``.
    """

    def __init__(self, num_classes: int = 10, cfg: tuple[int | str, ...] = _VGG19_CFG) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [_conv3x3(c_in, int(v)), nn.BatchNorm2d(int(v)), nn.ReLU()]
                c_in = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x`` of shape ``(N, 3, 32, 32)`` into logits of shape ``(N, num_classes)``."""
        return self.classifier(torch.flatten(self.features(x), 1))


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 whose ``growth`` output channels are concatenated to its input."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = _conv3x3(c_in, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


def _transition(c: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 1, bias=False), nn.AvgPool2d(2))


class CifarDenseNet(nn.Module):
    """DenseNet (non-BC, no compression) for CIFAR: ``(N, 3, 32, 32) -> (N, num_classes)``.

    Args:
        depth: ``3 * layers_per_block + 4``; 40 gives 12 layers per block.
        growth: channels each dense layer adds.
        num_classes: size of the final linear layer.
    """

    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10) -> None:
        super().__init__()
        n_layers = (depth - 4) // 3
        channels = 16
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(n_layers):
                layers.append(_DenseLayer(channels, growth))
                channels += growth
            if block < 2:
                layers.append(_transition(channels))
        layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x`` of shape ``(N, 3, 32, 32)`` into logits of shape ``(N, num_classes)``."""
        return self.classifier(torch.flatten(self.features(x), 1))
