"""Training of the geometry-aware surrogate on a dataset of :mod:`personalize.surrogate.dataset`.

Ezhov et al., IEEE TMI 41(5):1269–1278 (2022), arXiv:2009.04240. The network
(:mod:`simulators.surrogates.geometry_aware`) maps the cube's tissue maps and (D_w, ρ, T) to the density. Here:

- loss: the paper's, :func:`simulators.surrogates.geometry_aware.surrogate_loss` (L1 over the tumour plus L1 over
  CSF, where the density must stay 0);
- optimiser: AdamW (Loshchilov and Hutter, ICLR 2019), the learning rate halved whenever the validation loss has
  not improved for ``lr_patience`` epochs; the published code uses Adam with a cosine schedule over 30 epochs, a
  fixed epoch count that early stopping replaces here;
- data: split by anatomy (the roles of :mod:`personalize.surrogate.anatomies`): no sample of a validation or test
  anatomy is trained on; batches drawn in an order from a generator seeded by the training seed;
- the epoch loop of :mod:`personalize.training` (a checkpoint each epoch, resuming to the same result, early
  stopping on the validation loss);
- at the end, the test metrics (:func:`evaluate`) on the test anatomies' cubes, and the weights with their record
  (:mod:`personalize.surrogate.weights`) as ``surrogate.pt`` / ``surrogate.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from personalize.module_command import run_command
from personalize.overlap import dice
from personalize.surrogate.dataset import CubeDataset, DataConfig, open_data
from personalize.surrogate.weights import save_surrogate
from personalize.training import check_optimisation, train_epochs
from simulators.surrogates.geometry_aware import (
    GeometryAwareNetwork,
    SurrogateConfig,
    build_network,
    parameter_features,
    surrogate_loss,
)

CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "surrogate.pt"
_CHECKPOINT_FORMAT = "surrogate-checkpoint/1"
DICE_LEVELS = (0.2, 0.4, 0.8)
"""Density levels of the Dice scores of Ezhov et al.'s Table I."""
REACHED = 1e-3
"""Density above which a voxel counts as reached by the tumour (predicted or simulated) in the MAE."""
TISSUES = ("wm", "gm", "csf")


@dataclass(frozen=True)
class TrainingConfig:
    """How to train.

    Attributes:
        channels, parameter_channels, skips, features: the network (:class:`SurrogateConfig`; its cube and box come
            from the dataset).
        batch_size, max_epochs, learning_rate, weight_decay, patience, lr_patience, lr_factor: the optimisation
            (module docstring).
        seed: initial weights and batch order.
    """

    channels: tuple[int, ...] = (8, 16, 32, 32)
    parameter_channels: int = 8
    skips: bool = True
    features: str = "mu"
    batch_size: int = 8
    max_epochs: int = 20
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 3
    lr_patience: int = 1
    lr_factor: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        check_optimisation(self)
        object.__setattr__(self, "channels", tuple(self.channels))

    def network(self, data: DataConfig) -> SurrogateConfig:
        """The network's configuration for ``data``'s cube and box."""
        return SurrogateConfig(crop=data.crop, spacing_mm=data.spacing_mm, channels=self.channels,
                               parameter_channels=self.parameter_channels, skips=self.skips, features=self.features,
                               d_w=data.d_w, rho=data.rho, t=data.t)


CPU_TRAINING = TrainingConfig()
GPU_TRAINING = TrainingConfig(channels=(32, 64, 128, 128), batch_size=16, max_epochs=100, patience=15)
"""Full scale, for the 64³ cubes of :data:`personalize.surrogate.dataset.GPU_DATA` on one GPU. Not run here."""
PRESETS = {"cpu": CPU_TRAINING, "gpu": GPU_TRAINING}


@dataclass(frozen=True)
class TestMetrics:
    """Ezhov et al.'s Table I on the test cubes: mean (and standard deviation) of the Dice at each of
    :data:`DICE_LEVELS` over the cases where the simulated tumour reaches that level, and of the MAE within WM,
    GM and CSF (voxels of the tissue a voxel most belongs to, reached by either tumour); None where no case
    counts."""

    samples: int
    dice: dict[str, float | None]
    dice_std: dict[str, float | None]
    mae: dict[str, float | None]
    mae_std: dict[str, float | None]

    def table(self) -> str:
        head = " | ".join([*(f"Dice u={u:g}" for u in DICE_LEVELS), *(f"MAE {t.upper()}" for t in TISSUES)])
        cells = [(self.dice[f"{u:g}"], self.dice_std[f"{u:g}"], 3) for u in DICE_LEVELS]
        cells += [(self.mae[t], self.mae_std[t], 4) for t in TISSUES]
        row = " | ".join("n/a" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
                         for mean, std, digits in cells)
        return f"{head}\n{row}"


def case_metrics(predicted: np.ndarray, simulated: np.ndarray, anatomy: np.ndarray) -> dict[str, float]:
    """Dice at :data:`DICE_LEVELS` (NaN where the simulated tumour does not reach the level) and the MAE in WM, GM
    and CSF (NaN where no voxel of that tissue is reached) of one cube; ``anatomy`` is ``[3, c, c, c]``."""
    scores = {f"dice_{u:g}": dice(predicted > u, simulated > u) if (simulated > u).any() else float("nan")
              for u in DICE_LEVELS}
    reached = (predicted > REACHED) | (simulated > REACHED)
    label = np.argmax(anatomy, axis=0)
    present = anatomy.sum(axis=0) > 0
    error = np.abs(predicted - simulated)
    for k, tissue in enumerate(TISSUES):
        voxels = reached & present & (label == k)
        scores[f"mae_{tissue}"] = float(error[voxels].mean()) if voxels.any() else float("nan")
    return scores


def predict_cubes(network: GeometryAwareNetwork, dataset: CubeDataset, *, batch_size: int = 8) -> torch.Tensor:
    """The clamped predictions ``[N, 1, c, c, c]`` (CPU) of every sample of ``dataset``, in order."""
    device = next(network.parameters()).device
    network.eval()
    out = []
    with torch.no_grad():
        for anatomy, growth, _ in DataLoader(dataset, batch_size=batch_size):
            features = parameter_features(growth, network.config).to(device)
            out.append(network(anatomy.to(device), features).clamp(0.0, 1.0).cpu())
    return torch.cat(out)


def evaluate(network: GeometryAwareNetwork, dataset: CubeDataset, *, batch_size: int = 8) -> TestMetrics:
    """:class:`TestMetrics` of ``network`` on ``dataset``."""
    predicted = predict_cubes(network, dataset, batch_size=batch_size).numpy()[:, 0]
    cases = [case_metrics(predicted[i], dataset.density[i, 0].astype(np.float32), dataset.anatomy[i].astype(np.float32))
             for i in range(len(dataset))]
    counted = {key: np.array([case[key] for case in cases if not np.isnan(case[key])]) for key in cases[0]}
    mean = {key: float(v.mean()) if len(v) else None for key, v in counted.items()}
    std = {key: float(v.std()) if len(v) else None for key, v in counted.items()}
    return TestMetrics(samples=len(dataset), dice={f"{u:g}": mean[f"dice_{u:g}"] for u in DICE_LEVELS},
                       dice_std={f"{u:g}": std[f"dice_{u:g}"] for u in DICE_LEVELS},
                       mae={t: mean[f"mae_{t}"] for t in TISSUES}, mae_std={t: std[f"mae_{t}"] for t in TISSUES})


@dataclass(frozen=True)
class TrainingResult:
    """Losses per epoch, the kept epoch, whether early stopping ended training, the validation and test metrics,
    the weights file, seconds per training batch and wall time."""

    train_loss: tuple[float, ...]
    validation_loss: tuple[float, ...]
    best_epoch: int
    stopped_early: bool
    validation: TestMetrics
    test: TestMetrics | None
    weights: Path
    seconds_per_batch: float
    wall_s: float


def train(data_dir: str | Path, out_dir: str | Path, config: TrainingConfig = CPU_TRAINING, *,
          device: torch.device | str = "cpu", progress: bool = True) -> TrainingResult:
    """Train on the dataset in ``data_dir``, writing the checkpoint and the weights into ``out_dir`` (module
    docstring); continues from ``out_dir``'s checkpoint when there is one.

    Raises:
        ValueError: a dataset that cannot be opened; a checkpoint of another dataset or configuration.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = open_data(data_dir)
    train_set, validation_set = CubeDataset(data.shards["train"]), CubeDataset(data.shards["validation"])
    test_set = CubeDataset(data.shards["test"]) if data.shards["test"] else None
    fixed = {key: value for key, value in asdict(config).items() if key != "max_epochs"}
    identity = json.dumps({"training": fixed, "dataset": data.manifest,
                           "shards": {role: [p.name for p in paths] for role, paths in data.shards.items()}},
                          sort_keys=True)
    network = build_network(config.network(data.config), seed=config.seed, device=device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator,
                        drop_last=len(train_set) > config.batch_size)

    def batch_loss(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        anatomy, growth, density = (t.to(device) for t in batch)
        predicted = network(anatomy, parameter_features(growth, network.config))
        return surrogate_loss(predicted, density, anatomy[:, 2:3]), len(growth)

    def validation_loss() -> float:
        total = 0.0
        with torch.no_grad():
            for anatomy, growth, density in DataLoader(validation_set, batch_size=config.batch_size):
                anatomy, growth, density = anatomy.to(device), growth.to(device), density.to(device)
                predicted = network(anatomy, parameter_features(growth, network.config))
                total += float(surrogate_loss(predicted, density, anatomy[:, 2:3])) * len(growth)
        return total / len(validation_set)

    state = train_epochs(network, optimizer, generator, loader, batch_loss, validation_loss,
                         checkpoint=out_dir / CHECKPOINT_FILE, identity=identity,
                         checkpoint_format=_CHECKPOINT_FORMAT, max_epochs=config.max_epochs,
                         patience=config.patience, lr_patience=config.lr_patience, lr_factor=config.lr_factor,
                         device=device, progress=progress, desc="surrogate")
    validation = evaluate(network, validation_set, batch_size=config.batch_size)
    test = evaluate(network, test_set, batch_size=config.batch_size) if test_set is not None else None
    weights = out_dir / WEIGHTS_FILE
    save_surrogate(network, weights, provenance={
        "data_seed": data.data_seed, "dataset": data.manifest["config"], "anatomies": data.manifest["anatomies"],
        "training": json.loads(json.dumps(asdict(config))), "best_epoch": state.best_epoch,
        "train_loss": state.train_loss, "validation_loss": state.validation_loss,
        "validation_metrics": asdict(validation), "test_metrics": asdict(test) if test is not None else None})
    return TrainingResult(train_loss=tuple(state.train_loss), validation_loss=tuple(state.validation_loss),
                          best_epoch=state.best_epoch, stopped_early=state.stopped_early, validation=validation,
                          test=test, weights=weights, seconds_per_batch=state.seconds_per_batch,
                          wall_s=time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m personalize.surrogate.train DATA OUT [--preset cpu|gpu] [--device D] [--set key=value ...]``."""
    parser = argparse.ArgumentParser(prog="python -m personalize.surrogate.train", description=__doc__.split("\n")[0])
    parser.add_argument("data", help="dataset folder (python -m personalize.surrogate.dataset)")
    parser.add_argument("out", help="output folder: checkpoint and weights (an existing checkpoint is resumed)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training setting, e.g. skips=true, channels=8,16,32,32, max_epochs=20")
    args = parser.parse_args(argv)
    config = replace(PRESETS[args.preset], **dict(_setting(text) for text in args.set))
    result = train(args.data, args.out, config, device=args.device)
    print(f"best epoch {result.best_epoch + 1} of {len(result.train_loss)}; {result.seconds_per_batch:.3f} s per batch")
    print("validation:\n" + result.validation.table())
    if result.test is not None:
        print("test:\n" + result.test.table())
    print(f"weights: {result.weights}")


def _setting(text: str) -> tuple[str, object]:
    """``key=value`` of :class:`TrainingConfig`, the value parsed by the field's type."""
    key, _, value = text.partition("=")
    fields = TrainingConfig.__dataclass_fields__
    if key not in fields:
        raise ValueError(f"--set {text}: no setting {key!r}; settings: {', '.join(fields)}")
    default = getattr(CPU_TRAINING, key)
    if isinstance(default, bool):
        return key, value.lower() in ("1", "true", "yes")
    if isinstance(default, tuple):
        return key, tuple(int(v) for v in value.split(","))
    return key, type(default)(value)


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m personalize.surrogate.train"))
