"""Network weights on disk with a JSON record beside them that vouches for them.

``<name>.pt`` holds a state dict (tensors only); ``<name>.json`` holds what the weights mean and where they came
from (the caller's record: architecture, training data, test metrics) plus the ``.pt`` file's SHA-256.
:func:`load_checked` recomputes that SHA-256 before reading the file and reads it with
``torch.load(..., weights_only=True)``, so a file changed since it was saved, or one that would run code, is
refused. Used by :mod:`personalize.lmi.weights` and :mod:`personalize.surrogate.weights`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from simulators.nifti import atomic_output

PathLike = str | os.PathLike[str]


def record_path(weights: PathLike) -> Path:
    """The JSON record beside a weights file: the same name with ``.json``."""
    return Path(weights).with_suffix(".json")


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checked(state: dict[str, torch.Tensor], path: PathLike, record: dict[str, Any]) -> Path:
    """Write ``state`` (moved to the CPU) to ``path`` and ``record`` with ``weights_file`` and ``sha256`` added to
    :func:`record_path` ``(path)``, both atomically; return the record's path.

    Raises:
        ValueError: ``record`` sets ``weights_file`` or ``sha256`` itself, or is not JSON (NaN included).
    """
    path = Path(path)
    if {"weights_file", "sha256"} & set(record):
        raise ValueError("the record must not set weights_file or sha256: save_checked writes them")
    with atomic_output(path) as temporary:
        torch.save({name: tensor.detach().cpu() for name, tensor in state.items()}, temporary)
    text = json.dumps({**record, "weights_file": path.name, "sha256": file_sha256(path)}, indent=2,
                      allow_nan=False) + "\n"
    with atomic_output(record_path(path)) as temporary:
        temporary.write_text(text)
    return record_path(path)


def load_checked(path: PathLike, fmt: str, *, device: torch.device | str = "cpu") -> tuple[dict[str, Any],
                                                                                           dict[str, Any]]:
    """The state dict at ``path`` (on ``device``) and its record, after checking the record's ``format`` is ``fmt``
    and the file's SHA-256 is the recorded one.

    Raises:
        ValueError: naming the file, when its record is missing or of another format, or its SHA-256 differs from
            the recorded one (the file changed since it was saved).
    """
    path = Path(path)
    record_file = record_path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    if not record_file.is_file():
        raise ValueError(f"{path}: no record {record_file.name} beside it; weights are only loaded with the record "
                         "they were saved with")
    record = json.loads(record_file.read_text())
    if record.get("format") != fmt:
        raise ValueError(f"{record_file}: format {record.get('format')!r}, expected {fmt!r}")
    actual = file_sha256(path)
    if actual != record["sha256"]:
        raise ValueError(f"{path}: SHA-256 {actual} differs from {record['sha256']} recorded in {record_file.name}; "
                         "the file changed since it was saved, refusing to load it")
    return torch.load(path, map_location=device, weights_only=True), record
