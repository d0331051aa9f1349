"""The inverse network of Learn-Morph-Infer: a 3D ResNet from the tumour input to (μ₁, μ₂, x, y, z).

Ezhov et al., Medical Image Analysis 83:102672 (2023), arXiv:2111.04090, regress the growth parameters and
the seed from one input volume (:mod:`personalize.lmi.inputs`) with a 3D residual network (He et al., "Deep
residual learning for image recognition", CVPR 2016). Here:

    strided stem  Conv3d(1 → c₀, 7³, stride 2) · norm · ReLU
    stage k       blocks_per_stage basic residual blocks of c_k channels; the first block of every stage
                  after the first halves the grid (stride-2 convolution, with a strided 1³ projection on
                  its shortcut)
    head          global average pooling · Linear(c_last → 5) · tanh

A basic block is conv 3³ · norm · ReLU · conv 3³ · norm, added to its shortcut, then ReLU. The head ends in
tanh, not a clamp: the outputs lie in (−1, 1), the range of the scaled targets (:mod:`personalize.lmi.parameters`),
and tanh passes a gradient everywhere, where a clamp gives none once an output leaves the range.

Differences from LMI's published network (``torchcode/network.py``): that one keeps 64 channels in every stage,
uses four convolutions per block without normalisation, downsamples by max pooling, and has a linear head
(its tanh is commented out). Normalisation here is GroupNorm by default: it does not depend on the batch, so
the small batches a CPU run affords train as the large ones of a GPU run do; BatchNorm is an option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from personalize.lmi.parameters import OUTPUT_NAMES

NORMS = ("group", "batch")
STEM_KERNEL = 7
GROUPS = 8
"""Groups of GroupNorm (fewer where a layer has fewer channels: the greatest common divisor)."""


@dataclass(frozen=True)
class NetworkConfig:
    """Width and depth of :class:`InverseNetwork`.

    Attributes:
        channels: channels of each stage (its length is the number of stages; every stage after the first
            halves the grid).
        blocks_per_stage: residual blocks in each stage.
        norm: ``"group"`` (GroupNorm) or ``"batch"`` (BatchNorm3d).
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    blocks_per_stage: int = 1
    norm: str = "group"

    def __post_init__(self) -> None:
        channels = tuple(self.channels)
        if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive integers, got {self.channels!r}")
        object.__setattr__(self, "channels", channels)
        if isinstance(self.blocks_per_stage, bool) or not isinstance(self.blocks_per_stage, int) \
                or self.blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be a positive integer, got {self.blocks_per_stage!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")


class ResidualBlock(nn.Module):
    """Basic residual block (He et al. 2016) of 3³ convolutions; ``stride`` 2 halves the grid."""

    def __init__(self, inputs: int, outputs: int, stride: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(inputs, outputs, 3, stride=stride, padding=1, bias=False), _norm(norm, outputs), nn.ReLU(),
            nn.Conv3d(outputs, outputs, 3, padding=1, bias=False), _norm(norm, outputs))
        self.shortcut = nn.Identity() if stride == 1 and inputs == outputs else nn.Sequential(
            nn.Conv3d(inputs, outputs, 1, stride=stride, bias=False), _norm(norm, outputs))
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


class InverseNetwork(nn.Module):
    """``[N, 1, X, Y, Z]`` input volumes → ``[N, 5]`` scaled (μ₁, μ₂, x, y, z) in (−1, 1); any grid size."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        first = config.channels[0]
        self.stem = nn.Sequential(
            nn.Conv3d(1, first, STEM_KERNEL, stride=2, padding=STEM_KERNEL // 2, bias=False),
            _norm(config.norm, first), nn.ReLU())
        blocks: list[nn.Module] = []
        inputs = first
        for stage, outputs in enumerate(config.channels):
            for block in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(ResidualBlock(inputs, outputs, stride, config.norm))
                inputs = outputs
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(inputs, len(OUTPUT_NAMES)),
                                  nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected input volumes [N, 1, X, Y, Z], got shape {tuple(x.shape)}")
        return self.head(self.stages(self.stem(x)))


def build_network(config: NetworkConfig, *, seed: int, device: torch.device | str = "cpu") -> InverseNetwork:
    """A new :class:`InverseNetwork` with weights initialised from ``seed`` (torch's default initialisation;
    the global random state is left as it was), on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = InverseNetwork(config)
    return network.to(device)


def parameter_count(network: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


def predict(network: nn.Module, inputs: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """Scaled outputs ``[N, 5]`` (CPU, float32) of ``inputs`` ``[N, 1, X, Y, Z]`` in evaluation mode, in batches
    on the network's device."""
    device = next(network.parameters()).device
    network.eval()
    with torch.inference_mode():
        return torch.cat([network(inputs[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(inputs), batch_size)])


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.GroupNorm(math.gcd(GROUPS, channels), channels)
