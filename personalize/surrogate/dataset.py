"""The training data of the geometry-aware surrogate: solver runs in many anatomies, cut to the cube at the seed.

Ezhov et al. (IEEE TMI 2022, arXiv:2009.04240) train their surrogate on numerical simulations: the tissue
maps of a cube centred at the seed, the growth parameters, and the density the solver grew there. One sample
here (:func:`simulate_shard`):

1. (D_w, ρ, T) uniform in the configuration's box (by default the prior box of
   :data:`personalize.priors.DEFAULT_BOUNDS`) and the seed at the centre of a tissue voxel (``wm + gm ≥ 0.5``)
   of the shard's anatomy, drawn uniformly;
2. a draw whose front cannot stay inside the cube is skipped without simulating: the Fisher–Kolmogorov front
   advances at most at v = 2√(D_w ρ) (:func:`simulators.fisher_kolmogorov.front_speed`; slower in grey matter),
   so v·T beyond the cube's half edge means the tumour leaves it;
3. the density at T from :class:`simulators.fisher_kolmogorov.FisherKolmogorov` on the whole anatomy (the
   crop would put a wall where the brain has none), sampled with the tissue maps on the cube
   (:func:`simulators.surrogates.geometry_aware.cube_points`; exact copies, the seed being a voxel centre);
4. kept when the cube shows a tumour (its maximum reaches ``visible_level``) that fits in it (its faces stay
   below ``wall_level``); otherwise drawn again. The training set is the box restricted to tumours the cube
   holds: the surrogate answers for those, and it is wrong, by construction, for tumours larger than its cube.

Shards (:mod:`personalize.shards`) take the anatomies in turn: shard i is simulated in anatomy
``i mod len(anatomies)`` (:mod:`personalize.surrogate.anatomies`; their roles split the data). Each holds

- ``anatomy`` float16 ``[n, 3, c, c, c]``: WM, GM, CSF on the cube; ``density`` float16 ``[n, 1, c, c, c]``;
- ``parameters`` float64 ``[n, 6]`` (D_w, ρ, T, x, y, z; the seed in the anatomy's world mm), ``draws`` int64
  ``[n]`` (box draws spent on each kept sample), ``anatomy_index``, ``shard`` and ``data_seed``.

``manifest.json`` records the configuration, the data seed, the solver, and each anatomy's specification and
SHA-256; a folder holding another one is refused, and generation resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from personalize.module_command import run_command
from personalize.priors import DEFAULT_BOUNDS, TISSUE_THRESHOLD, check_bounds
from personalize.shards import (
    GeneratedShards,
    anatomy_record,
    generate_shards,
    generate_with_workers,
    generation_parser,
    load_shards,
    read_manifest,
    shard_index,
    shard_path,
    shard_paths,
    shard_seed,
    write_shard,
)
from personalize.surrogate.anatomies import AnatomySpec, build_anatomy, default_anatomies
from simulators.anatomy import Anatomy
from simulators.fisher_kolmogorov import FisherKolmogorov, front_speed
from simulators.surrogates.geometry_aware import anatomy_tensor, cube_points, sample_volume

PathLike = str | os.PathLike[str]

FORMAT = "surrogate-dataset/1"
SOLVER = FisherKolmogorov()
"""The solver the data are grown with (its settings are recorded in the manifest)."""


@dataclass(frozen=True)
class DataConfig:
    """What one dataset holds (module docstring).

    Attributes:
        crop, spacing_mm: the cube (voxels a side) and its voxel edge (mm); the anatomies are resampled to it.
        d_w, rho, t: the box of D_w (mm²/day), ρ (1/day), T (days).
        samples_per_shard: samples in a shard.
        visible_level, wall_level: the window of step 4.
        max_draws: box draws per sample before a shard gives up.
        anatomies: the anatomies and their roles.
    """

    crop: int = 32
    spacing_mm: float = 4.0
    d_w: tuple[float, float] = DEFAULT_BOUNDS["D_w"]
    rho: tuple[float, float] = DEFAULT_BOUNDS["rho"]
    t: tuple[float, float] = DEFAULT_BOUNDS["T"]
    samples_per_shard: int = 16
    visible_level: float = 0.25
    wall_level: float = 0.01
    max_draws: int = 1000
    anatomies: tuple[AnatomySpec, ...] = default_anatomies()

    def __post_init__(self) -> None:
        for name in ("crop", "samples_per_shard", "max_draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        for field_name, prior_name in (("d_w", "D_w"), ("rho", "rho"), ("t", "T")):
            object.__setattr__(self, field_name, check_bounds(prior_name, *getattr(self, field_name)))
        if not 0 <= self.wall_level < self.visible_level <= 1:
            raise ValueError(f"need 0 <= wall_level < visible_level <= 1, got {self.wall_level}, {self.visible_level}")
        anatomies = tuple(a if isinstance(a, AnatomySpec) else AnatomySpec(**a) for a in self.anatomies)
        names = [a.name for a in anatomies]
        if len(set(names)) != len(names):
            raise ValueError(f"anatomy names must be unique, got {names}")
        missing = [role for role in ("train", "validation") if role not in {a.role for a in anatomies}]
        if missing:
            raise ValueError(f"the anatomies need at least one of each role to train; none for {missing}")
        object.__setattr__(self, "anatomies", anatomies)

    def anatomy_of(self, index: int) -> int:
        """The anatomy shard ``index`` is simulated in."""
        return index % len(self.anatomies)


CPU_DATA = DataConfig()
"""Default: 32³ cubes of 4 mm (128 mm a side) in the atlas, its mirror and eight deformed copies."""
CPU_SHARDS = 200
"""Shards of the CPU dataset: 20 per anatomy, 3,200 samples (2,560 in the eight training anatomies)."""
GPU_DATA = DataConfig(crop=64, spacing_mm=2.0)
"""Full scale, the cube of Ezhov et al.: 64³ voxels of 2 mm."""
GPU_SHARDS = 1000
"""Shards of the GPU dataset: 16,000 samples."""
PRESETS = {"cpu": (CPU_DATA, CPU_SHARDS), "gpu": (GPU_DATA, GPU_SHARDS)}


def config_from_json(fields: dict[str, Any]) -> DataConfig:
    """The :class:`DataConfig` of its JSON form (``asdict`` of it, as a manifest's ``config`` holds)."""
    fields = dict(fields)
    anatomies = tuple(AnatomySpec(**{**a, "files": tuple(a["files"])}) for a in fields.pop("anatomies"))
    return DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}, anatomies=anatomies)


def manifest(config: DataConfig, data_seed: int, anatomies: Sequence[Anatomy]) -> dict[str, Any]:
    """The content of a dataset's ``manifest.json`` (JSON types only)."""
    if isinstance(data_seed, bool) or not isinstance(data_seed, int) or data_seed < 0:
        raise ValueError(f"data_seed must be a non-negative integer, got {data_seed!r}")
    return json.loads(json.dumps({
        "format": FORMAT, "data_seed": data_seed, "config": asdict(config), "solver": asdict(SOLVER),
        "anatomies": [anatomy_record(anatomy) for anatomy in anatomies]}))


def simulate_shard(config: DataConfig, anatomy: Anatomy, data_seed: int, index: int) -> dict[str, np.ndarray]:
    """The arrays of shard ``index`` in ``anatomy`` (module docstring), drawn from
    :func:`personalize.shards.shard_seed` ``(data_seed, index)``.

    Raises:
        RuntimeError: ``config.max_draws`` draws in a row gave no tumour inside the window.
    """
    generator = np.random.default_rng(shard_seed(data_seed, index))
    candidates = np.argwhere(anatomy.tissue >= TISSUE_THRESHOLD)
    low = np.array([config.d_w[0], config.rho[0], config.t[0]])
    high = np.array([config.d_w[1], config.rho[1], config.t[1]])
    half_edge_mm = (config.crop // 2 - 1) * config.spacing_mm
    maps = anatomy_tensor(anatomy)
    kept: dict[str, list[Any]] = {"anatomy": [], "density": [], "parameters": [], "draws": []}
    for _ in range(config.samples_per_shard):
        for draw in range(1, config.max_draws + 1):
            growth = low + generator.random(3) * (high - low)
            seed_mm = anatomy.voxel_to_world(candidates[generator.integers(len(candidates))].astype(float))
            if front_speed(growth[0], growth[1]) * growth[2] > half_edge_mm:
                continue
            params = torch.tensor([[*growth, *seed_mm]], dtype=torch.float64)
            density = SOLVER.simulate(params, anatomy)
            points = cube_points(params[:, 3:6], config.crop, config.spacing_mm)
            cube = sample_volume(density[:, None], anatomy.affine, points)[0, 0]
            faces = torch.stack([cube[[0, -1]].amax(), cube[:, [0, -1]].amax(), cube[:, :, [0, -1]].amax()]).amax()
            if cube.max() >= config.visible_level and faces <= config.wall_level:
                break
        else:
            raise RuntimeError(f"shard {index}: {config.max_draws} draws in a row gave no tumour that shows "
                               f"(u >= {config.visible_level}) and fits the cube (faces <= {config.wall_level}); widen "
                               "the box or the cube")
        kept["anatomy"].append(sample_volume(maps, anatomy.affine, points)[0].numpy().astype(np.float16))
        kept["density"].append(cube[None].numpy().astype(np.float16))
        kept["parameters"].append(params[0].numpy())
        kept["draws"].append(draw)
    return {"anatomy": np.stack(kept["anatomy"]), "density": np.stack(kept["density"]),
            "parameters": np.stack(kept["parameters"]), "draws": np.asarray(kept["draws"], dtype=np.int64),
            "anatomy_index": np.int64(config.anatomy_of(index)), "shard": np.int64(index),
            "data_seed": np.int64(data_seed)}


class ShardWriter:
    """Writes shard ``index`` of one dataset when called (picklable, for a process pool); builds each anatomy once
    per process."""

    def __init__(self, config: DataConfig, data_seed: int, directory: Path) -> None:
        self.config, self.data_seed, self.directory = config, data_seed, directory
        self._anatomies: dict[int, Anatomy] = {}

    def __call__(self, index: int) -> Path:
        which = self.config.anatomy_of(index)
        if which not in self._anatomies:
            self._anatomies[which] = build_anatomy(self.config.anatomies[which], self.config.spacing_mm)
        arrays = simulate_shard(self.config, self._anatomies[which], self.data_seed, index)
        return write_shard(shard_path(self.directory, index), arrays)


def generate_data(directory: PathLike, config: DataConfig = CPU_DATA, *, data_seed: int, shards: int,
                  executor: Executor | None = None, progress: bool = True) -> GeneratedShards:
    """Write shards ``0 … shards − 1`` of the dataset ``(config, data_seed)`` into ``directory``, skipping those
    already there; serial, or one task per shard of ``executor``.

    Raises:
        ValueError: ``directory`` holds a dataset of another configuration, data seed or anatomies, or shard files
            without a manifest; ``shards`` below 1.
    """
    anatomies = [build_anatomy(spec, config.spacing_mm) for spec in config.anatomies]
    return generate_shards(directory, manifest(config, data_seed, anatomies), "a surrogate dataset",
                           ShardWriter(config, data_seed, Path(directory)), shards, executor=executor,
                           progress=progress, desc="surrogate shards")


@dataclass(frozen=True, eq=False)
class OpenedData:
    """A dataset folder read back: its configuration, data seed, manifest and shards by role."""

    directory: Path
    config: DataConfig
    data_seed: int
    manifest: dict[str, Any]
    shards: dict[str, tuple[Path, ...]]


def open_data(directory: PathLike) -> OpenedData:
    """Read ``directory``'s manifest and list its shards by the role of their anatomy.

    Raises:
        ValueError: no manifest, or one of another format; no shard of the training or validation role.
    """
    directory = Path(directory)
    stored = read_manifest(directory, FORMAT, "a surrogate dataset (generate_data writes one)")
    config = config_from_json(stored["config"])
    by_role: dict[str, list[Path]] = {"train": [], "validation": [], "test": []}
    for path in shard_paths(directory):
        by_role[config.anatomies[config.anatomy_of(shard_index(path))].role].append(path)
    empty = [role for role in ("train", "validation") if not by_role[role]]
    if empty:
        raise ValueError(f"{directory}: no shard of a {' or '.join(empty)} anatomy yet; generate more shards")
    return OpenedData(directory=directory, config=config, data_seed=stored["data_seed"], manifest=stored,
                      shards={role: tuple(paths) for role, paths in by_role.items()})


class CubeDataset(Dataset):
    """The samples of some shards in memory (float16); items are ``(anatomy [3, c, c, c] float32, growth [3]
    float64 (D_w, ρ, T), density [1, c, c, c] float32)``."""

    def __init__(self, paths: Sequence[PathLike]) -> None:
        arrays = load_shards(paths, ("anatomy", "density", "parameters"))
        self.anatomy, self.density, self.parameters = arrays["anatomy"], arrays["density"], arrays["parameters"]

    def __len__(self) -> int:
        return len(self.parameters)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(self.anatomy[index].astype(np.float32)), torch.from_numpy(self.parameters[index, :3]),
                torch.from_numpy(self.density[index].astype(np.float32)))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m personalize.surrogate.dataset OUT [--preset cpu|gpu] [--shards N] [--seed S] [--workers W]
    [--patient NAME=WM,GM[,CSF] ...]``."""
    parser = generation_parser("python -m personalize.surrogate.dataset", __doc__.split("\n")[0], PRESETS,
                               "cpu: 32³ cubes of 4 mm, 3,200 samples; gpu: 64³ cubes of 2 mm, 16,000 samples")
    parser.add_argument("--patient", action="append", default=[], metavar="NAME=WM,GM[,CSF]",
                        help="a patient's tissue maps as one more held-out test anatomy (repeatable)")
    args = parser.parse_args(argv)
    config, shards = PRESETS[args.preset]
    patients = []
    for text in args.patient:
        name, _, files = text.partition("=")
        if not name or not files:
            raise ValueError(f"--patient {text}: expected NAME=WM,GM[,CSF] (tissue map files)")
        patients.append(AnatomySpec(name, "test", "files", files=tuple(files.split(","))))
    if patients:
        per_anatomy = shards // len(config.anatomies)
        config = replace(config, anatomies=(*config.anatomies, *patients))
        shards = per_anatomy * len(config.anatomies)
    generate_with_workers(generate_data, args.workers, args.out, config, data_seed=args.seed,
                          shards=shards if args.shards is None else args.shards)


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m personalize.surrogate.dataset"))
