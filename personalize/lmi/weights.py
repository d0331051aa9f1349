"""Trained Learn-Morph-Infer weights on disk: a state dict and a JSON record beside it that vouches for it
(:mod:`personalize.checked_weights`).

``<name>.pt`` holds the network's state dict (tensors only); ``<name>.json`` holds what the weights mean and
where they came from: the :class:`personalize.lmi.network.NetworkConfig`, the output names and the ranges that
unscale them (:class:`personalize.lmi.parameters.OutputRanges`), the dataset's configuration, data seed and
anatomy, the training configuration, the test metrics, and the SHA-256 of the ``.pt`` file.
:func:`load_weights` recomputes that SHA-256 before reading the file and reads it with
``torch.load(..., weights_only=True)``, so a file changed since it was saved, or one that would run code, is
refused. (Ezhov et al., Learn-Morph-Infer, Med Image Anal 83:102672, 2023, arXiv:2111.04090, for the network.)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from personalize.checked_weights import load_checked, save_checked
from personalize.lmi.network import InverseNetwork, NetworkConfig, build_network, parameter_count
from personalize.lmi.parameters import OUTPUT_NAMES, OutputRanges

PathLike = str | os.PathLike[str]

FORMAT = "lmi-weights/1"

SHIPPED_WEIGHTS = Path(__file__).parent / "shipped" / "lmi_network.pt"
"""The weights shipped with the package, beside their record: made by this repository's own commands,
``python -m personalize.lmi.dataset OUT --preset cpu --seed 0`` then ``python -m personalize.lmi.train OUT W
--preset cpu`` (the 4 mm MNI152 atlas, 2,400 simulated tumours); their test table is in ``docs/lmi.md`` and in
the record's ``test_metrics``. ``personalize fit --method lmi`` uses them when no ``--weights`` is given."""


@dataclass(frozen=True, eq=False)
class LoadedWeights:
    """A network read by :func:`load_weights` (evaluation mode), its output ranges and its JSON record."""

    network: InverseNetwork
    ranges: OutputRanges
    record: dict[str, Any]


def save_weights(network: InverseNetwork, path: PathLike, *, ranges: OutputRanges,
                 provenance: dict[str, Any]) -> Path:
    """Write ``network``'s state dict to ``path`` and its record to :func:`record_path` ``(path)``, atomically.

    Args:
        network: the trained network.
        path: the weights file (``.pt``).
        ranges: the output ranges its targets were scaled by.
        provenance: JSON-serialisable facts to keep with it (dataset configuration and data seed, training
            configuration, test metrics); stored as given under their keys.

    Returns:
        The record's path.
    """
    reserved = {"format", "weights_file", "sha256", "network", "parameter_count", "output_names", "ranges"}
    if reserved & set(provenance):
        raise ValueError(f"provenance must not set {sorted(reserved & set(provenance))}: save_weights writes them")
    return save_checked(network.state_dict(), path, {
        "format": FORMAT, "network": asdict(network.config), "parameter_count": parameter_count(network),
        "output_names": list(OUTPUT_NAMES), "ranges": {"low": list(ranges.low), "high": list(ranges.high)},
        **provenance})


def load_weights(path: PathLike, *, config: NetworkConfig | None = None,
                 device: torch.device | str = "cpu") -> LoadedWeights:
    """The network saved at ``path`` by :func:`save_weights`, on ``device``, in evaluation mode.

    Args:
        path: the weights file; its record must lie beside it.
        config: the architecture the caller expects; None accepts the recorded one.
        device: where the network goes.

    Raises:
        ValueError: naming the file, when its record is missing or of another format, its SHA-256 differs from
            the recorded one (the file changed since it was saved), ``config`` differs from the recorded
            architecture, or the state dict does not fit that architecture.
    """
    state, record = load_checked(path, FORMAT, device=device)
    recorded = NetworkConfig(**record["network"])
    if config is not None and config != recorded:
        raise ValueError(f"{path}: saved for {recorded}, but {config} was asked for")
    network = build_network(recorded, seed=0, device=device)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path}: its state dict does not fit {recorded}: {error}") from None
    network.eval()
    ranges = OutputRanges(low=tuple(record["ranges"]["low"]), high=tuple(record["ranges"]["high"]))
    return LoadedWeights(network=network, ranges=ranges, record=record)
