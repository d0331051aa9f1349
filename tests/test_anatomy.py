"""Anatomy: reading tissue maps from NIfTI, and grid changes that keep world coordinates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simulators.anatomy import Anatomy
from simulators.nifti import NiftiError, write_nifti


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    """A proper rotation about z then x, to make affines oblique."""
    cz, sz = np.cos(np.radians(degrees_z)), np.sin(np.radians(degrees_z))
    cx, sx = np.cos(np.radians(degrees_x)), np.sin(np.radians(degrees_x))
    return np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])


def ellipsoid_brain(shape: tuple[int, int, int] = (41, 38, 35), spacing_mm: float = 1.0,
                    oblique: bool = True) -> Anatomy:
    """An off-centre ellipsoid: WM core, GM shell with a partial-volume rim, a CSF layer outside."""
    grid = (np.indices(shape).transpose(1, 2, 3, 0) + 0.5) / np.array(shape) - np.array([0.55, 0.48, 0.5])
    radius = np.linalg.norm(grid / np.array([0.30, 0.28, 0.26]), axis=-1)
    wm = np.clip((0.7 - radius) / 0.1 + 0.5, 0, 1)
    gm = np.clip((1.0 - radius) / 0.1 + 0.5, 0, 1) - wm
    csf = np.clip((1.15 - radius) / 0.1 + 0.5, 0, 1) - wm - gm
    affine = np.eye(4)
    affine[:3, :3] = (rotation(20, 10) if oblique else np.eye(3)) * spacing_mm
    affine[:3, 3] = [-20.3, -17.9, -11.2]
    return Anatomy(wm=wm, gm=gm, csf=csf, affine=affine)


def world_centre_of_mass(anatomy: Anatomy, array: np.ndarray) -> np.ndarray:
    indices = np.indices(anatomy.shape).reshape(3, -1).T
    weights = array.reshape(-1)
    return anatomy.voxel_to_world((indices * weights[:, None]).sum(axis=0) / weights.sum())


def tissue_volume_ml(anatomy: Anatomy) -> float:
    return float((anatomy.wm + anatomy.gm).sum() * np.prod(anatomy.spacing_mm) / 1000)


@pytest.fixture
def maps(tmp_path: Path) -> dict[str, Path]:
    """WM, GM and CSF of an oblique ellipsoid written as NIfTI files."""
    brain = ellipsoid_brain()
    return {name: write_nifti(getattr(brain, name), brain.affine, tmp_path / f"{name}.nii.gz")
            for name in ("wm", "gm", "csf")}


# --- from_nifti ------------------------------------------------------------------------------------------


def test_from_nifti_probabilistic_maps_with_csf(maps: dict[str, Path]) -> None:
    brain = ellipsoid_brain()
    anatomy = Anatomy.from_nifti(maps["wm"], maps["gm"], maps["csf"])
    np.testing.assert_allclose(anatomy.affine, brain.affine, atol=1e-5)
    for name in ("wm", "gm", "csf"):
        np.testing.assert_allclose(getattr(anatomy, name), getattr(brain, name), atol=1e-6)


def test_from_nifti_binary_maps_and_no_csf(tmp_path: Path) -> None:
    brain = ellipsoid_brain(oblique=False)
    wm, gm = (brain.wm > 0.5).astype(np.uint8), ((brain.gm > 0.5) & ~(brain.wm > 0.5)).astype(np.uint8)
    anatomy = Anatomy.from_nifti(write_nifti(wm, brain.affine, tmp_path / "wm.nii"),
                                 write_nifti(gm, brain.affine, tmp_path / "gm.nii.gz"))
    np.testing.assert_array_equal(anatomy.wm, wm)
    np.testing.assert_array_equal(anatomy.gm, gm)
    assert anatomy.csf.dtype == np.float32 and not anatomy.csf.any()


def test_from_nifti_is_canonical_whatever_the_file_orientation(tmp_path: Path) -> None:
    """A file stored left-to-right and posterior-to-anterior flipped gives the same anatomy in RAS+."""
    brain = ellipsoid_brain(oblique=False)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [brain.shape[0] - 1, brain.shape[1] - 1, 0]
    affine = brain.affine @ flip
    wm, gm = (write_nifti(getattr(brain, name)[::-1, ::-1], affine, tmp_path / f"{name}.nii.gz")
              for name in ("wm", "gm"))
    anatomy = Anatomy.from_nifti(wm, gm)
    np.testing.assert_allclose(anatomy.affine, brain.affine, atol=1e-5)
    np.testing.assert_array_equal(anatomy.wm, brain.wm)


def test_from_nifti_rescales_where_classes_sum_above_one(tmp_path: Path) -> None:
    affine = np.eye(4)
    wm = np.full((4, 4, 4), 0.6, np.float32)
    gm = np.full((4, 4, 4), 0.3, np.float32)
    csf = np.zeros((4, 4, 4), np.float32)
    csf[0] = 0.3  # 0.6 + 0.3 + 0.3 = 1.2 in the first slab only
    anatomy = Anatomy.from_nifti(*(write_nifti(a, affine, tmp_path / f"{n}.nii") for n, a in
                                   (("wm", wm), ("gm", gm), ("csf", csf))))
    total = anatomy.wm + anatomy.gm + anatomy.csf
    np.testing.assert_allclose(total[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(anatomy.wm[0] / anatomy.gm[0], 2.0, rtol=1e-6)
    np.testing.assert_allclose(anatomy.wm[1:], 0.6)
    np.testing.assert_allclose(total[1:], 0.9, atol=1e-6)


def test_from_nifti_refuses_values_outside_zero_one(maps: dict[str, Path], tmp_path: Path) -> None:
    labels = write_nifti(np.full((41, 38, 35), 2, np.int16), ellipsoid_brain().affine, tmp_path / "labels.nii")
    with pytest.raises(NiftiError) as error:
        Anatomy.from_nifti(maps["wm"], labels)
    assert error.value.path == str(labels) and "[0, 1]" in str(error.value)


def test_from_nifti_names_the_file_whose_shape_differs(maps: dict[str, Path], tmp_path: Path) -> None:
    small = write_nifti(np.zeros((41, 38, 34), np.float32), ellipsoid_brain().affine, tmp_path / "small.nii")
    with pytest.raises(NiftiError, match="shape") as error:
        Anatomy.from_nifti(maps["wm"], maps["gm"], small)
    assert error.value.path == str(small)


def test_from_nifti_names_the_file_whose_affine_differs(maps: dict[str, Path], tmp_path: Path) -> None:
    brain = ellipsoid_brain()
    for shift_mm, refused in ((5e-4, False), (0.01, True)):
        affine = brain.affine.copy()
        affine[0, 3] += shift_mm
        gm = write_nifti(brain.gm, affine, tmp_path / f"gm_{shift_mm}.nii.gz")
        if refused:
            with pytest.raises(NiftiError, match="affine") as error:
                Anatomy.from_nifti(maps["wm"], gm)
            assert error.value.path == str(gm)
        else:
            Anatomy.from_nifti(maps["wm"], gm)


def test_from_nifti_refuses_maps_without_tissue(tmp_path: Path) -> None:
    empty = write_nifti(np.zeros((4, 4, 4), np.float32), np.eye(4), tmp_path / "empty.nii")
    with pytest.raises(NiftiError, match="no tissue"):
        Anatomy.from_nifti(empty, empty)


# --- resample --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", [2.0, 3.0, (2.0, 1.5, 2.5), 0.5])
def test_resample_keeps_tissue_volume_world_position_and_orientation(spacing: float | tuple) -> None:
    brain = ellipsoid_brain()
    coarse = brain.resample(spacing)
    expected = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    np.testing.assert_allclose(np.linalg.norm(coarse.affine[:3, :3], axis=0), expected, rtol=1e-12)
    np.testing.assert_allclose(coarse.affine[:3, :3] / expected, brain.affine[:3, :3], atol=1e-12)
    np.testing.assert_allclose(coarse.voxel_to_world(np.full(3, -0.5)), brain.voxel_to_world(np.full(3, -0.5)),
                               atol=1e-9)
    assert tissue_volume_ml(coarse) == pytest.approx(tissue_volume_ml(brain), rel=0.02)
    shift = np.linalg.norm(world_centre_of_mass(coarse, coarse.wm) - world_centre_of_mass(brain, brain.wm))
    assert shift < 0.5 * expected.min()
    assert (coarse.wm + coarse.gm + coarse.csf).max() <= 1 + 1e-6


def test_resample_to_2mm_covers_the_field_of_view() -> None:
    brain = ellipsoid_brain(shape=(41, 38, 35))
    assert brain.resample(2.0).shape == (21, 19, 18)


def test_resample_refuses_bad_spacing() -> None:
    for spacing in (0.0, -1.0, (1.0, 2.0), float("nan")):
        with pytest.raises(ValueError, match="spacing"):
            ellipsoid_brain().resample(spacing)


def test_resample_array_to_is_exact_for_linear_fields() -> None:
    """Trilinear interpolation through world coordinates reproduces a linear function of position."""
    fine = ellipsoid_brain()
    coarse = fine.resample(2.0)
    gradient = np.array([0.3, -0.2, 0.5])
    field = coarse.voxel_to_world(np.indices(coarse.shape).transpose(1, 2, 3, 0)) @ gradient
    carried = coarse.resample_array_to(field, fine)
    expected = fine.voxel_to_world(np.indices(fine.shape).transpose(1, 2, 3, 0)) @ gradient
    interior = (slice(2, -2),) * 3
    np.testing.assert_allclose(carried[interior], expected[interior], atol=1e-4)


def test_resample_array_to_an_oblique_grid_is_exact_for_linear_fields() -> None:
    """Grids with different axis directions take the general (non-separable) path, with the same result."""
    coarse = ellipsoid_brain().resample(2.0)
    oblique = np.eye(4)
    oblique[:3, :3] = rotation(-35, 25) * 1.5
    oblique[:3, 3] = coarse.voxel_to_world(np.array([2.0, 2.0, 2.0]))
    target = Anatomy(*(np.zeros((14, 14, 14), np.float32),) * 3, affine=oblique)
    gradient = np.array([0.3, -0.2, 0.5])
    field = coarse.voxel_to_world(np.indices(coarse.shape).transpose(1, 2, 3, 0)) @ gradient
    carried = coarse.resample_array_to(field, target)
    points = target.voxel_to_world(np.indices(target.shape).transpose(1, 2, 3, 0))
    there = coarse.world_to_voxel(points)
    interior = np.all((there >= 0) & (there <= np.asarray(coarse.shape) - 1), axis=-1)
    assert interior.sum() > 1000
    np.testing.assert_allclose(carried[interior], (points @ gradient)[interior], atol=1e-4)
    assert not carried[np.any((there < -0.5) | (there > np.asarray(coarse.shape) - 0.5), axis=-1)].any()


def test_resample_array_to_is_zero_outside_the_field_of_view() -> None:
    brain = ellipsoid_brain(oblique=False)
    part = brain.crop((slice(0, 20), slice(None), slice(None)))
    carried = part.resample_array_to(np.ones(part.shape, np.float32), brain)
    assert carried[:20].min() == 1.0 and carried[20:].max() == 0.0


# --- crop ------------------------------------------------------------------------------------------------


def test_crop_keeps_world_positions() -> None:
    brain = ellipsoid_brain()
    part = brain.crop((slice(3, 30), slice(-30, -2), slice(5, None)))
    assert part.shape == (27, 28, 30)
    start = np.array([3, 38 - 30, 5])
    for index in ([0, 0, 0], [5, 7, 9], [26, 27, 29]):
        np.testing.assert_allclose(part.voxel_to_world(np.array(index)), brain.voxel_to_world(start + index),
                                   atol=1e-9)
        assert part.wm[tuple(index)] == brain.wm[tuple(start + index)]
    np.testing.assert_allclose(part.affine[:3, :3], brain.affine[:3, :3])


def test_crop_refuses_steps_and_empty_slices() -> None:
    brain = ellipsoid_brain()
    for slices in ((slice(0, 10, 2), slice(None), slice(None)), (slice(5, 5), slice(None), slice(None)),
                   (slice(None), slice(None))):
        with pytest.raises(ValueError, match="slice"):
            brain.crop(slices)


def test_crop_to_tissue_keeps_all_tissue_with_a_margin() -> None:
    brain = ellipsoid_brain()
    part = brain.crop_to_tissue(margin_voxels=2)
    assert all(p < b for p, b in zip(part.shape, brain.shape))
    for name in ("wm", "gm", "csf"):
        assert getattr(part, name).sum() == pytest.approx(getattr(brain, name).sum(), rel=1e-6)
    occupied = (part.wm > 0) | (part.gm > 0) | (part.csf > 0)
    for axis in range(3):
        profile = occupied.any(axis=tuple(a for a in range(3) if a != axis))
        assert not profile[:2].any() and not profile[-2:].any() and profile[2] and profile[-3]


# --- mirrored --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mirrored_twice_is_the_original(axis: int) -> None:
    brain = ellipsoid_brain()
    twice = brain.mirrored(axis).mirrored(axis)
    for name in ("wm", "gm", "csf"):
        np.testing.assert_array_equal(getattr(twice, name), getattr(brain, name))
    np.testing.assert_array_equal(twice.affine, brain.affine)
    point = np.array([[1.5, -2.0, 3.25], [10.0, 4.0, -7.0]])
    np.testing.assert_allclose(brain.mirror_point(brain.mirror_point(point, axis), axis), point, atol=1e-9)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mirrored_moves_tissue_to_the_mirrored_world_point(axis: int) -> None:
    brain = ellipsoid_brain()
    mirror = brain.mirrored(axis)
    centre = brain.voxel_to_world((np.asarray(brain.shape) - 1) / 2)
    normal = brain.affine[:3, axis] / np.linalg.norm(brain.affine[:3, axis])
    for index in np.argwhere(brain.wm > 0.9)[::500]:
        point = brain.voxel_to_world(index)
        image = mirror.mirror_point(point, axis)
        # the orthogonal mirror across the plane through the grid centre perpendicular to the axis
        np.testing.assert_allclose(image, point - 2 * np.dot(point - centre, normal) * normal, atol=1e-9)
        there = np.rint(mirror.world_to_voxel(image)).astype(int)
        assert mirror.wm[tuple(there)] == brain.wm[tuple(index)]


def test_mirrored_refuses_bad_axis() -> None:
    with pytest.raises(ValueError, match="axis"):
        ellipsoid_brain().mirrored(3)
