"""The epoch loop the toolkit's networks are trained with: a checkpoint every epoch, resuming, early stopping.

One loop serves :mod:`personalize.lmi.train` and :mod:`personalize.surrogate.train`:

- each epoch runs the optimiser over the training loader (its batch order drawn from ``generator``), then
  computes the validation loss; the weights of the lowest validation loss so far are kept;
- a checkpoint (weights, optimiser, generator state, losses, best weights) is written atomically after every
  epoch; :func:`train_epochs` on a checkpoint continues from it, to the same result as an uninterrupted run, and
  refuses one whose ``identity`` (a JSON string of the dataset and of the configuration less ``max_epochs``)
  differs, so that only the number of epochs may change on resuming;
- the learning rate is multiplied by ``lr_factor`` whenever the validation loss has not improved for
  ``lr_patience`` epochs (``torch.optim.lr_scheduler.ReduceLROnPlateau``; its state is checkpointed too);
- early stopping: training ends once the validation loss has not improved for ``patience`` epochs
  (Prechelt, "Early stopping — but when?", Neural Networks: Tricks of the Trade, 1998).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from simulators.nifti import atomic_output

_STATE_KEYS = ("epoch", "train_loss", "validation_loss", "best_validation", "best_epoch", "best_network",
               "stopped_early")


@dataclass
class EpochState:
    """Where training stands: epochs done, losses per epoch, the best validation loss, its epoch and weights,
    whether early stopping ended it, and the seconds each training batch of this call took."""

    epoch: int = 0
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_validation: float = math.inf
    best_epoch: int = -1
    best_network: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False
    batch_seconds: list[float] = field(default_factory=list)

    @property
    def seconds_per_batch(self) -> float:
        """Mean seconds per training batch of this call (NaN when it trained none)."""
        return sum(self.batch_seconds) / len(self.batch_seconds) if self.batch_seconds else math.nan


def check_optimisation(config: Any) -> None:
    """Check the optimisation fields a training configuration holds: ``batch_size``, ``max_epochs`` and
    ``patience`` positive integers, ``lr_patience`` a non-negative integer, ``lr_factor`` in (0, 1],
    ``learning_rate`` > 0 and ``weight_decay`` >= 0.

    Raises:
        ValueError: naming the first field that is not so.
    """
    for name in ("batch_size", "max_epochs", "patience"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(config.lr_patience, bool) or not isinstance(config.lr_patience, int) or config.lr_patience < 0:
        raise ValueError(f"lr_patience must be a non-negative integer, got {config.lr_patience!r}")
    if not 0 < config.lr_factor <= 1:
        raise ValueError(f"lr_factor must lie in (0, 1], got {config.lr_factor}")
    if not (config.learning_rate > 0 and config.weight_decay >= 0):
        raise ValueError(f"learning_rate must be > 0 and weight_decay >= 0, got {config.learning_rate}, "
                         f"{config.weight_decay}")


def train_epochs(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    batches: Iterable[Any],
    batch_loss: Callable[[Any], tuple[torch.Tensor, int]],
    validation_loss: Callable[[], float],
    *,
    checkpoint: Path,
    identity: str,
    checkpoint_format: str,
    max_epochs: int,
    patience: int,
    lr_patience: int,
    lr_factor: float,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "train",
) -> EpochState:
    """Train ``network`` (module docstring) and leave the best validation epoch's weights in it.

    Args:
        network, optimizer: what is trained and how.
        generator: the generator the training loader shuffles with; its state is checkpointed.
        batches: the training loader (iterated once per epoch).
        batch_loss: the mean loss of one batch from ``batches`` and the number of samples in it.
        validation_loss: the validation loss of ``network`` as it is now.
        checkpoint: the checkpoint file (continued from when it exists).
        identity: what the checkpoint must belong to (module docstring).
        checkpoint_format: the format string of this kind of checkpoint.
        max_epochs, patience: when to stop.
        lr_patience, lr_factor: when and how much to lower the learning rate.
        device: where the checkpoint's tensors are loaded to.
        progress: progress bars over epochs and batches.
        desc: the progress bar's label.

    Raises:
        ValueError: a checkpoint of another format or identity.
        RuntimeError: the validation loss was never finite (training diverged).
    """
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=lr_factor, patience=lr_patience)
    state = _resume(checkpoint, identity, checkpoint_format, network, optimizer, scheduler, generator, device)
    with tqdm(total=max_epochs, initial=state.epoch, disable=not progress, desc=desc, unit="epoch") as bar:
        while state.epoch < max_epochs and not state.stopped_early:
            network.train()
            total, count = 0.0, 0
            for batch in tqdm(batches, disable=not progress, desc=f"epoch {state.epoch + 1}", unit="batch",
                              leave=False):
                tick = time.perf_counter()
                loss, samples = batch_loss(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                state.batch_seconds.append(time.perf_counter() - tick)
                total, count = total + float(loss.detach()) * samples, count + samples
            network.eval()
            validation = validation_loss()
            scheduler.step(validation)
            state.train_loss.append(total / count)
            state.validation_loss.append(validation)
            if validation < state.best_validation:
                state.best_validation, state.best_epoch = validation, state.epoch
                state.best_network = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
            state.epoch += 1
            state.stopped_early = state.epoch - 1 - state.best_epoch >= patience
            _write_checkpoint(checkpoint, identity, checkpoint_format, state, network, optimizer, scheduler, generator)
            bar.update()
            bar.set_postfix(train=f"{state.train_loss[-1]:.4f}", validation=f"{validation:.4f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.2g}")
    if state.best_network is None:
        raise RuntimeError(f"the validation loss was never finite ({state.validation_loss}): training diverged")
    network.load_state_dict(state.best_network)
    network.eval()
    return state


def _resume(path: Path, identity: str, checkpoint_format: str, network: torch.nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
            generator: torch.Generator, device: torch.device | str) -> EpochState:
    """The training state: fresh, or read from the checkpoint at ``path`` into ``network``, ``optimizer``,
    ``scheduler`` and ``generator`` after checking it belongs to this dataset and configuration."""
    if not path.exists():
        return EpochState()
    saved = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != checkpoint_format:
        raise ValueError(f"{path}: not a {checkpoint_format} training checkpoint")
    if saved["identity"] != identity:
        raise ValueError(f"{path}: a checkpoint of another dataset or training configuration (only max_epochs may "
                         "change on resuming); use another output folder")
    network.load_state_dict(saved["network"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    generator.set_state(saved["generator"])
    return EpochState(**{key: saved[key] for key in _STATE_KEYS})


def _write_checkpoint(path: Path, identity: str, checkpoint_format: str, state: EpochState, network: torch.nn.Module,
                      optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
                      generator: torch.Generator) -> None:
    saved = {key: getattr(state, key) for key in _STATE_KEYS}
    with atomic_output(path) as temporary:
        torch.save({"format": checkpoint_format, "identity": identity, **saved, "network": network.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state()}, temporary)
