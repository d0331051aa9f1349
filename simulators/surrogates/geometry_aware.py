"""A geometry-aware neural surrogate of the Fisher–Kolmogorov solver, behind the same ``Simulator`` protocol.

Ezhov et al., "Geometry-aware neural solver for fast Bayesian calibration of brain tumor models", IEEE
Transactions on Medical Imaging 41(5):1269–1278 (2022), arXiv:2009.04240, map the growth parameters and a cube
of the patient's tissue maps centred at the tumour's seed straight to the tumour cell density in that cube:

    encoder      Conv3d(3 → c₀) · ReLU, then per level a residual block of c_k channels and, between levels, a
                 stride-2 convolution (the grid halves ``len(channels) − 1`` times)
    bottleneck   the parameters through a linear layer, reshaped to ``parameter_channels`` maps of the
                 bottleneck's size and concatenated with the anatomy's features
    decoder      per level (coarse to fine) a residual block, nearest-neighbour up-sampling ×2 and a
                 convolution; a last Conv3d(→ 1) gives the density

A residual block is conv 3³ · ReLU · conv 3³ · ReLU added to its input (a 1³ projection where the width
changes). The published network (``IvanEz/tumor-surrogate``, ``tumor_surrogate_pytorch/model.py``) keeps 128
channels at every level of a 64³ crop and has no path from encoder to decoder but the bottleneck; ``skips``
adds U-Net skip connections (Ronneberger et al., MICCAI 2015), a choice measured in ``docs/surrogate.md``.
Its loss (``tumor_surrogate_pytorch/utils.py``) is the L1 error over voxels the simulated tumour reaches
(u ≥ 0.001) plus the L1 error over CSF voxels (:func:`surrogate_loss`).

The parameters enter as ``features``: ``"dwt"`` is the paper's (D_w, ρ, T), each scaled linearly from the
training box to [−1, 1]; ``"mu"`` is (log √(D_w·T), log √(ρ·T)) scaled from the box's range, the two
combinations the density at T depends on (rescaling time, u depends on D_w·T and ρ·T only).

:class:`GeometryAwareSurrogate` places the cube in world space: ``crop`` voxels of ``spacing_mm`` along the
world's R, A, S axes with the seed (x, y, z) at index ``crop // 2`` of each axis. The tissue maps are sampled
there (trilinear, zero outside the grid), the network predicts the density in the cube, and the density is
sampled back onto the anatomy's own grid (trilinear, zero outside the cube) and set to zero outside tissue,
where the solver has no cells either. On an RAS grid of the training spacing with the seed at a voxel centre
both samplings are exact copies; on any other grid (spacing, orientation, obliquity) the surrogate is used
through interpolation. Densities are clamped to [0, 1].
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from simulators.anatomy import Anatomy
from simulators.fisher_kolmogorov import PARAMETER_NAMES

FEATURES = ("dwt", "mu")
TUMOUR_LEVEL = 1e-3
"""Density from which a voxel counts as reached by the tumour in :func:`surrogate_loss` (the published loss's)."""
CSF_LEVEL = 1e-3
"""CSF probability from which a voxel counts in the CSF term of :func:`surrogate_loss`."""


@dataclass(frozen=True)
class SurrogateConfig:
    """Architecture and input convention of :class:`GeometryAwareNetwork` and :class:`GeometryAwareSurrogate`.

    Attributes:
        crop: edge of the cube in voxels; divisible by ``2 ** (len(channels) − 1)``.
        spacing_mm: edge of a cube voxel in mm (the training anatomies' spacing).
        channels: channels per level, fine to coarse.
        parameter_channels: maps the parameters become at the bottleneck.
        skips: U-Net skip connections from each encoder level to the decoder level of the same size.
        features: how the parameters enter (module docstring): ``"dwt"`` or ``"mu"``.
        d_w, rho, t: the training box of D_w (mm²/day), ρ (1/day) and T (days) the features are scaled from.
    """

    crop: int = 32
    spacing_mm: float = 4.0
    channels: tuple[int, ...] = (16, 32, 64, 64)
    parameter_channels: int = 8
    skips: bool = False
    features: str = "dwt"
    d_w: tuple[float, float] = (0.02, 1.5)
    rho: tuple[float, float] = (0.002, 0.2)
    t: tuple[float, float] = (50.0, 1500.0)

    def __post_init__(self) -> None:
        channels = tuple(self.channels)
        if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive integers, got {self.channels!r}")
        object.__setattr__(self, "channels", channels)
        factor = 2 ** (len(channels) - 1)
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or self.crop < factor \
                or self.crop % factor:
            raise ValueError(f"crop must be a positive multiple of {factor} (2 ** (levels - 1)), got {self.crop!r}")
        if isinstance(self.parameter_channels, bool) or not isinstance(self.parameter_channels, int) \
                or self.parameter_channels < 1:
            raise ValueError(f"parameter_channels must be a positive integer, got {self.parameter_channels!r}")
        if not (math.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")
        for name in ("d_w", "rho", "t"):
            low, high = (float(v) for v in getattr(self, name))
            if not 0 < low < high < math.inf:
                raise ValueError(f"{name} must be a range 0 < low < high, got {getattr(self, name)!r}")
            object.__setattr__(self, name, (low, high))

    @property
    def bottleneck(self) -> int:
        """Edge of the bottleneck's grid in voxels."""
        return self.crop // 2 ** (len(self.channels) - 1)

    @property
    def feature_count(self) -> int:
        """Numbers the parameters enter the network as."""
        return 3 if self.features == "dwt" else 2


def parameter_features(growth: torch.Tensor, config: SurrogateConfig) -> torch.Tensor:
    """The network's parameter input ``[B, F]`` from ``growth[B, 3]`` = (D_w, ρ, T) (module docstring)."""
    growth = growth.to(torch.float64)
    if config.features == "dwt":
        low = growth.new_tensor([config.d_w[0], config.rho[0], config.t[0]])
        high = growth.new_tensor([config.d_w[1], config.rho[1], config.t[1]])
        values = growth
    else:
        values = 0.5 * torch.log(growth[:, :2] * growth[:, 2:3])
        low = 0.5 * torch.log(growth.new_tensor([config.d_w[0], config.rho[0]]) * config.t[0])
        high = 0.5 * torch.log(growth.new_tensor([config.d_w[1], config.rho[1]]) * config.t[1])
    return (2.0 * (values - low) / (high - low) - 1.0).to(torch.float32)


class _Residual(nn.Module):
    """conv 3³ · ReLU · conv 3³ · ReLU, added to the input (through a 1³ projection where widths differ)."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(inputs, outputs, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv3d(outputs, outputs, 3, padding=1), nn.ReLU(inplace=True))
        self.shortcut = nn.Identity() if inputs == outputs else nn.Conv3d(inputs, outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def _conv(inputs: int, outputs: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(inputs, outputs, 3, stride=stride, padding=1), nn.ReLU(inplace=True))


class GeometryAwareNetwork(nn.Module):
    """(WM, GM, CSF cube ``[B, 3, n, n, n]``, parameter features ``[B, F]``) → density cube ``[B, 1, n, n, n]``."""

    def __init__(self, config: SurrogateConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.channels
        self.stem = _conv(3, widths[0])
        self.encoder = nn.ModuleList(_Residual(w, w) for w in widths)
        self.down = nn.ModuleList(_conv(a, b, stride=2) for a, b in zip(widths[:-1], widths[1:]))
        size = config.bottleneck
        self.parameters_in = nn.Linear(config.feature_count, config.parameter_channels * size ** 3)
        bottom = widths[-1] + config.parameter_channels
        self.decoder = nn.ModuleList()
        self.up = nn.ModuleList()
        width = bottom
        for level in range(len(widths) - 1, -1, -1):
            extra = widths[level] if config.skips and level < len(widths) - 1 else 0
            self.decoder.append(_Residual(width + extra, widths[level]))
            width = widths[level]
            if level:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             _conv(width, widths[level - 1])))
                width = widths[level - 1]
        self.out = nn.Conv3d(width, 1, 3, padding=1)

    def forward(self, anatomy: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        n, size = self.config.crop, self.config.bottleneck
        if anatomy.shape[1:] != (3, n, n, n) or features.shape != (anatomy.shape[0], self.config.feature_count):
            raise ValueError(f"expected anatomy [B, 3, {n}, {n}, {n}] and features [B, {self.config.feature_count}], "
                             f"got {tuple(anatomy.shape)} and {tuple(features.shape)}")
        x = self.stem(anatomy)
        levels = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            levels.append(x)
            if level < len(self.down):
                x = self.down[level](x)
        embedded = self.parameters_in(features).view(-1, self.config.parameter_channels, size, size, size)
        x = torch.cat([x, embedded], dim=1)
        for step, block in enumerate(self.decoder):
            level = len(levels) - 1 - step
            if self.config.skips and step:
                x = torch.cat([x, levels[level]], dim=1)
            x = block(x)
            if level:
                x = self.up[step](x)
        return self.out(x)


def build_network(config: SurrogateConfig, *, seed: int, device: torch.device | str = "cpu") -> GeometryAwareNetwork:
    """:class:`GeometryAwareNetwork` with initial weights drawn from ``seed`` alone, on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = GeometryAwareNetwork(config)
    return network.to(device)


def surrogate_loss(predicted: torch.Tensor, simulated: torch.Tensor, csf: torch.Tensor) -> torch.Tensor:
    """Ezhov et al.'s loss: mean |predicted − simulated| over voxels with ``simulated ≥`` :data:`TUMOUR_LEVEL`
    plus the same over voxels with ``csf ≥`` :data:`CSF_LEVEL` (each term 0 where it has no voxel). Tensors
    ``[B, 1, n, n, n]``."""
    error = (predicted - simulated).abs()
    terms = []
    for mask in (simulated >= TUMOUR_LEVEL, csf >= CSF_LEVEL):
        count = mask.sum()
        terms.append(torch.where(count > 0, (error * mask).sum() / count.clamp(min=1), error.new_zeros(())))
    return terms[0] + terms[1]


def cube_points(seeds_mm: torch.Tensor, crop: int, spacing_mm: float) -> torch.Tensor:
    """World points ``[B, n, n, n, 3]`` (mm) of the cubes: seed + (i − n // 2)·spacing along R, A and S."""
    offsets = (torch.arange(crop, dtype=torch.float64, device=seeds_mm.device) - crop // 2) * spacing_mm
    grid = torch.stack(torch.meshgrid(offsets, offsets, offsets, indexing="ij"), dim=-1)
    return seeds_mm.to(torch.float64)[:, None, None, None, :] + grid


def sample_volume(volume: torch.Tensor, affine: np.ndarray, points_mm: torch.Tensor) -> torch.Tensor:
    """Trilinear samples ``[B, C, *points.shape[1:4]]`` of ``volume[B or 1, C, X, Y, Z]`` (voxel-to-world
    ``affine``) at world ``points_mm[B, ..., 3]``; zero outside the grid."""
    inverse = torch.as_tensor(np.linalg.inv(affine), dtype=torch.float64, device=points_mm.device)
    voxels = points_mm @ inverse[:3, :3].T + inverse[:3, 3]
    sizes = torch.tensor(volume.shape[2:], dtype=torch.float64, device=points_mm.device)
    normalised = 2.0 * voxels / (sizes - 1).clamp(min=1) - 1.0  # align_corners=True: index 0 → −1, n − 1 → 1
    grid = normalised.flip(-1).to(volume.dtype)  # grid_sample wants (z, y, x) for an input [.., X, Y, Z]
    source = volume.expand(points_mm.shape[0], *volume.shape[1:])
    return functional.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def anatomy_tensor(anatomy: Anatomy, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[1, 3, X, Y, Z]`` float32: WM, GM, CSF."""
    return torch.from_numpy(np.stack([anatomy.wm, anatomy.gm, anatomy.csf]).astype(np.float32))[None].to(device)


@dataclass(frozen=True, eq=False)
class GeometryAwareSurrogate:
    """The trained :class:`GeometryAwareNetwork` as a :class:`simulators.protocol.Simulator` (module docstring).

    Attributes:
        network: the network (its ``config`` says the cube and the parameter box), in evaluation mode.
        batch_size: cubes per forward pass.
    """

    network: GeometryAwareNetwork
    batch_size: int = 16
    parameter_names: ClassVar[tuple[str, ...]] = PARAMETER_NAMES

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        self.network.eval()

    @property
    def config(self) -> SurrogateConfig:
        return self.network.config

    def simulate(self, params: torch.Tensor, anatomy: Anatomy, *, progress: bool = False) -> torch.Tensor:
        """Tumour cell density ``[B, *anatomy.shape]`` in [0, 1] for ``params[B, 6]`` (D_w, ρ, T, x, y, z), on
        ``params.device`` (where the network must be). ``progress`` is accepted for the solver's signature."""
        del progress
        if params.ndim != 2 or params.shape[1] != len(PARAMETER_NAMES):
            raise ValueError(f"params must be [B, {len(PARAMETER_NAMES)}] ({', '.join(PARAMETER_NAMES)}), "
                             f"got {tuple(params.shape)}")
        if not torch.isfinite(params).all() or (params[:, :3] <= 0).any():
            raise ValueError("params must be finite, with D_w, rho and T positive")
        device = params.device
        density = torch.zeros((len(params), *anatomy.shape), dtype=torch.float32, device=device)
        volume = anatomy_tensor(anatomy, device)
        n, spacing = self.config.crop, self.config.spacing_mm
        tissue = torch.from_numpy(anatomy.tissue > 0).to(device)
        with torch.no_grad():
            for start in range(0, len(params), self.batch_size):
                rows = params[start:start + self.batch_size]
                cubes = sample_volume(volume, anatomy.affine, cube_points(rows[:, 3:6], n, spacing))
                predicted = self.network(cubes, parameter_features(rows[:, :3], self.config)).clamp(0.0, 1.0)
                for offset, row in enumerate(rows):
                    self._place(predicted[offset], row[3:6], anatomy, density[start + offset])
        return density * tissue

    def _place(self, cube: torch.Tensor, seed_mm: torch.Tensor, anatomy: Anatomy, out: torch.Tensor) -> None:
        """Sample ``cube[1, n, n, n]`` onto the voxels of ``anatomy`` the cube covers, writing into ``out``."""
        n, spacing = self.config.crop, self.config.spacing_mm
        seed = seed_mm.double().cpu().numpy()
        low_mm, high_mm = seed - (n // 2) * spacing, seed + (n - 1 - n // 2) * spacing
        voxels = anatomy.world_to_voxel(np.array(list(itertools.product(*zip(low_mm, high_mm)))))
        low = np.clip(np.floor(voxels.min(axis=0)).astype(int), 0, None)
        high = np.minimum(np.ceil(voxels.max(axis=0)).astype(int) + 1, anatomy.shape)
        if np.any(high <= low):
            return
        axes = [torch.arange(a, b, dtype=torch.float64, device=cube.device) for a, b in zip(low, high)]
        indices = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        affine = torch.tensor(anatomy.affine, dtype=torch.float64, device=cube.device)
        world = indices @ affine[:3, :3].T + affine[:3, 3]
        cube_affine = np.diag([spacing, spacing, spacing, 1.0])
        cube_affine[:3, 3] = low_mm
        values = sample_volume(cube[None], cube_affine, world[None])[0, 0]
        out[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = values
