"""Simulated training sets kept as numbered ``.npz`` shards beside a ``manifest.json``: reproducible, resumable.

A dataset folder holds ``manifest.json`` (what the shards are: configuration, data seed, anatomy; JSON) and
``shard_00000.npz`` … Shard i is drawn from a generator seeded by ``(data_seed, i)`` alone
(:func:`shard_seed`), so its content does not depend on which shards were written before, on the number of
workers, or on the order they finish in; :func:`write_shards` skips shards already on disk, and each shard is
written atomically, so a killed run continues where it stopped. :func:`claim_folder` refuses to mix two
configurations in one folder. Used by :mod:`personalize.lmi.dataset` and :mod:`personalize.surrogate.dataset`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from personalize.executors import local_executor
from simulators.anatomy import Anatomy
from simulators.nifti import atomic_output

PathLike = str | os.PathLike[str]

MANIFEST_FILE = "manifest.json"
_SHARD_NAME = re.compile(r"shard_(\d{5})\.npz")


def shard_seed(data_seed: int, index: int) -> int:
    """The seed of shard ``index``: an independent stream per (data seed, shard index)."""
    return int(np.random.SeedSequence([data_seed, index]).generate_state(1, np.uint64)[0])


def shard_path(directory: PathLike, index: int) -> Path:
    return Path(directory) / f"shard_{index:05d}.npz"


def shard_paths(directory: PathLike) -> tuple[Path, ...]:
    """The shard files in ``directory``, by index."""
    return tuple(sorted(path for path in Path(directory).iterdir() if _SHARD_NAME.fullmatch(path.name)))


def shard_index(path: PathLike) -> int:
    """The index in a shard file's name."""
    match = _SHARD_NAME.fullmatch(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a shard file name (shard_00000.npz)")
    return int(match.group(1))


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` as a compressed ``.npz``, atomically."""
    with atomic_output(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_shards(paths: Sequence[PathLike], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of the shards at ``paths``, each concatenated along its first axis in the order of
    ``paths``.

    Raises:
        ValueError: no path, or shards whose arrays ``names[0]`` differ in shape beyond the first axis (not one
            dataset).
    """
    if not paths:
        raise ValueError("no shard files given")
    arrays: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for path in paths:
        with np.load(path) as shard:
            for name, values in arrays.items():
                values.append(shard[name])
    shapes = {a.shape[1:] for a in arrays[names[0]]}
    if len(shapes) != 1:
        raise ValueError(f"shards of different {names[0]} shapes {sorted(shapes)}: not one dataset")
    return {name: np.concatenate(values) for name, values in arrays.items()}


def claim_folder(directory: Path, wanted: dict[str, Any], what: str) -> None:
    """Write ``wanted`` as ``directory``'s manifest, or refuse a folder whose manifest differs from it (naming the
    keys that differ, and those of ``wanted["config"]`` one by one) or that holds shards without a manifest.
    ``what`` names the dataset in messages ("an LMI dataset")."""
    path = directory / MANIFEST_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != wanted:
            changed = [f"config.{key}" for key in wanted.get("config", {})
                       if stored.get("config", {}).get(key) != wanted["config"][key]]
            changed += [key for key in wanted if key != "config" and stored.get(key) != wanted[key]]
            raise ValueError(f"{directory} holds {what} of another configuration ({', '.join(changed)} differ); "
                             "resume with the configuration and data seed in its manifest.json, or use another "
                             "folder")
    elif directory.exists() and shard_paths(directory):
        raise ValueError(f"{directory} holds shard files but no {MANIFEST_FILE}: their configuration is unknown; "
                         "use another folder")
    else:
        with atomic_output(path) as temporary:
            temporary.write_text(json.dumps(wanted, indent=2) + "\n")


def read_manifest(directory: PathLike, fmt: str, what: str) -> dict[str, Any]:
    """``directory``'s manifest, checked to be of format ``fmt``.

    Raises:
        ValueError: no manifest, or one of another format.
    """
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(f"{directory}: no {MANIFEST_FILE}; not {what} folder")
    stored = json.loads(path.read_text())
    if stored.get("format") != fmt:
        raise ValueError(f"{path}: format {stored.get('format')!r}, expected {fmt!r}")
    return stored


@dataclass(frozen=True)
class GeneratedShards:
    """Shards ``0 … shards − 1`` of a dataset folder, those this call wrote, and its wall time."""

    directory: Path
    shards: tuple[Path, ...]
    written: tuple[Path, ...]
    wall_s: float


def generation_parser(prog: str, description: str, presets: Sequence[str],
                      presets_help: str) -> argparse.ArgumentParser:
    """The command line every dataset generator takes: ``OUT [--preset P] [--shards N] [--seed S] [--workers W]``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("out", help="dataset folder (created; an existing one is resumed)")
    parser.add_argument("--preset", choices=sorted(presets), default="cpu", help=presets_help)
    parser.add_argument("--shards", type=int, help="number of shards (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--workers", type=int, default=1, help="simulating processes (0: one per CPU)")
    return parser


def generate_with_workers(generate: Callable[..., GeneratedShards], workers: int, *args: Any,
                          **kwargs: Any) -> GeneratedShards:
    """``generate(*args, executor=…, **kwargs)`` on a pool of ``workers`` local processes (0: one per CPU; 1: none),
    then a line saying what was written."""
    executor = local_executor(workers or None)
    with executor if executor is not None else contextlib.nullcontext():
        result = generate(*args, executor=executor, **kwargs)
    print(f"{len(result.shards)} shards in {result.directory} ({len(result.written)} written now, "
          f"{result.wall_s:.1f} s)")
    return result


def generate_shards(directory: PathLike, wanted: dict[str, Any], what: str, writer: Callable[[int], Path],
                    shards: int, *, executor: Executor | None = None, progress: bool = True,
                    desc: str = "shards") -> GeneratedShards:
    """Claim ``directory`` with the manifest ``wanted`` (:func:`claim_folder`), then call ``writer(i)`` for each
    shard ``i < shards`` not yet in it.

    Serial when ``executor`` is None; otherwise each shard is one task of ``executor`` (``writer`` must then be
    picklable), with a progress bar over shards either way.

    Raises:
        ValueError: ``shards`` below 1, or what :func:`claim_folder` refuses.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a positive integer, got {shards!r}")
    started = time.perf_counter()
    directory = Path(directory)
    claim_folder(directory, wanted, what)
    paths = tuple(shard_path(directory, index) for index in range(shards))
    pending = [index for index, path in enumerate(paths) if not path.exists()]
    if executor is None:
        done: Iterable[Path] = map(writer, pending)
    else:
        done = (future.result() for future in as_completed([executor.submit(writer, index) for index in pending]))
    written = list(tqdm(done, total=len(pending), disable=not progress, desc=desc, unit="shard"))
    return GeneratedShards(directory=directory, shards=paths, written=tuple(sorted(written)),
                           wall_s=time.perf_counter() - started)


def anatomy_record(anatomy: Anatomy) -> dict[str, Any]:
    """What identifies an anatomy in a manifest (JSON types only): its shape, affine and the SHA-256 of its
    WM, GM and CSF maps and affine."""
    digest = hashlib.sha256()
    for array in (anatomy.wm, anatomy.gm, anatomy.csf, anatomy.affine):
        digest.update(np.ascontiguousarray(array).tobytes())
    return {"shape": list(anatomy.shape), "affine": anatomy.affine.tolist(), "sha256": digest.hexdigest()}
