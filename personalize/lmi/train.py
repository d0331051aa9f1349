"""Training of the Learn-Morph-Infer inverse network on a dataset of :mod:`personalize.lmi.dataset`.

Ezhov et al., Medical Image Analysis 83:102672 (2023), arXiv:2111.04090. The network
(:mod:`personalize.lmi.network`) regresses the scaled (μ₁, μ₂, x, y, z) from the input volume. Here:

- loss: L1 (mean absolute error over the five scaled outputs), as in LMI's published training code. A scan
  does not always determine its target (a tumour whose FLAIR edge reaches the brain's boundary bounds μ₁ only
  from below; a uniform T1Gd core hides where in it the seed was): L1 then regresses to the conditional
  median, where MSE would regress to the mean and weigh such cases quadratically;
- optimiser: AdamW (decoupled weight decay; Loshchilov and Hutter, ICLR 2019); the learning rate halves whenever
  the validation loss has not improved for ``lr_patience`` epochs (measured: at a constant 1e-3 the validation
  loss of the CPU preset stopped improving after 3 epochs and swung by ±0.005 from epoch to epoch);
- data: the dataset's shards split deterministically into training, validation and test sets
  (:func:`personalize.lmi.dataset.split_shards` with the training seed); batches drawn in an order from a
  generator seeded by the training seed, whose state the checkpoint keeps;
- a checkpoint ``checkpoint.pt`` after every epoch (weights, optimiser, generator, losses, best weights);
  ``train`` on a folder that has one continues from it, to the same result as an uninterrupted run. It refuses a
  checkpoint of another dataset or configuration, except that ``max_epochs`` may be raised to train longer;
- early stopping: training ends once the validation loss has not improved for ``patience`` epochs, and the
  weights of the best validation epoch are kept;
- at the end, the test metrics of :mod:`personalize.lmi.metrics`, and the weights with their record
  (:func:`personalize.lmi.weights.save_weights`) as ``lmi_network.pt`` / ``lmi_network.json``.

Sizing (:data:`CPU_TRAINING`): measured on this 2-core machine with another job keeping both cores busy, one
torch thread, the 4 mm dataset (39 × 49 × 40 inputs), batch 16, channels (16, 32, 64, 128) (903,061
parameters): 0.570 s per training batch (forward, backward and AdamW step; mean of the 8 batches of a 2-epoch
:func:`train` on 6 shards) and about 0.18 s to predict a batch. With
:data:`personalize.lmi.dataset.CPU_SHARDS` (2,400 samples: 120 training batches and 15 validation batches an
epoch) an epoch takes about 120 × 0.57 + 15 × 0.18 ≈ 71 s, so the 80 epochs of ``max_epochs`` take at most
≈ 1.6 h, less when early stopping ends them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional
from torch.utils.data import DataLoader

from personalize.lmi.dataset import ShardDataset, open_dataset, split_shards
from personalize.lmi.metrics import TestMetrics, evaluate_test_set, predict_dataset
from personalize.lmi.network import NetworkConfig, build_network, parameter_count
from personalize.lmi.weights import save_weights
from personalize.module_command import run_command
from personalize.shards import shard_index
from personalize.training import check_optimisation, train_epochs

CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "lmi_network.pt"
_CHECKPOINT_FORMAT = "lmi-checkpoint/1"


@dataclass(frozen=True)
class TrainingConfig:
    """How to train (module docstring for the loss, optimiser and stopping rule).

    Attributes:
        network: architecture.
        batch_size: samples per step (the last partial batch of an epoch is dropped when there is more than one).
        max_epochs: epochs at most.
        learning_rate, weight_decay: AdamW's.
        patience: epochs without a lower validation loss before training stops.
        lr_patience, lr_factor: epochs without a lower validation loss before the learning rate is multiplied by
            ``lr_factor``.
        split: fractions of shards for training, validation and test.
        seed: initial weights, the split and the batch order.
        evaluation_cases: test samples whose densities are grown from the prediction and compared.
    """

    network: NetworkConfig = NetworkConfig()
    batch_size: int = 16
    max_epochs: int = 80
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 10
    lr_patience: int = 3
    lr_factor: float = 0.5
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    evaluation_cases: int = 8

    def __post_init__(self) -> None:
        check_optimisation(self)
        if isinstance(self.evaluation_cases, bool) or not isinstance(self.evaluation_cases, int) \
                or self.evaluation_cases < 1:
            raise ValueError(f"evaluation_cases must be a positive integer, got {self.evaluation_cases!r}")
        object.__setattr__(self, "split", tuple(float(f) for f in self.split))


CPU_TRAINING = TrainingConfig(evaluation_cases=240)
"""Sized for about 2 h or less on a 2-core CPU with :data:`personalize.lmi.dataset.CPU_DATASET` and
:data:`~personalize.lmi.dataset.CPU_SHARDS` shards (the module docstring has the measurement). Its test table
grows the densities of the whole test set (15 shards of 16: 240 samples, two 4 mm simulations each)."""
GPU_TRAINING = TrainingConfig(network=NetworkConfig(channels=(32, 64, 128, 256), blocks_per_stage=2),
                              batch_size=64, max_epochs=200, patience=20, evaluation_cases=64)
"""Full scale, for :data:`personalize.lmi.dataset.GPU_DATASET` (2 mm, 30,080 samples) on one GPU: a wider,
deeper network (two blocks a stage as ResNet-18; 8,299,173 parameters against the CPU network's 903,061),
batches of 64. Not run here; its time is not measured."""
PRESETS = {"cpu": CPU_TRAINING, "gpu": GPU_TRAINING}


@dataclass(frozen=True)
class TrainingResult:
    """Losses per epoch (L1, scaled units), the kept epoch, whether early stopping ended training, the test
    metrics, the weights file, the mean seconds per training batch of this call (NaN when it trained none)
    and its wall time."""

    train_loss: tuple[float, ...]
    validation_loss: tuple[float, ...]
    best_epoch: int
    stopped_early: bool
    test: TestMetrics
    weights: Path
    seconds_per_batch: float
    wall_s: float


def train(dataset_dir: str | Path, out_dir: str | Path, config: TrainingConfig = CPU_TRAINING, *,
          device: torch.device | str = "cpu", progress: bool = True) -> TrainingResult:
    """Train on the dataset in ``dataset_dir``, writing the checkpoint and the weights into ``out_dir``.

    Runs on ``device``; the test densities are simulated on the CPU. Continues from ``out_dir``'s checkpoint when
    there is one (module docstring).

    Raises:
        ValueError: a dataset that cannot be opened or split; a checkpoint of another dataset or configuration.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = open_dataset(dataset_dir)
    by_index = {shard_index(path): path for path in dataset.shards}
    split = split_shards(list(by_index), config.split, config.seed)
    train_set, validation_set, test_set = (ShardDataset([by_index[i] for i in part])
                                           for part in (split.train, split.validation, split.test))
    fixed = {key: value for key, value in asdict(config).items() if key != "max_epochs"}
    identity = json.dumps({"training": fixed, "dataset": dataset.manifest, "shards": sorted(by_index)}, sort_keys=True)

    network = build_network(config.network, seed=config.seed, device=device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator,
                        drop_last=len(train_set) > config.batch_size)
    validation_targets = torch.from_numpy(validation_set.targets)

    def batch_loss(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        inputs, targets = batch
        return functional.l1_loss(network(inputs.to(device)), targets.to(device)), len(targets)

    def validation_loss() -> float:
        predicted = predict_dataset(network, validation_set, batch_size=config.batch_size)
        return float(functional.l1_loss(predicted, validation_targets))

    state = train_epochs(network, optimizer, generator, loader, batch_loss, validation_loss,
                         checkpoint=out_dir / CHECKPOINT_FILE, identity=identity,
                         checkpoint_format=_CHECKPOINT_FORMAT, max_epochs=config.max_epochs,
                         patience=config.patience, lr_patience=config.lr_patience, lr_factor=config.lr_factor,
                         device=device, progress=progress, desc="LMI")
    test = evaluate_test_set(network, test_set, dataset.ranges, dataset.anatomy, dataset.config.simulator,
                             cases=config.evaluation_cases, batch_size=config.batch_size)
    weights = out_dir / WEIGHTS_FILE
    save_weights(network, weights, ranges=dataset.ranges, provenance={
        "data_seed": dataset.data_seed, "dataset": dataset.manifest["config"], "anatomy": dataset.manifest["anatomy"],
        "split": asdict(split), "training": json.loads(json.dumps(asdict(config))),
        "best_epoch": state.best_epoch, "test_metrics": asdict(test)})
    return TrainingResult(train_loss=tuple(state.train_loss), validation_loss=tuple(state.validation_loss),
                          best_epoch=state.best_epoch, stopped_early=state.stopped_early, test=test, weights=weights,
                          seconds_per_batch=state.seconds_per_batch, wall_s=time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m personalize.lmi.train DATASET OUT [--preset cpu|gpu] [--device DEVICE]``."""
    parser = argparse.ArgumentParser(prog="python -m personalize.lmi.train", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="dataset folder (python -m personalize.lmi.dataset)")
    parser.add_argument("out", help="output folder: checkpoint and weights (an existing checkpoint is resumed)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    args = parser.parse_args(argv)
    config = PRESETS[args.preset]
    print(f"network: {parameter_count(build_network(config.network, seed=config.seed)):,} parameters")
    result = train(args.dataset, args.out, config, device=args.device)
    print(f"best epoch {result.best_epoch + 1} of {len(result.train_loss)}; {result.seconds_per_batch:.3f} s per batch")
    print("test MAE: " + ", ".join(f"{name} {value:.3g}" for name, value in result.test.mae.items()))
    print(result.test.table())
    print(f"weights: {result.weights}")


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m personalize.lmi.train"))
