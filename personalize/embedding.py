"""Embeddings that carry 3D scans into a neural posterior estimator (sbi's ``embedding_net`` hook).

sbi ships 1D/2D CNN embeddings only; these take scans stacked as channels ``[N, C, X, Y, Z]`` on any grid
(the working box differs from patient to patient) and return a fixed-length feature vector:

- ``"cnn"`` (:class:`VolumeCNN`): three 3×3×3 convolution blocks with ReLU and 2× max pooling, an adaptive
  average pool to 2³ and a linear layer, trained jointly with the density estimator (as Ezhov et al.'s
  learnable summary of the tumour scans, and Lueckmann et al. 2021's learned summaries in sbi);
- ``"pooled"`` (:func:`pooled_features`): a fixed reduction applied to the scans before sbi sees them,
  the adaptive average of each channel over a ``4³`` grid of blocks (sbi's MLP then reads those features);
- ``"moments"`` (:func:`moment_features`): a fixed reduction to each channel's image moments (mass, mean
  square, centroid and second central moments; Hu 1962's moment invariants before normalisation), the
  statistics that carry the tumour's extent and position: the volumes above the two thresholds fix μ₁, μ₂
  and the thresholds, the centroids the seed.

All are deterministic functions of the scans. Which one ``personalize fit --method npe`` uses by default, and
why, is measured in docs/npe.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

EMBEDDINGS = ("cnn", "pooled", "moments")


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


def moment_features(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, X, Y, Z]`` → ``[N, 11·C]``: for each channel w ≥ 0 (negative values count as 0), its mean and
    mean square over the box, the centroid c = Σ w·r / Σ w and the second central moments
    Σ w·(r − c)(r − c)ᵀ / Σ w (six: xx, yy, zz, xy, xz, yz), with r in box coordinates spanning [−1, 1] along
    each axis. A channel without mass gets a zero centroid and zero moments."""
    weights = x.clamp(min=0).flatten(start_dim=2)
    axes = [torch.linspace(-1.0, 1.0, n, dtype=x.dtype, device=x.device) if n > 1 else
            torch.zeros(1, dtype=x.dtype, device=x.device) for n in x.shape[2:]]
    r = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(start_dim=1)
    mass = weights.sum(dim=2)
    share = weights / torch.where(mass > 0, mass, torch.ones_like(mass))[..., None]
    centroid = torch.einsum("ncv,av->nca", share, r)
    offset = r[None, None] - centroid[..., None]
    pairs = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    second = torch.stack([(share * offset[:, :, a] * offset[:, :, b]).sum(dim=2) for a, b in pairs], dim=2)
    flat = x.flatten(start_dim=2)
    features = torch.cat([flat.mean(dim=2)[..., None], flat.square().mean(dim=2)[..., None], centroid, second], dim=2)
    return features.flatten(start_dim=1)


def network_input(kind: str, x: torch.Tensor) -> torch.Tensor:
    """What the estimator is trained on for the embedding ``kind``: the volumes for ``"cnn"``, their block
    averages for ``"pooled"``, their moments for ``"moments"``."""
    check_embedding(kind)
    if kind == "cnn":
        return x
    return pooled_features(x) if kind == "pooled" else moment_features(x)


@dataclass(frozen=True)
class EmbeddedSimulator:
    """``network_input(kind, simulate(θ))``: what the estimator trains on, reduced where the scans are made.

    Run per chunk by an executor, a fixed reduction keeps only its features: a round of 1,000 scans of the
    real patient at 4 mm is 580 MB as volumes and 130 kB as moments. Picklable whenever ``simulate`` is.
    """

    simulate: Callable[[torch.Tensor], torch.Tensor]
    kind: str

    def __post_init__(self) -> None:
        check_embedding(self.kind)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return network_input(self.kind, self.simulate(theta).float())


def check_embedding(kind: str) -> None:
    if kind not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {kind!r}")


def embedding_net(kind: str, channels: int, *, seed: int = 0) -> nn.Module:
    """The network in front of the estimator for the embedding ``kind``: a :class:`VolumeCNN` for ``channels``
    scans with weights drawn from ``seed``, or the identity for the fixed reductions."""
    check_embedding(kind)
    if kind != "cnn":
        return nn.Identity()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return VolumeCNN(channels)
