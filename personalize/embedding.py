"""Embeddings that carry 3D scans into a neural posterior estimator (sbi's ``embedding_net`` hook).

sbi ships 1D/2D CNN embeddings only; these take scans stacked as channels ``[N, C, X, Y, Z]`` on any grid
(the working box differs from patient to patient) and return a fixed-length feature vector:

- ``"cnn"`` (:class:`VolumeCNN`): three 3×3×3 convolution blocks with ReLU and 2× max pooling, an adaptive
  average pool to 2³ and a linear layer, trained jointly with the density estimator (as Ezhov et al.'s
  learnable summary of the tumour scans, and Lueckmann et al. 2021's learned summaries in sbi);
- ``"pooled"`` (:func:`pooled_features`): a fixed reduction applied to the scans before sbi sees them,
  the adaptive average of each channel over a ``4³`` grid of blocks (sbi's MLP then reads those features).

Both are deterministic functions of the scans. ``personalize fit --method npe`` uses ``"pooled"`` by default:
the CNN's training cost on this 2-core CPU was measured prohibitive (docs/npe.md); its accuracy is not yet
measured against the pooled features.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

EMBEDDINGS = ("cnn", "pooled")


class VolumeCNN(nn.Module):
    """Conv3d feature extractor: ``[N, C, X, Y, Z]`` → ``[N, features]``.

    Args:
        channels: scans per observation.
        width: channels of the first convolution (doubled after each pooling).
        features: length of the output vector.
    """

    def __init__(self, channels: int, width: int = 8, features: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        inputs = channels
        for block in range(3):
            outputs = width * 2**block
            layers += [nn.Conv3d(inputs, outputs, 3, padding=1), nn.ReLU()]
            if block < 2:
                layers.append(nn.MaxPool3d(2, ceil_mode=True))
            inputs = outputs
        layers += [nn.AdaptiveAvgPool3d(2), nn.Flatten(), nn.Linear(inputs * 8, features), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


POOLED_BLOCKS = 4


def pooled_features(x: torch.Tensor, blocks: int = POOLED_BLOCKS) -> torch.Tensor:
    """``[N, C, X, Y, Z]`` → ``[N, C·blocks³]``: each channel's mean over ``blocks³`` blocks."""
    return functional.adaptive_avg_pool3d(x, blocks).flatten(start_dim=1)


def network_input(kind: str, x: torch.Tensor) -> torch.Tensor:
    """What the estimator is trained on for the embedding ``kind``: the volumes for ``"cnn"``, their block
    averages for ``"pooled"``."""
    check_embedding(kind)
    return x if kind == "cnn" else pooled_features(x)


def check_embedding(kind: str) -> None:
    if kind not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {kind!r}")


def embedding_net(kind: str, channels: int, *, seed: int = 0) -> nn.Module:
    """The network in front of the estimator for the embedding ``kind``: a :class:`VolumeCNN` for ``channels``
    scans with weights drawn from ``seed``, or the identity for ``"pooled"``."""
    check_embedding(kind)
    if kind == "pooled":
        return nn.Identity()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return VolumeCNN(channels)
