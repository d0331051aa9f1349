"""Trained surrogate weights on disk: a state dict and a JSON record beside it that vouches for it
(:mod:`personalize.checked_weights`).

The record holds the :class:`simulators.surrogates.geometry_aware.SurrogateConfig` (the cube, the parameter box,
the architecture), the dataset's configuration, data seed and anatomies, the training configuration, the losses,
and the validation and test metrics. :func:`load_surrogate` checks the file's SHA-256 and reads it with
``weights_only=True`` before building the network the record describes.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from personalize.checked_weights import load_checked, save_checked
from simulators.surrogates.geometry_aware import (
    GeometryAwareNetwork,
    GeometryAwareSurrogate,
    SurrogateConfig,
    build_network,
)

PathLike = str | os.PathLike[str]

FORMAT = "surrogate-weights/1"

SHIPPED_SURROGATE = Path(__file__).parent / "shipped" / "surrogate.pt"
"""The surrogate weights shipped with the package, beside their record: made by this repository's own commands,
``python -m personalize.surrogate.dataset`` then ``python -m personalize.surrogate.train`` with the CPU presets
(32³ cubes of 4 mm); their metrics are in ``docs/surrogate.md`` and in the record. ``--simulator surrogate`` uses
them when no ``--surrogate-weights`` is given."""


def save_surrogate(network: GeometryAwareNetwork, path: PathLike, *, provenance: dict[str, Any]) -> Path:
    """Write ``network``'s state dict to ``path`` and its record (its configuration and ``provenance``) beside it;
    return the record's path.

    Raises:
        ValueError: ``provenance`` sets a key this function writes.
    """
    reserved = {"format", "weights_file", "sha256", "network", "parameter_count"}
    if reserved & set(provenance):
        raise ValueError(f"provenance must not set {sorted(reserved & set(provenance))}: save_surrogate writes them")
    return save_checked(network.state_dict(), path, {
        "format": FORMAT, "network": asdict(network.config),
        "parameter_count": sum(p.numel() for p in network.parameters()), **provenance})


def load_surrogate(path: PathLike, *, device: torch.device | str = "cpu",
                   batch_size: int = 16) -> tuple[GeometryAwareSurrogate, dict[str, Any]]:
    """The surrogate saved at ``path`` (on ``device``, as a ``Simulator``) and its record.

    Raises:
        ValueError: naming the file, when its record is missing or of another format, its SHA-256 differs from the
            recorded one, or its state dict does not fit the recorded architecture.
    """
    state, record = load_checked(path, FORMAT, device=device)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in record["network"].items()}
    config = SurrogateConfig(**fields)
    network = build_network(config, seed=0, device=device)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path}: its state dict does not fit {config}: {error}") from None
    return GeometryAwareSurrogate(network, batch_size=batch_size), record
