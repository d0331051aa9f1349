"""Checked NIfTI reading and writing: every problem with a file becomes one line naming the file.

Volumes are reoriented to the closest canonical orientation (RAS+, as :func:`nibabel.as_closest_canonical`)
on reading, so every array in the toolkit has its axes pointing right, anterior, superior. The
:class:`Volume` remembers the file's own orientation so results can be written back on the input's grid
with the input's affine (:func:`write_like`), and overlay the input in any viewer.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform


AFFINE_TOLERANCE_MM = 1e-3
"""Two images are on one grid when their voxel centres lie within this distance of each other."""


class NiftiError(ValueError):
    """A file that cannot be used as given; ``str(error)`` is one line: ``<file>: <problem>``."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(problem.split())  # nibabel's messages can span lines; keep one
        super().__init__(f"{self.path}: {self.problem}")


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image in canonical (RAS+) orientation, with what is needed to go back to the file's grid.

    Attributes:
        data: float32 array in canonical orientation.
        affine: voxel-to-world affine of ``data`` (mm).
        source_affine: the affine of the file as it was on disk.
        source_shape: the 3D shape of the file as it was on disk.
        path: where it was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    path: str

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """Reorient a canonical array of this volume's shape back to the file's own orientation."""
        return reorient_to(array, self.affine, self.source_affine)


def reorient_to(array: np.ndarray, affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """Flip/permute ``array`` (on ``affine``) onto the axis orientation of ``target_affine``."""
    transform = ornt_transform(io_orientation(affine), io_orientation(target_affine))
    return np.ascontiguousarray(apply_orientation(np.asarray(array), transform))


def grid_offset_mm(affine: np.ndarray, other: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where two affines put the corner voxels of a grid of ``shape``.

    Affines are linear, so the corners bound the distance over every voxel centre.
    """
    corners = np.array(list(product(*[(0, n - 1) for n in shape[:3]], (1,))), dtype=np.float64)
    difference = np.asarray(other, dtype=np.float64) - np.asarray(affine, dtype=np.float64)
    return float(np.linalg.norm(corners @ difference[:3].T, axis=1).max())


def check_same_grid(volume: Volume, reference: Volume) -> None:
    """Refuse ``volume`` (a :class:`NiftiError` naming it) unless it has ``reference``'s canonical shape and
    every voxel centre lies within :data:`AFFINE_TOLERANCE_MM` of the reference's."""
    if volume.data.shape != reference.data.shape:
        raise NiftiError(
            volume.path,
            f"shape {volume.source_shape} (RAS+ {volume.data.shape}) does not match "
            f"{reference.path} shape {reference.source_shape} (RAS+ {reference.data.shape})",
        )
    distance = grid_offset_mm(reference.affine, volume.affine, reference.data.shape)
    if distance > AFFINE_TOLERANCE_MM:
        raise NiftiError(
            volume.path,
            f"affine does not match that of {reference.path} (voxels up to {distance:.3g} mm apart)",
        )


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a 3D NIfTI image, check it, and return it in canonical orientation as float32.

    Accepted: ``.nii`` and ``.nii.gz``; trailing singleton dimensions (``X×Y×Z×1``) are squeezed.
    Refused with :class:`NiftiError`: a missing or unreadable file, a truncated or corrupt gzip stream,
    a 4D series, non-positive voxel spacing in the header, a singular affine, RGB or complex data, and NaN
    or infinite values.
    """
    path = Path(path)
    if not path.exists():
        raise NiftiError(path, "file not found")
    if not path.is_file():
        raise NiftiError(path, "not a file")
    try:
        image = nib.load(str(path))
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise NiftiError(path, f"not a NIfTI image ({type(image).__name__})")
        data = np.asanyarray(image.dataobj)
        pixdim = _pixdim_on_disk(path, type(image.header))
    except NiftiError:
        raise
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise NiftiError(path, f"truncated or corrupt gzip data ({exc})") from None
    except nib.filebasedimages.ImageFileError as exc:
        problem = f"not a readable NIfTI file: truncated, corrupt or another format ({exc})"
        raise NiftiError(path, problem) from None
    except PermissionError:
        raise NiftiError(path, "cannot be read (permission denied)") from None
    except (OSError, ValueError) as exc:  # nibabel: "Expected N bytes, got M bytes ... damaged?"
        raise NiftiError(path, f"truncated or corrupt data ({exc})") from None

    shape = data.shape
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        kind = f"a {data.ndim}D series" if data.ndim > 3 else f"a {data.ndim}D image"
        raise NiftiError(path, f"expected one 3D volume, got {kind} of shape {tuple(shape)}")
    if data.dtype.kind not in "biuf":  # RGB (structured) and complex images are no masks or maps
        raise NiftiError(path, f"data type {data.dtype} is not real-valued")
    if np.any(pixdim <= 0):
        raise NiftiError(path, f"voxel spacing must be positive, header has {pixdim.tolist()}")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise NiftiError(path, "affine is singular or not finite")
    data = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise NiftiError(path, f"holds {int(np.size(data) - np.isfinite(data).sum())} NaN or infinite values")

    ornt = io_orientation(affine)
    canonical = np.ascontiguousarray(apply_orientation(data, ornt))
    canonical_affine = affine @ inv_ornt_aff(ornt, data.shape)
    return Volume(
        data=canonical,
        affine=canonical_affine,
        source_affine=affine,
        source_shape=tuple(int(n) for n in data.shape),  # type: ignore[arg-type]
        path=str(path),
    )


def _pixdim_on_disk(path: Path, header_class: type[nib.Nifti1Header]) -> np.ndarray:
    """Voxel spacing as written in the file: nibabel's checked load silently replaces a negative
    ``pixdim`` by its absolute value and a zero one by 1, hiding a header no other tool agrees on."""
    with nib.openers.ImageOpener(str(path)) as fileobj:
        header = header_class.from_fileobj(fileobj, check=False)
    return np.asarray(header["pixdim"][1:4], dtype=np.float64)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` whole, on error it vanishes.

    The file gets the permissions an ordinary ``open`` would give it (0666 less the umask), not the
    private 0600 of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write ``array`` with ``affine`` atomically: the file appears whole or not at all."""
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_output(path) as temporary:
        nib.save(image, temporary)
    return Path(path)


def write_like(array: np.ndarray, reference: Volume, path: str | os.PathLike[str]) -> Path:
    """Write a canonical-orientation ``array`` on ``reference``'s original grid with its original affine."""
    return write_nifti(reference.to_source(array), reference.source_affine, path)
