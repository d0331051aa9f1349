"""The training data of Learn-Morph-Infer: Fisher–Kolmogorov tumours grown on the atlas, seen as T1Gd and FLAIR.

Ezhov et al., Medical Image Analysis 83:102672 (2023), arXiv:2111.04090, train their inverse network on
simulated tumours in atlas space. One sample here is drawn as follows (:func:`simulate_shard`):

1. (D_w, ρ, T, u_t1gd, u_flair) uniform in the project's prior box (:data:`personalize.priors.DEFAULT_BOUNDS`;
   LMI's published code uses the same ranges, D_w ∈ [0.0002, 0.015] cm²/day), and the seed (x, y, z) uniform
   over the cells of the atlas's tissue voxels, ``wm + gm ≥ tissue_level``: both are draws of a
   :class:`personalize.priors.Prior` whose seed candidates are those voxels (its σ_α draw is unused);
2. the density u at T from :class:`simulators.fisher_kolmogorov.FisherKolmogorov` on the MNI152 atlas
   (:func:`simulators.atlas.default_atlas`) at ``spacing_mm``, cropped to its tissue;
3. T1Gd = u > u_t1gd and FLAIR = u > u_flair (:func:`likelihoods.imaging.draw_scans`, ``masks="threshold"``);
4. kept if the T1Gd volume reaches ``min_t1gd_ml`` and the FLAIR volume stays within ``max_flair_ml``,
   otherwise drawn again (step 1). A uniform box puts most tumours outside that window: more than half fill
   the whole brain (measured at 4 mm: 13 of 20 draws had FLAIR over every tissue voxel) and some never reach
   u_t1gd. Neither shows anything a patient's scan would, and a brain-filling one says nothing about μ₁.
   The window is a choice made here (1 mL: a small enhancing core; 250 mL: a FLAIR abnormality beyond that
   of most glioblastomas); the training set is the prior restricted to it.

Cost (measured with one thread on a 2-core machine shared with another job): at 4 mm, 96 kept samples took
1,283 draws (7.5 % accepted) and 153 s, 1.6 s per kept sample, so the CPU dataset (:data:`CPU_SHARDS`) takes
about an hour on one core. At 2 mm one draw took 1.2 s (mean of 6), about 16 s per kept sample at that
acceptance: the GPU dataset is some 140 CPU-hours, most of them spent on rejected brain-filling tumours.

Storage: shards ``shard_00000.npz`` … of ``samples_per_shard`` samples each, written atomically
(:func:`simulators.nifti.atomic_output`), holding

- ``masks`` uint8 ``[n, X, Y, Z]``: the T1Gd and FLAIR masks as one code per voxel
  (:func:`personalize.lmi.inputs.encode_masks`; the network input 0.666·T1Gd + 0.333·FLAIR is decoded from it);
- ``targets`` float32 ``[n, 5]``: (μ₁, μ₂, x, y, z) scaled to [−1, 1] by the dataset's
  :class:`personalize.lmi.parameters.OutputRanges`;
- ``parameters`` float64 ``[n, 6]`` (D_w, ρ, T, x, y, z), ``thresholds`` float64 ``[n, 2]`` (u_t1gd, u_flair),
  ``draws`` int64 ``[n]`` (prior draws spent on each kept sample), ``shard`` and ``data_seed``.

``manifest.json`` records the configuration, the data seed, the anatomy (shape, affine, SHA-256 of its maps) and
the output ranges. Generation is resumable: shards on disk are skipped, and a folder whose manifest differs is
refused. Shard i draws from a generator seeded by ``(data_seed, i)`` alone, so its content does not depend on
which shards were written before, on the number of workers, or on the order they finish in.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from likelihoods.imaging import draw_scans
from personalize.lmi.inputs import encode_masks, network_input
from personalize.lmi.parameters import OUTPUT_NAMES, OutputRanges, mu_from_growth
from personalize.module_command import run_command
from personalize.priors import DEFAULT_BOUNDS, TISSUE_THRESHOLD, Prior, check_bounds
from personalize.shards import (
    MANIFEST_FILE,
    GeneratedShards,
    anatomy_record,
    generate_shards,
    generate_with_workers,
    generation_parser,
    load_shards,
    shard_path,
    shard_paths,
    shard_seed,
    write_shard,
)
from personalize.shards import read_manifest as read_shards_manifest
from simulators.anatomy import Anatomy
from simulators.atlas import default_atlas
from simulators.fisher_kolmogorov import FisherKolmogorov
from simulators.seed import Seed

PathLike = str | os.PathLike[str]

FORMAT = "lmi-dataset/1"
_BOX = (("d_w", "D_w"), ("rho", "rho"), ("t", "T"), ("u_t1gd", "u_t1gd"), ("u_flair", "u_flair"))
"""Config field → prior parameter of each box range."""


@dataclass(frozen=True)
class DatasetConfig:
    """What fixes a dataset's content, with its data seed (the number of shards does not: more can be added).

    Attributes:
        spacing_mm: isotropic spacing of the atlas the tumours grow on (the network's input grid).
        samples_per_shard: samples in one shard file.
        d_w, rho, t, u_t1gd, u_flair: uniform ranges (mm²/day, 1/day, days, 1, 1); defaults: the prior's.
        tissue_level: a voxel may hold the seed where ``wm + gm`` reaches this.
        min_t1gd_ml, max_flair_ml: the window of visible volumes a sample must fall in (module docstring).
        max_draws: prior draws allowed per kept sample before generation gives up.
        simulator: the forward model and its numerics.
    """

    spacing_mm: float = 4.0
    samples_per_shard: int = 16
    d_w: tuple[float, float] = DEFAULT_BOUNDS["D_w"]
    rho: tuple[float, float] = DEFAULT_BOUNDS["rho"]
    t: tuple[float, float] = DEFAULT_BOUNDS["T"]
    u_t1gd: tuple[float, float] = DEFAULT_BOUNDS["u_t1gd"]
    u_flair: tuple[float, float] = DEFAULT_BOUNDS["u_flair"]
    tissue_level: float = TISSUE_THRESHOLD
    min_t1gd_ml: float = 1.0
    max_flair_ml: float = 250.0
    max_draws: int = 100
    simulator: FisherKolmogorov = FisherKolmogorov()

    def __post_init__(self) -> None:
        if not (np.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        for name in ("samples_per_shard", "max_draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for field_name, prior_name in _BOX:
            object.__setattr__(self, field_name, check_bounds(prior_name, *getattr(self, field_name)))
        if not self.u_flair[1] <= self.u_t1gd[0]:
            raise ValueError(f"u_flair {self.u_flair} must lie below u_t1gd {self.u_t1gd}: FLAIR shows more than T1Gd")
        if not 0 < self.tissue_level <= 1:
            raise ValueError(f"tissue_level must lie in (0, 1], got {self.tissue_level}")
        if not 0 <= self.min_t1gd_ml < self.max_flair_ml:
            raise ValueError(f"need 0 <= min_t1gd_ml < max_flair_ml, got {self.min_t1gd_ml}, {self.max_flair_ml}")
        if not isinstance(self.simulator, FisherKolmogorov):
            raise ValueError(f"simulator must be a FisherKolmogorov, got {type(self.simulator).__name__}")

    @property
    def prior_bounds(self) -> dict[str, tuple[float, float]]:
        """Bounds of a :class:`personalize.priors.Prior` drawing the box parameters (σ_α: the default, unused)."""
        return {prior_name: getattr(self, field_name) for field_name, prior_name in _BOX} | {
            "sigma_alpha": DEFAULT_BOUNDS["sigma_alpha"]}


CPU_DATASET = DatasetConfig()
"""Default: the 4 mm atlas cropped to tissue (39 × 49 × 40 voxels), 16 samples a shard."""
CPU_SHARDS = 150
"""Shards of the CPU dataset: 2,400 samples, what :data:`personalize.lmi.train.CPU_TRAINING` is sized for."""
GPU_DATASET = DatasetConfig(spacing_mm=2.0, samples_per_shard=64)
"""Full scale: the 2 mm atlas cropped to tissue (77 × 96 × 80 voxels), 64 samples a shard."""
GPU_SHARDS = 470
"""Shards of the GPU dataset: 30,080 samples, about the 30,000 simulations LMI published."""
PRESETS = {"cpu": (CPU_DATASET, CPU_SHARDS), "gpu": (GPU_DATASET, GPU_SHARDS)}


@dataclass(frozen=True)
class ShardSplit:
    """Shard indices of the training, validation and test sets (disjoint)."""

    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]


def dataset_anatomy(config: DatasetConfig) -> Anatomy:
    """The default atlas at ``config.spacing_mm``, cropped to the voxels that hold any tissue or CSF."""
    return default_atlas(config.spacing_mm).crop_to_tissue(margin_voxels=0)


def sample_prior(config: DatasetConfig, anatomy: Anatomy) -> Prior:
    """The prior samples are drawn from: ``config``'s box, the seed in voxels with ``wm + gm ≥ tissue_level``."""
    return Prior(config.prior_bounds, anatomy.tissue >= config.tissue_level, anatomy.affine, dtype=torch.float64)


def output_ranges(config: DatasetConfig, anatomy: Anatomy) -> OutputRanges:
    """The scaling of the targets: μ ranges of ``config``'s box, x, y, z over the seed's tissue bounding box."""
    prior = sample_prior(config, anatomy)
    return OutputRanges.from_bounds(prior.bounds, prior.seed_box)


def simulate_shard(config: DatasetConfig, anatomy: Anatomy, data_seed: int, index: int) -> dict[str, np.ndarray]:
    """The arrays of shard ``index`` (module docstring), drawn from :func:`shard_seed` ``(data_seed, index)``.

    Raises:
        RuntimeError: ``config.max_draws`` draws in a row fell outside the volume window.
    """
    generator = torch.Generator().manual_seed(shard_seed(data_seed, index))
    prior = sample_prior(config, anatomy)
    ranges = OutputRanges.from_bounds(prior.bounds, prior.seed_box)
    tissue = torch.from_numpy(anatomy.tissue > 0)
    voxel_ml = float(np.prod(anatomy.spacing_mm)) / 1000.0
    t1gd_at, flair_at = prior.index("u_t1gd"), prior.index("u_flair")
    kept: dict[str, list[Any]] = {"masks": [], "parameters": [], "thresholds": [], "draws": []}
    for _ in range(config.samples_per_shard):
        for draw in range(1, config.max_draws + 1):
            theta = prior.sample_with(1, generator)
            density = config.simulator.simulate(theta[:, :6], anatomy)
            scans = draw_scans(density, {"u_t1gd": theta[0, t1gd_at], "u_flair": theta[0, flair_at]}, tissue,
                               masks="threshold", with_pet=False)
            if (float(scans.t1gd.sum()) * voxel_ml >= config.min_t1gd_ml
                    and float(scans.flair.sum()) * voxel_ml <= config.max_flair_ml):
                break
        else:
            raise RuntimeError(f"shard {index}: {config.max_draws} prior draws in a row gave no tumour with T1Gd "
                               f">= {config.min_t1gd_ml} mL and FLAIR <= {config.max_flair_ml} mL; widen the window "
                               "or the ranges")
        kept["masks"].append(encode_masks(scans.t1gd[0], scans.flair[0]))
        kept["parameters"].append(theta[0, :6].numpy())
        kept["thresholds"].append(theta[0, [t1gd_at, flair_at]].numpy())
        kept["draws"].append(draw)
    parameters = np.stack(kept["parameters"])
    mu_1, mu_2 = mu_from_growth(parameters[:, 0], parameters[:, 1], parameters[:, 2])
    targets = ranges.scale(np.column_stack([mu_1, mu_2, parameters[:, 3:6]]))
    return {"masks": np.stack(kept["masks"]), "targets": targets.astype(np.float32), "parameters": parameters,
            "thresholds": np.stack(kept["thresholds"]), "draws": np.asarray(kept["draws"], dtype=np.int64),
            "shard": np.int64(index), "data_seed": np.int64(data_seed)}


class ShardWriter:
    """Writes shard ``index`` of one dataset when called (picklable, for a process pool)."""

    def __init__(self, config: DatasetConfig, anatomy: Anatomy, data_seed: int, directory: Path) -> None:
        self.config, self.anatomy, self.data_seed, self.directory = config, anatomy, data_seed, directory

    def __call__(self, index: int) -> Path:
        return write_shard(shard_path(self.directory, index),
                           simulate_shard(self.config, self.anatomy, self.data_seed, index))


def generate_dataset(directory: PathLike, config: DatasetConfig = CPU_DATASET, *, data_seed: int, shards: int,
                     executor: Executor | None = None, progress: bool = True) -> GeneratedShards:
    """Write shards ``0 … shards − 1`` of the dataset ``(config, data_seed)`` into ``directory``, skipping those
    already there, with a progress bar over shards.

    Serial when ``executor`` is None; otherwise each shard is one task of ``executor`` (a process pool from
    :func:`personalize.executors.local_executor`, say; the task is picklable). Each shard's content depends on
    ``(config, data_seed, index)`` only.

    Raises:
        ValueError: ``directory`` holds a dataset of another configuration, data seed or anatomy, or shard files
            without a manifest; ``shards`` below 1.
    """
    anatomy = dataset_anatomy(config)
    return generate_shards(directory, manifest(config, data_seed, anatomy), "an LMI dataset",
                           ShardWriter(config, anatomy, data_seed, Path(directory)), shards, executor=executor,
                           progress=progress, desc="LMI shards")


def manifest(config: DatasetConfig, data_seed: int, anatomy: Anatomy) -> dict[str, Any]:
    """The content of a dataset's ``manifest.json`` (JSON types only)."""
    if isinstance(data_seed, bool) or not isinstance(data_seed, int) or data_seed < 0:
        raise ValueError(f"data_seed must be a non-negative integer, got {data_seed!r}")
    ranges = output_ranges(config, anatomy)
    return json.loads(json.dumps({
        "format": FORMAT, "data_seed": data_seed, "config": asdict(config), "anatomy": anatomy_record(anatomy),
        "output_names": OUTPUT_NAMES, "ranges": {"low": ranges.low, "high": ranges.high}}))


def config_from_json(fields: dict[str, Any]) -> DatasetConfig:
    """The :class:`DatasetConfig` of its JSON form (``asdict`` of it, as a manifest's ``config`` holds)."""
    fields = dict(fields)
    simulator = dict(fields.pop("simulator"))
    seed = Seed(**simulator.pop("seed"))
    return DatasetConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()},
                         simulator=FisherKolmogorov(**simulator, seed=seed))


def read_manifest(directory: PathLike) -> dict[str, Any]:
    """``directory``'s manifest.

    Raises:
        ValueError: naming the folder, when it has none or one of another format.
    """
    return read_shards_manifest(directory, FORMAT, "an LMI dataset (generate_dataset writes one)")


@dataclass(frozen=True, eq=False)
class OpenedDataset:
    """A dataset folder read back: its configuration, data seed, anatomy, output ranges, manifest and shards."""

    directory: Path
    config: DatasetConfig
    data_seed: int
    anatomy: Anatomy
    ranges: OutputRanges
    manifest: dict[str, Any]
    shards: tuple[Path, ...]


def open_dataset(directory: PathLike) -> OpenedDataset:
    """Read ``directory``'s manifest, rebuild its configuration and anatomy, and list its shards.

    Raises:
        ValueError: naming the folder, when it has no manifest or no shard, or when the anatomy rebuilt here
            differs from the one it was simulated on (another atlas build).
    """
    directory = Path(directory)
    stored = read_manifest(directory)
    config = config_from_json(stored["config"])
    anatomy = dataset_anatomy(config)
    if manifest(config, stored["data_seed"], anatomy) != stored:
        raise ValueError(f"{directory}: the atlas rebuilt from its {MANIFEST_FILE} differs from the one its shards "
                         "were simulated on (anatomy SHA-256 or shape); regenerate the dataset")
    shards = shard_paths(directory)
    if not shards:
        raise ValueError(f"{directory}: no shard files")
    return OpenedDataset(directory=directory, config=config, data_seed=stored["data_seed"], anatomy=anatomy,
                         ranges=output_ranges(config, anatomy), manifest=stored, shards=shards)


def split_shards(indices: Sequence[int], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 seed: int = 0) -> ShardSplit:
    """Split shard indices into training, validation and test sets by ``fractions``, at random from ``seed``.

    Deterministic: the same indices (in any order), fractions and seed give the same split. Splitting by shard
    keeps the samples of a shard together. The validation and test sets get ``round(fraction · n)`` shards, at
    least one each; the rest train.

    Raises:
        ValueError: fractions that are negative or do not sum to 1, or fewer than three shards.
    """
    indices = sorted(set(int(i) for i in indices))
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    if len(indices) < 3:
        raise ValueError(f"splitting needs at least 3 shards (one per set), got {len(indices)}")
    order = [indices[i] for i in np.random.default_rng(seed).permutation(len(indices))]
    n_validation = max(1, round(fractions[1] * len(indices)))
    n_test = max(1, round(fractions[2] * len(indices)))
    if n_validation + n_test >= len(indices):
        raise ValueError(f"{len(indices)} shards leave none to train on with fractions {fractions}")
    return ShardSplit(train=tuple(sorted(order[n_validation + n_test:])),
                      validation=tuple(sorted(order[:n_validation])),
                      test=tuple(sorted(order[n_validation:n_validation + n_test])))


class ShardDataset(Dataset):
    """The samples of some shards, held in memory as uint8 mask codes (one byte a voxel); items are
    ``(input [1, X, Y, Z] float32, target [5] float32)``.

    Attributes:
        masks, targets, parameters, thresholds: the shards' arrays, concatenated in the order of ``paths``.
    """

    def __init__(self, paths: Sequence[PathLike]) -> None:
        arrays = load_shards(paths, ("masks", "targets", "parameters", "thresholds"))
        self.masks, self.targets, self.parameters, self.thresholds = (
            arrays[name] for name in ("masks", "targets", "parameters", "thresholds"))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return network_input(self.masks[index])[None], torch.from_numpy(self.targets[index])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m personalize.lmi.dataset OUT [--preset cpu|gpu] [--shards N] [--seed S] [--workers W]``."""
    parser = generation_parser("python -m personalize.lmi.dataset", __doc__.split("\n")[0], PRESETS,
                               "cpu: 4 mm, 2,400 samples; gpu: 2 mm, 30,080 samples")
    args = parser.parse_args(argv)
    config, shards = PRESETS[args.preset]
    generate_with_workers(generate_dataset, args.workers, args.out, config, data_seed=args.seed,
                          shards=shards if args.shards is None else args.shards)


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m personalize.lmi.dataset"))
