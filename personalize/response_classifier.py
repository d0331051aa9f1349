"""A learned response classifier in the spirit of Dimou et al.'s CEUS-CNN: pre-treatment maps of a virtual patient
→ responsive / stable / non-responsive under one fixed schedule, trained on a simulated cohort with its natural
class imbalance, then again with simulated cases added to the under-represented classes.

    CohortDesign ──► simulate_cohort (personalize.response_cohort) ──► Cohort (inputs [N, 2, X, Y], classes)
    Cohort ──► train_classifier ──► ResponseClassifier ──► per_class_accuracy
    balancing_experiment: one held-out test set (natural imbalance) scored after training on the natural cohort and
    on it plus minority-class cases found among further prior draws (minority_cases)

The network (:class:`ClassifierArchitecture`): ``blocks`` of (3 × 3 convolution, batch norm, ReLU, 2 × 2 max
pooling; the last without pooling), ``width`` filters doubling per block, global average pooling and a linear head
to three logits; any grid of at least 2^(blocks − 1) cells. Inputs are min–max scaled per channel by the training
cases (:class:`simulators.surrogates.dent.MinMaxScaling`). Training (:func:`train_classifier`): cross-entropy,
Adam, batches drawn from ``seed``, each batch turned by a random element of the square's symmetry group (the model's
grid and stencils are invariant under it, so every turned case is as valid a case), the weights of the epoch with the
lowest validation loss kept, early stopping after ``patience`` epochs without improvement.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from tqdm.auto import tqdm

from personalize.executors import local_executor
from personalize.predictive.schedules import NOT_EVALUABLE
from personalize.response_cohort import (
    GROUP_NAMES,
    INPUT_CHANNELS,
    Cohort,
    CohortDesign,
    minority_cases,
    simulate_cohort,
)
from simulators.nifti import atomic_output
from simulators.surrogates.dent import MinMaxScaling

_FORMAT = "response-classifier-1"

@dataclass(frozen=True)
class ClassifierArchitecture:
    """``blocks`` convolution blocks of ``width``, 2·width, … filters (module docstring)."""

    width: int = 16
    blocks: int = 3

    def __post_init__(self) -> None:
        if self.width < 1 or self.blocks < 1:
            raise ValueError(f"width and blocks must be >= 1, got {self.width} and {self.blocks}")

    def network(self) -> nn.Sequential:
        layers: list[nn.Module] = []
        channels = len(INPUT_CHANNELS)
        for block in range(self.blocks):
            out = self.width * 2**block
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if block < self.blocks - 1:
                layers.append(nn.MaxPool2d(2))
            channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, len(GROUP_NAMES))]
        return nn.Sequential(*layers)


@dataclass(frozen=True)
class TrainingSettings:
    """How :func:`train_classifier` runs: Adam at ``learning_rate``, ``batch_size``, at most ``epochs``, early
    stopping after ``patience`` epochs without a lower validation loss, random symmetries of the square when
    ``augment``; ``seed`` initializes the weights and orders the batches."""

    architecture: ClassifierArchitecture = ClassifierArchitecture()
    epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 15
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or not self.learning_rate > 0:
            raise ValueError("epochs, batch_size, patience and learning_rate must be positive")


@dataclass(frozen=True, eq=False)
class TrainingHistory:
    """Per epoch: mean training loss, validation loss and accuracy (None without validation); the kept epoch."""

    train_loss: np.ndarray
    validation_loss: np.ndarray | None
    validation_accuracy: np.ndarray | None
    best_epoch: int
    wall_s: float


@dataclass(eq=False)
class ResponseClassifier:
    """The trained network and its input scaling; kept in evaluation mode on one device."""

    architecture: ClassifierArchitecture
    scaling: MinMaxScaling
    network: nn.Sequential

    def __post_init__(self) -> None:
        self.network.eval()

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def probabilities(self, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``[N, 3]`` (:data:`GROUP_NAMES` order) of ``inputs`` ``[N, 2, X, Y]``."""
        inputs = _check_inputs(inputs)
        with torch.inference_mode():
            out = [functional.softmax(self.network(self._scaled(inputs[i:i + batch_size])), dim=1).cpu()
                   for i in range(0, len(inputs), batch_size)]
        return torch.cat(out).numpy()

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """The most probable class of each case, as its position in :data:`GROUP_NAMES`."""
        return self.probabilities(inputs).argmax(axis=1)

    def _scaled(self, inputs: np.ndarray) -> torch.Tensor:
        return self.scaling.transform(torch.as_tensor(inputs, dtype=torch.float32, device=self.device))

    def save(self, path: str | os.PathLike[str]) -> None:
        """One ``.pt`` file: architecture, scaling and weights."""
        with atomic_output(path) as temporary:
            torch.save({"format": _FORMAT, "architecture": asdict(self.architecture), "scaling": asdict(self.scaling),
                        "network": self.network.state_dict()}, temporary)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> ResponseClassifier:
        """What :meth:`save` wrote (read with ``weights_only``)."""
        saved = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a response classifier saved by ResponseClassifier.save")
        architecture = ClassifierArchitecture(**saved["architecture"])
        network = architecture.network().to(device)
        network.load_state_dict(saved["network"])
        return cls(architecture, MinMaxScaling(**saved["scaling"]), network)


def train_classifier(inputs: np.ndarray, labels: np.ndarray, *,
                     validation: tuple[np.ndarray, np.ndarray] | None = None,
                     settings: TrainingSettings = TrainingSettings(), device: torch.device | str = "cpu",
                     checkpoint: str | os.PathLike[str] | None = None,
                     progress: bool = True) -> tuple[ResponseClassifier, TrainingHistory]:
    """Train the CNN on ``inputs`` ``[N, 2, X, Y]`` and ``labels`` ``[N]`` (positions in :data:`GROUP_NAMES`)
    by cross-entropy (module docstring). With ``validation`` (inputs, labels) the weights of the lowest validation
    loss are kept and training stops after ``settings.patience`` epochs without improvement; without, the last
    weights. ``checkpoint`` receives the kept classifier (:meth:`ResponseClassifier.save`) after every improvement.
    The global RNG is left alone.

    Raises:
        ValueError: inputs not ``[N, 2, X, Y]`` with finite values, labels of another length or outside 0–2.
    """
    inputs, labels = _check_inputs(inputs), _check_labels(labels, len(inputs))
    if validation is not None:
        held_out = _check_inputs(validation[0], inputs.shape[2:])
        validation = held_out, _check_labels(validation[1], len(held_out))
    started = time.perf_counter()
    scaling = MinMaxScaling.fit(inputs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        network = settings.architecture.network().to(device)
    classifier = ResponseClassifier(settings.architecture, scaling, network)
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    x = torch.as_tensor(inputs, dtype=torch.float32, device=device)
    y = torch.as_tensor(labels, device=device)
    train_loss, validation_loss, validation_accuracy = [], [], []
    best_loss, best_epoch, best_weights = math.inf, 0, copy.deepcopy(network.state_dict())
    with tqdm(range(settings.epochs), disable=not progress, desc="classifier", unit="epoch") as bar:
        for epoch in bar:
            network.train()
            order = torch.randperm(len(x), generator=generator)
            total = 0.0
            for start in range(0, len(order), settings.batch_size):
                rows = order[start:start + settings.batch_size]
                if len(rows) < 2 and len(order) > 1:
                    continue  # batch norm needs two cases
                batch = scaling.transform(x[rows])
                if settings.augment:
                    batch = _symmetry(batch, int(torch.randint(8, (1,), generator=generator)))
                loss = functional.cross_entropy(network(batch), y[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(rows)
            network.eval()
            train_loss.append(total / len(order))
            postfix = {"train": f"{train_loss[-1]:.3f}"}
            if validation is None:
                best_epoch, best_weights = epoch, network.state_dict()
                continue
            probabilities = classifier.probabilities(validation[0])
            loss = float(functional.nll_loss(torch.log(torch.as_tensor(probabilities).clamp_min(1e-12)),
                                             torch.as_tensor(validation[1])))
            validation_loss.append(loss)
            validation_accuracy.append(float(np.mean(probabilities.argmax(axis=1) == validation[1])))
            postfix |= {"validation": f"{loss:.3f}", "accuracy": f"{validation_accuracy[-1]:.2f}"}
            bar.set_postfix(postfix)
            if loss < best_loss:
                best_loss, best_epoch, best_weights = loss, epoch, copy.deepcopy(network.state_dict())
                if checkpoint is not None:
                    classifier.save(checkpoint)
            elif epoch - best_epoch >= settings.patience:
                break
    network.load_state_dict(best_weights)
    if checkpoint is not None:
        classifier.save(checkpoint)
    history = TrainingHistory(train_loss=np.array(train_loss),
                              validation_loss=np.array(validation_loss) if validation is not None else None,
                              validation_accuracy=np.array(validation_accuracy) if validation is not None else None,
                              best_epoch=best_epoch, wall_s=time.perf_counter() - started)
    return classifier, history


def per_class_accuracy(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """The share of each class's cases predicted as that class (its recall; None for a class without cases), and
    ``"overall"``, the share of all cases predicted right."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    scores: dict[str, float | None] = {
        name: float(np.mean(predicted[labels == k] == k)) if np.any(labels == k) else None
        for k, name in enumerate(GROUP_NAMES)}
    scores["overall"] = float(np.mean(predicted == labels)) if len(labels) else None
    return scores


@dataclass(frozen=True)
class TrainedScores:
    """One training run of the experiment: its training class counts, test accuracies, kept and last epoch."""

    train_counts: dict[str, int]
    accuracy: dict[str, float | None]
    best_epoch: int
    epochs: int
    wall_s: float


@dataclass(frozen=True)
class BalancingResult:
    """:func:`balancing_experiment`'s outcome (all counts exclude NE unless named so)."""

    criteria: str
    natural_counts: dict[str, int]
    natural_proportions: dict[str, float]
    not_evaluable: int
    test_counts: dict[str, int]
    validation_counts: dict[str, int]
    minority: tuple[str, ...]
    extra_draws: int
    majority_baseline: float
    imbalanced: TrainedScores
    balanced: TrainedScores
    settings: dict

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def balancing_experiment(design: CohortDesign, out_dir: str | os.PathLike[str], n_cases: int, *,
                         test_fraction: float = 0.25, validation_fraction: float = 0.15,
                         settings: TrainingSettings = TrainingSettings(), max_extra_cases: int = 2000,
                         workers: int = 1, device: torch.device | str = "cpu", split_seed: int = 0,
                         progress: bool = True) -> BalancingResult:
    """Dimou et al.'s experiment on a simulated cohort (module docstring).

    Cases 0 … ``n_cases`` − 1 (the natural cohort; NE dropped) are split at random (``split_seed``) into test,
    validation and training sets, each keeping the natural imbalance. The classifier is trained on the training
    set (imbalanced), then, from the same seed, on it plus synthetic cases of every class smaller than the largest
    (the minority classes), found by :func:`minority_cases` among draws from ``n_cases`` on until each class has as
    many training cases as the largest (or ``max_extra_cases`` draws were spent). Both are scored on the same test
    set. Checkpoints ``classifier_imbalanced.pt`` and ``classifier_balanced.pt`` go to ``out_dir``.

    Raises:
        ValueError: bad fractions, too few evaluable cases to split, ``n_cases`` < 1.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    if not (0 < test_fraction < 1 and 0 < validation_fraction < 1 and test_fraction + validation_fraction < 1):
        raise ValueError("test_fraction and validation_fraction must be in (0, 1) and sum to less than 1")
    out_dir = Path(out_dir)
    executor = local_executor(workers)
    try:
        cohort, _ = simulate_cohort(design, out_dir, range(n_cases), executor=executor, progress=progress)
        evaluable = cohort.evaluable()
        order = np.random.default_rng(split_seed).permutation(len(evaluable))
        n_test, n_validation = round(test_fraction * len(order)), round(validation_fraction * len(order))
        if min(n_test, n_validation, len(order) - n_test - n_validation) < 2:
            raise ValueError(f"{len(evaluable)} evaluable cases of {n_cases} are too few to split")
        test = evaluable.subset(order[:n_test])
        validation = evaluable.subset(order[n_test:n_test + n_validation])
        train = evaluable.subset(order[n_test + n_validation:])
        counts = _counts(train)
        largest = max(counts.values())
        wanted = {name: largest - count for name, count in counts.items() if count < largest}
        extra, draws = minority_cases(design, out_dir, wanted, first_index=n_cases, max_cases=max_extra_cases,
                                      executor=executor, progress=progress) if wanted else (None, 0)
    finally:
        if executor is not None:
            executor.shutdown()
    runs = {}
    for name, training in (("imbalanced", train), ("balanced", Cohort.concatenate([train, extra]) if extra is not None else train)):
        classifier, history = train_classifier(training.inputs, training.labels,
                                               validation=(validation.inputs, validation.labels), settings=settings,
                                               device=device, checkpoint=out_dir / f"classifier_{name}.pt",
                                               progress=progress)
        runs[name] = TrainedScores(train_counts=_counts(training),
                                   accuracy=per_class_accuracy(classifier.predict(test.inputs), test.labels),
                                   best_epoch=history.best_epoch, epochs=len(history.train_loss),
                                   wall_s=history.wall_s)
    natural = _counts(evaluable)
    test_counts = _counts(test)
    return BalancingResult(
        criteria=design.criteria, natural_counts=natural,
        natural_proportions={name: count / len(evaluable) for name, count in natural.items()},
        not_evaluable=len(cohort) - len(evaluable), test_counts=test_counts, validation_counts=_counts(validation),
        minority=tuple(wanted), extra_draws=draws, majority_baseline=max(test_counts.values()) / len(test),
        imbalanced=runs["imbalanced"], balanced=runs["balanced"],
        settings={"n_cases": n_cases, "test_fraction": test_fraction, "validation_fraction": validation_fraction,
                  "max_extra_cases": max_extra_cases, "split_seed": split_seed, "training": asdict(settings),
                  "cohort": design.settings()})


def _counts(cohort: Cohort) -> dict[str, int]:
    return {name: count for name, count in cohort.counts().items() if name != NOT_EVALUABLE}


def _symmetry(batch: torch.Tensor, element: int) -> torch.Tensor:
    """``batch`` ``[B, C, X, Y]`` turned by one of the square's eight symmetries (rotations, then a flip)."""
    turned = torch.rot90(batch, element % 4, dims=(2, 3))
    return torch.flip(turned, dims=(3,)) if element >= 4 else turned


def _check_inputs(inputs: np.ndarray, grid: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(inputs, dtype=np.float32)
    if array.ndim != 4 or array.shape[1] != len(INPUT_CHANNELS) or len(array) == 0:
        raise ValueError(f"inputs must be [N >= 1, {len(INPUT_CHANNELS)} ({', '.join(INPUT_CHANNELS)}), X, Y], got "
                         f"shape {np.shape(inputs)}")
    if grid is not None and array.shape[2:] != tuple(grid):
        raise ValueError(f"inputs must be on the training grid {tuple(grid)}, got {array.shape[2:]}")
    if not np.all(np.isfinite(array)):
        raise ValueError("inputs hold NaN or infinite values")
    return array


def _check_labels(labels: np.ndarray, n: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer) or \
            (n and (array.min() < 0 or array.max() >= len(GROUP_NAMES))):
        raise ValueError(f"labels must be {n} integers in 0 … {len(GROUP_NAMES) - 1} ({', '.join(GROUP_NAMES)}), "
                         f"got shape {array.shape}, dtype {array.dtype}")
    return array.astype(np.int64)
