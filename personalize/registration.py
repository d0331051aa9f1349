"""Deformable registration between a patient and the atlas with ANTs SyN, and warps in both directions.

:func:`register` runs ``ants.registration(type_of_transform="SyN")`` (antspyx): an affine stage (Mattes
mutual information) followed by symmetric normalization, the diffeomorphic registration of Avants, Epstein,
Grossman and Gee, "Symmetric diffeomorphic image registration with cross-correlation: evaluating automated
labeling of elderly and neurodegenerative brain", Medical Image Analysis 12(1) 26-41, 2008, here with
ANTsPy's Mattes mutual information as its metric too (``SyNCC``, the paper's cross-correlation, did not
finish in 14 minutes on a patient: ``shared/notes/antspyx.md``). A tumour in the
moving image has no counterpart in the atlas, so ``moving_mask_out`` (dilated by ``mask_margin_mm``) is left
out of the metric at every stage. The forward and inverse transforms are copied into ``out_dir`` under fixed
names with a ``registration.json`` sidecar; :meth:`Registration.load` reads them back, and :func:`to_fixed` and
:func:`to_moving` carry label maps or densities between the two grids from those files alone, and
:func:`points_to_moving` world points of the fixed image to the moving one.

Geometry: ANTs (ITK) works in LPS physical space, NIfTI and this toolkit in RAS, and ``LPS = diag(-1, -1, 1)
· RAS``. :func:`to_ants` and :func:`from_ants` convert a voxel-to-world RAS affine (any orientation,
oblique or flipped) to ITK's origin, spacing and direction and back exactly, so an image keeps its place in
the world on both sides; ``ants.from_numpy`` without them puts every image at the identity geometry.

Determinism: ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process, at its first use, and
ignores later changes (measured with antspyx 0.6.3 by counting the process's threads: after the first ANTs
call, changing the variable left ITK's thread pool as it was), and
antspyx 0.6.3 takes the seed only from the global ``ants.config._random_seed`` (a ``random_seed=`` keyword
is swallowed by ``**kwargs``). So :func:`register` runs ANTs in a fresh Python process whose environment
sets the thread count and which sets that seed, whatever the calling process did before, and nothing
global changes in the caller. With ``threads=1`` equal inputs and ``seed`` give identical transforms; with
more threads they do not (measured on a 32³ phantom: two runs with 2 threads and one seed warped an image
in [0, 1] differently by up to 0.11; two runs with 1 thread, identically). Starting
that process costs about 3 s (importing antspyx alone took 3.3 s). Warping (:func:`to_fixed`,
:func:`to_moving`) is interpolation, voxel by voxel, and runs in the calling process.

Measured wall time of :func:`register` (one measurement each; ``threads=1``, antspyx 0.6.3, a 2-core
machine with another job keeping both cores busy, load 2.2; ANTsPy's SyN defaults, ``reg_iterations=(40,
20, 0)``), registering the tissue contrast (:func:`tissue_image`) of a deformed copy of the MNI152 atlas
(5 % larger, shifted by (4, -4, 3) mm, a smooth random displacement of up to 6 mm per axis; a darkened
ball of 12 mm radius as the tumour, masked out) onto
the atlas's:

- 3 mm atlas cropped to tissue, 56×68×55 voxels (the size of ``tests/test_registration.py``): 5.5 s, about
  3 s of it starting the ANTs process; WM Dice 0.627 before, 0.894 after.
- 2 mm atlas, its whole 99×117×95 grid: 22.7 s; WM Dice 0.617 before, 0.934 after; one :func:`to_fixed` of
  a label map 0.52 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ants
import numpy as np
import pandas as pd
from scipy import ndimage

from simulators.anatomy import Anatomy
from simulators.nifti import AFFINE_TOLERANCE_MM, atomic_output, grid_offset_mm

PathLike = str | os.PathLike[str]
Kind = Literal["label", "density"]

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
"""World coordinates of ANTs (LPS) from those of NIfTI (RAS); its own inverse."""

INTERPOLATORS: dict[str, str] = {"label": "genericLabel", "density": "linear"}
"""ANTs interpolator per kind of array: labels keep their values (no blends of neighbouring labels)."""

TISSUE_CONTRAST = {"wm": 1.0, "gm": 0.6, "csf": 0.2}
"""Intensity of each tissue in :func:`tissue_image`: the order of a T1-weighted scan, background 0."""

DEFAULT_MASK_MARGIN_MM = 5.0
"""How far beyond the tumour mask the metric is masked out too: its edge is not the anatomy's."""

TRANSFORM_FILES = {"affine": "affine.mat", "warp": "warp.nii.gz", "inverse_warp": "inverse_warp.nii.gz"}
"""Names of the transform files in a registration's folder."""

SIDECAR = "registration.json"
"""The file in a registration's folder that :meth:`Registration.load` reads."""


def _check_affine(affine: np.ndarray) -> np.ndarray:
    """``affine`` as float64 if it is a finite, invertible 4×4 voxel-to-world matrix with last row 0 0 0 1."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if not np.array_equal(affine[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"affine's last row must be [0, 0, 0, 1], got {affine[3].tolist()}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine is singular")
    return affine


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid: its shape and its voxel-to-world affine (RAS, mm, NIfTI convention)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"a grid has three positive sizes, got {self.shape}")
        affine = _check_affine(self.affine)
        affine.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", affine)

    def check(self, array: np.ndarray, affine: np.ndarray | None = None, name: str = "array") -> np.ndarray:
        """``array`` as an ndarray if it lies on this grid (and ``affine``, when given, is this grid's within
        :data:`simulators.nifti.AFFINE_TOLERANCE_MM`) and holds finite real values; a ValueError otherwise."""
        array = np.asarray(array)
        if array.shape != self.shape:
            raise ValueError(f"{name} of shape {array.shape} does not lie on the grid of shape {self.shape}")
        if affine is not None:
            distance = grid_offset_mm(self.affine, _check_affine(affine), self.shape)
            if distance > AFFINE_TOLERANCE_MM:
                raise ValueError(f"{name}'s affine is not the grid's (voxels up to {distance:.3g} mm apart)")
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be real-valued, got {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} holds {int(array.size - np.isfinite(array).sum())} NaN or infinite values")
        return array

    def to_json(self) -> dict[str, list]:
        return {"shape": list(self.shape), "affine": self.affine.tolist()}

    @classmethod
    def from_json(cls, record: dict[str, list]) -> Grid:
        return cls(shape=tuple(record["shape"]), affine=np.asarray(record["affine"]))  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class Image:
    """A 3D array with its voxel-to-world affine (RAS, mm): what :func:`register` aligns.

    Attributes:
        array: finite real values of shape ``(X, Y, Z)``.
        affine: 4×4 voxel-to-world matrix, any orientation (NIfTI convention).
    """

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise ValueError(f"an image is 3D, got shape {array.shape}")
        grid = Grid(array.shape, self.affine)  # type: ignore[arg-type]
        object.__setattr__(self, "array", grid.check(array, name="image"))
        object.__setattr__(self, "affine", grid.affine)

    @property
    def grid(self) -> Grid:
        return Grid(self.array.shape, self.affine)  # type: ignore[arg-type]


def tissue_image(anatomy: Anatomy) -> Image:
    """A T1-like contrast of an anatomy to register on: ``Σ TISSUE_CONTRAST[t] · p_t`` over WM, GM and CSF."""
    array = sum(weight * getattr(anatomy, name) for name, weight in TISSUE_CONTRAST.items())
    return Image(np.asarray(array, dtype=np.float32), anatomy.affine)


def lps_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITK's ``(origin, spacing, direction)`` of the grid of a RAS voxel-to-world ``affine``.

    ``spacing`` holds the norms of the affine's columns, ``direction`` the columns divided by them and taken
    to LPS, ``origin`` the LPS position of voxel (0, 0, 0), so that ``LPS = origin + direction · diag(spacing)
    · index`` is ``diag(-1, -1, 1) · affine · index``.
    """
    affine = _check_affine(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = RAS_TO_LPS @ affine[:3, :3] / spacing
    return RAS_TO_LPS @ affine[:3, 3], spacing, direction


def ras_affine(origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The RAS voxel-to-world affine of an ITK grid: the inverse of :func:`lps_geometry`."""
    affine = np.eye(4)
    affine[:3, :3] = RAS_TO_LPS @ np.asarray(direction, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = RAS_TO_LPS @ np.asarray(origin, dtype=np.float64)
    return affine


def to_ants(image: Image) -> ants.ANTsImage:
    """An ``ants.ANTsImage`` (float32) with the image's values at the same world positions."""
    origin, spacing, direction = lps_geometry(image.affine)
    return ants.from_numpy(np.asarray(image.array, dtype=np.float32), origin=tuple(origin.tolist()),
                           spacing=tuple(spacing.tolist()), direction=direction)


def from_ants(image: ants.ANTsImage) -> Image:
    """The :class:`Image` of an ``ants.ANTsImage``: its array and the RAS affine of its origin, spacing and
    direction."""
    return Image(image.numpy(), ras_affine(np.asarray(image.origin), np.asarray(image.spacing),
                                           np.asarray(image.direction)))


@dataclass(frozen=True, eq=False)
class Registration:
    """A SyN registration of a moving grid onto a fixed grid, as files in ``out_dir``.

    Attributes:
        out_dir: the folder holding the transforms and :data:`SIDECAR`.
        moving, fixed: the two grids.
        seed: ANTs' random seed (the affine stage samples the metric at random points).
        threads: ITK threads the registration ran on; only with 1 does a rerun give identical transforms.
        masked_voxels: moving voxels left out of the metric (the dilated tumour mask; 0 without one).
        wall_s: wall time of :func:`register`, in seconds.
    """

    out_dir: Path
    moving: Grid
    fixed: Grid
    seed: int
    threads: int
    masked_voxels: int
    wall_s: float

    def transform(self, name: str) -> Path:
        """Path of one of :data:`TRANSFORM_FILES` (``affine``, ``warp``, ``inverse_warp``)."""
        return self.out_dir / TRANSFORM_FILES[name]

    @property
    def forward_transforms(self) -> list[str]:
        """ANTs' transform list from the moving grid to the fixed grid (applied last to first)."""
        return [str(self.transform("warp")), str(self.transform("affine"))]

    @property
    def inverse_transforms(self) -> list[str]:
        """ANTs' transform list from the fixed grid to the moving grid; the affine is applied inverted."""
        return [str(self.transform("affine")), str(self.transform("inverse_warp"))]

    def check_files(self) -> None:
        """A ValueError naming every transform file that is missing."""
        missing = [str(self.transform(name)) for name in TRANSFORM_FILES if not self.transform(name).is_file()]
        if missing:
            raise ValueError(f"registration in {self.out_dir} lacks its transform files: {', '.join(missing)}")

    def to_json(self) -> dict[str, object]:
        return {"moving": self.moving.to_json(), "fixed": self.fixed.to_json(), "seed": self.seed,
                "threads": self.threads, "masked_voxels": self.masked_voxels, "wall_s": self.wall_s,
                "transforms": dict(TRANSFORM_FILES), "method": "ants.registration SyN (Avants et al. 2008)"}

    @classmethod
    def load(cls, out_dir: PathLike) -> Registration:
        """The registration that :func:`register` wrote into ``out_dir`` (its :data:`SIDECAR` and transforms).

        Raises:
            ValueError: for a folder without a readable sidecar or with transform files missing.
        """
        out_dir = Path(out_dir)
        try:
            record = json.loads((out_dir / SIDECAR).read_text())
            registration = cls(out_dir=out_dir, moving=Grid.from_json(record["moving"]),
                               fixed=Grid.from_json(record["fixed"]), seed=int(record["seed"]),
                               threads=int(record["threads"]), masked_voxels=int(record["masked_voxels"]),
                               wall_s=float(record["wall_s"]))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{out_dir / SIDECAR}: not a registration record ({exc})") from None
        registration.check_files()
        return registration


def metric_mask(tumour: np.ndarray, grid: Grid, margin_mm: float) -> np.ndarray:
    """Where the metric is computed: everywhere farther than ``margin_mm`` from the tumour (uint8 0/1).

    Distances are Euclidean in millimetres along the grid's axes (spacing = the affine's column norms).
    """
    tumour = grid.check(tumour, name="moving_mask_out")
    if not np.all((tumour == 0) | (tumour == 1)):
        raise ValueError("moving_mask_out must be a binary mask (values 0 and 1)")
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise ValueError(f"mask_margin_mm must be a non-negative number, got {margin_mm!r}")
    if not tumour.any():
        return np.ones(grid.shape, dtype=np.uint8)
    spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
    keep = ndimage.distance_transform_edt(tumour == 0, sampling=spacing) > margin_mm
    if not keep.any():
        raise ValueError("moving_mask_out with its margin covers the whole moving image: nothing left to register")
    return keep.astype(np.uint8)


def register(
    moving: Image,
    fixed: Image,
    *,
    out_dir: PathLike,
    moving_mask_out: np.ndarray | None = None,
    mask_margin_mm: float = DEFAULT_MASK_MARGIN_MM,
    seed: int = 0,
    threads: int = 1,
) -> Registration:
    """Register ``moving`` onto ``fixed`` with ANTs SyN (affine, then symmetric normalization; Avants et al.,
    Med Image Anal 2008) and keep the transforms in ``out_dir``.

    Args:
        moving, fixed: the images, each on its own grid; e.g. :func:`tissue_image` of a patient and of the
            atlas.
        out_dir: folder for :data:`TRANSFORM_FILES` and :data:`SIDECAR` (created; files there are replaced).
        moving_mask_out: binary mask on the moving grid (the tumour) left out of the metric, together with
            everything within ``mask_margin_mm`` of it, at every stage.
        mask_margin_mm: that margin, in mm.
        seed: ANTs' random seed.
        threads: ITK threads. With 1 (the default), equal inputs and ``seed`` give identical transforms;
            with more, reruns differ.

    Returns:
        The :class:`Registration`, also written to ``out_dir``.
    """
    start = time.perf_counter()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31 - 1:
        raise ValueError(f"seed must be an integer in [0, 2^31 - 2], got {seed!r}")  # ANTs takes seed + 1 > 0
    mask = None if moving_mask_out is None else metric_mask(moving_mask_out, moving.grid, mask_margin_mm)
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="registration-") as work:
        work_dir = Path(work)
        np.savez(work_dir / "request.npz", moving=moving.array.astype(np.float32), moving_affine=moving.affine,
                 fixed=fixed.array.astype(np.float32), fixed_affine=fixed.affine,
                 **({} if mask is None else {"mask": mask}))
        _run_ants_process(work_dir, seed, threads)
        written = json.loads((work_dir / "transforms.json").read_text())
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, source in written.items():
            with atomic_output(out_dir / TRANSFORM_FILES[name]) as temporary:
                shutil.copyfile(source, temporary)
    registration = Registration(out_dir=out_dir, moving=moving.grid, fixed=fixed.grid, seed=seed, threads=threads,
                                masked_voxels=0 if mask is None else int(mask.size - mask.sum()),
                                wall_s=time.perf_counter() - start)
    with atomic_output(out_dir / SIDECAR) as temporary:
        temporary.write_text(json.dumps(registration.to_json(), indent=2) + "\n")
    return registration


def _run_ants_process(work_dir: Path, seed: int, threads: int) -> None:
    """Run :func:`_register_request` on ``work_dir`` in a new Python process with ``threads`` ITK threads."""
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    code = ("import sys; from personalize.registration import _register_request; "
            "_register_request(sys.argv[1], int(sys.argv[2]))")
    done = subprocess.run([sys.executable, "-c", code, str(work_dir), str(seed + 1)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ANTs registration failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")


def _register_request(work_dir: str, ants_seed: int) -> None:
    """In the ANTs process: register the images of ``request.npz`` and list the transforms it wrote.

    ``ants_seed`` is ``seed + 1``: ANTs takes only nonzero seeds.
    """
    ants.config._random_seed = ants_seed  # antspyx 0.6.3 reads the seed from here only; this process is ours
    work = Path(work_dir)
    with np.load(work / "request.npz") as request:
        moving = to_ants(Image(request["moving"], request["moving_affine"]))
        fixed = to_ants(Image(request["fixed"], request["fixed_affine"]))
        mask = (to_ants(Image(request["mask"].astype(np.float32), request["moving_affine"]))
                if "mask" in request else None)
    result = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN", moving_mask=mask,
                               mask_all_stages=mask is not None, outprefix=str(work / "ants_"))
    written = {}
    for path in [*result["fwdtransforms"], *result["invtransforms"]]:
        name = ("inverse_warp" if path.endswith("InverseWarp.nii.gz") else "warp" if path.endswith("Warp.nii.gz")
                else "affine" if path.endswith("GenericAffine.mat") else None)
        if name is None:
            raise RuntimeError(f"unexpected transform file from ANTs SyN: {path}")
        written[name] = path
    if set(written) != set(TRANSFORM_FILES):
        raise RuntimeError(f"ANTs SyN wrote {sorted(written.values())}, expected an affine, a warp and its inverse")
    (work / "transforms.json").write_text(json.dumps(written))


def _warp(registration: Registration, array: np.ndarray, kind: Kind, affine: np.ndarray | None,
          inverse: bool) -> np.ndarray:
    """Carry ``array`` from one grid of ``registration`` onto the other through its transform files."""
    if kind not in INTERPOLATORS:
        raise ValueError(f"kind must be one of {sorted(INTERPOLATORS)}, got {kind!r}")
    source, target = (registration.fixed, registration.moving) if inverse else (registration.moving, registration.fixed)
    array = source.check(array, affine, name="array to warp")
    registration.check_files()
    warped = ants.apply_transforms(
        fixed=to_ants(Image(np.zeros(target.shape, dtype=np.float32), target.affine)),
        moving=to_ants(Image(array, source.affine)),
        transformlist=registration.inverse_transforms if inverse else registration.forward_transforms,
        whichtoinvert=[True, False] if inverse else None,
        interpolator=INTERPOLATORS[kind],
    ).numpy()
    if kind == "label":
        return np.rint(warped).astype(array.dtype) if array.dtype.kind in "biu" else warped.astype(array.dtype)
    return warped.astype(np.float32)


def to_fixed(registration: Registration, array: np.ndarray, kind: Kind, *,
             affine: np.ndarray | None = None) -> np.ndarray:
    """An array on the moving grid carried onto the fixed grid (the forward transforms: affine and warp).

    Args:
        registration: from :func:`register` or :meth:`Registration.load`.
        array: values on the moving grid.
        kind: ``"label"`` (labels and masks: ANTs' ``genericLabel`` interpolation, values and dtype kept) or
            ``"density"`` (linear interpolation, float32).
        affine: the array's affine, checked against the moving grid's when given.

    Returns:
        The array on the fixed grid; 0 where the fixed grid maps outside the moving image.
    """
    return _warp(registration, array, kind, affine, inverse=False)


def to_moving(registration: Registration, array: np.ndarray, kind: Kind, *,
              affine: np.ndarray | None = None) -> np.ndarray:
    """An array on the fixed grid carried onto the moving grid (the inverse transforms: the inverted affine
    and the inverse warp). Arguments and result as :func:`to_fixed`, with the two grids exchanged."""
    return _warp(registration, array, kind, affine, inverse=True)


def points_to_moving(registration: Registration, points_mm: np.ndarray) -> np.ndarray:
    """World points of the fixed image (RAS mm, ``[N, 3]``) carried to their place in the moving image.

    ANTs maps points the opposite way to images (``ants.apply_transforms_to_points``): the forward transforms,
    which pull the moving image onto the fixed grid, send a fixed point to the moving point it is sampled from.
    So a point here lands where :func:`to_moving` carries an image feature at it (the inverse warp is the
    numerical inverse of the forward one, so the two agree to within its accuracy). Points go to ANTs in LPS
    and come back in RAS.

    Raises:
        ValueError: points not of shape ``[N, 3]`` or not finite; transform files missing.
    """
    points = np.asarray(points_mm, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or not np.all(np.isfinite(points)):
        raise ValueError(f"points must be finite world coordinates of shape [N, 3], got shape {points.shape}")
    registration.check_files()
    moved = ants.apply_transforms_to_points(3, pd.DataFrame(points @ RAS_TO_LPS.T, columns=["x", "y", "z"]),
                                            registration.forward_transforms)
    return moved[["x", "y", "z"]].to_numpy(dtype=np.float64) @ RAS_TO_LPS.T
