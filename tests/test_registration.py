"""Registration on antspyx SyN: geometry kept between RAS arrays and ANTs images, atlas recovery, determinism."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import ants
import numpy as np
import pytest

from conftest import phantom, world_mm
from personalize.registration import (
    SIDECAR,
    TRANSFORM_FILES,
    Grid,
    Image,
    Registration,
    from_ants,
    lps_geometry,
    register,
    tissue_image,
    to_ants,
    to_fixed,
    to_moving,
)
from personalize.overlap import dice
from simulators.anatomy import Anatomy
from simulators.atlas import default_atlas
from simulators.deformation import deformed

RAS_4MM = np.array([[4.0, 0, 0, -62], [0, 4.0, 0, -62], [0, 0, 4.0, -62], [0, 0, 0, 1]])
"""A 32³ grid around the origin, axes right, anterior, superior."""
LPS_PERMUTED = np.array([[0, -3.5, 0, 62], [-3.5, 0, 0, 62], [0, 0, 3.5, -62], [0, 0, 0, 1]])
"""A 36³ grid over the same field of view with other spacing and origin: axis 0 points posterior, axis 1 left."""
BLOB_MM = np.array([10.0, -20.0, 15.0])


def oblique_affine() -> np.ndarray:
    """Rotated 20° about an oblique axis, flipped along one axis, anisotropic spacing, arbitrary origin."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(0.35) * cross + (1 - np.cos(0.35)) * cross @ cross
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.5, -2.0, 3.0])
    affine[:3, 3] = [-40.5, 17.25, 3.0]
    return affine


def blob(grid: Grid, centre_mm: np.ndarray, sigma_mm: float = 5.0) -> np.ndarray:
    """A Gaussian blob centred at a world point, sampled on ``grid``."""
    distance2 = ((world_mm(grid.shape, grid.affine) - centre_mm) ** 2).sum(axis=-1)
    return np.exp(-distance2 / (2 * sigma_mm**2)).astype(np.float32)


def centroid_mm(array: np.ndarray, grid: Grid) -> np.ndarray:
    """Where the mass of ``array`` lies, in world millimetres."""
    return (array[..., None] * world_mm(grid.shape, grid.affine)).sum(axis=(0, 1, 2)) / array.sum()


def on_grid(anatomy: Anatomy, affine: np.ndarray, shape: tuple[int, int, int]) -> Anatomy:
    """The same world content (trilinear through world coordinates) on another grid."""
    target = Anatomy(*(np.zeros(shape, np.float32),) * 3, affine=affine)
    maps = {name: anatomy.resample_array_to(getattr(anatomy, name), target) for name in ("wm", "gm", "csf")}
    return Anatomy(**maps, affine=affine)


@pytest.fixture(scope="module")
def atlas() -> Anatomy:
    """The atlas at 3 mm, cropped to tissue: 56×68×55 voxels. At 4 mm (43×53×42) double interpolation caps
    the WM Dice of this test near 0.87 even for a pure affine, too close to its 0.85 to tell registration
    quality apart from resolution (measured: 0.846-0.860 over three deformation seeds, against 0.882-0.894
    at 3 mm)."""
    return default_atlas(3.0).crop_to_tissue(2)


@pytest.fixture(scope="module")
def patient(atlas: Anatomy) -> tuple[Image, np.ndarray, Anatomy]:
    """A deformed copy of the atlas with a 'tumour' (a darker ball, 12 mm radius) and its mask."""
    anatomy = deformed(atlas, seed=3)
    image = tissue_image(anatomy)
    tumour = ((world_mm(atlas.shape, atlas.affine) - np.array([25.0, -10.0, 20.0])) ** 2).sum(axis=-1) <= 12.0**2
    array = np.where(tumour, 0.4, image.array).astype(np.float32)
    return Image(array, image.affine), tumour, anatomy


@pytest.fixture(scope="module")
def masked(atlas: Anatomy, patient: tuple[Image, np.ndarray, Anatomy], tmp_path_factory) -> Registration:
    image, tumour, _ = patient
    return register(image, tissue_image(atlas), moving_mask_out=tumour, out_dir=tmp_path_factory.mktemp("masked"))


@pytest.mark.parametrize("affine", [RAS_4MM, LPS_PERMUTED, oblique_affine()], ids=["ras", "lps", "oblique"])
def test_numpy_to_ants_and_back_keeps_array_and_affine(affine: np.ndarray) -> None:
    array = np.random.default_rng(0).random((7, 8, 9)).astype(np.float32)
    image = to_ants(Image(array, affine))
    origin, spacing, direction = lps_geometry(affine)
    np.testing.assert_allclose(image.origin, origin, atol=1e-9)
    np.testing.assert_allclose(image.spacing, spacing, atol=1e-9)
    np.testing.assert_allclose(image.direction, direction, atol=1e-12)
    back = from_ants(image)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, affine, atol=1e-9)
    # ANTs' own voxel-to-physical map is the affine, taken to LPS
    index = (3, 5, 2)
    lps = ants.transform_index_to_physical_point(image, index)
    np.testing.assert_allclose(lps, np.diag([-1, -1, 1]) @ (affine[:3, :3] @ index + affine[:3, 3]), atol=1e-6)


def translation_registration(out_dir: Path, moving: Grid, fixed: Grid, translation_lps: tuple) -> Registration:
    """A registration whose transforms are known exactly: a translation and zero displacement fields."""
    affine = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, translation=translation_lps)
    ants.write_transform(affine, str(out_dir / TRANSFORM_FILES["affine"]))
    origin, spacing, direction = lps_geometry(fixed.affine)
    zero = ants.from_numpy(np.zeros((*fixed.shape, 3), np.float32), origin=tuple(origin), spacing=tuple(spacing),
                           direction=direction, has_components=True)
    for name in ("warp", "inverse_warp"):
        ants.image_write(zero, str(out_dir / TRANSFORM_FILES[name]))
    return Registration(out_dir=out_dir, moving=moving, fixed=fixed, seed=0, threads=1, masked_voxels=0, wall_s=0.0)


@pytest.mark.parametrize("translation_lps", [(0.0, 0.0, 0.0), (4.0, -8.0, 12.0)], ids=["identity", "translation"])
def test_warps_keep_world_coordinates_between_differently_oriented_grids(tmp_path: Path, translation_lps) -> None:
    """ANTs maps fixed points to moving points, ``x ↦ x + t`` (LPS): a blob at moving point ``p`` lands at
    ``p − t`` on the fixed grid and a fixed blob at ``f`` lands at ``f + t`` on the moving grid."""
    moving, fixed = Grid((36, 36, 36), LPS_PERMUTED), Grid((32, 32, 32), RAS_4MM)
    registration = translation_registration(tmp_path, moving, fixed, translation_lps)
    shift_ras = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(translation_lps)
    on_fixed = to_fixed(registration, blob(moving, BLOB_MM), "density")
    # 0.25 mm: the sampled blob's centroid moves by up to 0.1 mm under linear interpolation onto the coarser
    # grid; a flipped axis or a half-voxel shift in the geometry would be 1.75 mm or more
    np.testing.assert_allclose(centroid_mm(on_fixed, fixed), BLOB_MM - shift_ras, atol=0.25)
    on_moving = to_moving(registration, blob(fixed, BLOB_MM), "density")
    np.testing.assert_allclose(centroid_mm(on_moving, moving), BLOB_MM + shift_ras, atol=0.25)
    ball = (blob(moving, BLOB_MM) > 0.5).astype(np.int16) * 7
    label = to_fixed(registration, ball, "label")
    assert label.dtype == np.int16 and set(np.unique(label)) == {0, 7}
    np.testing.assert_allclose(centroid_mm(label.astype(float), fixed), BLOB_MM - shift_ras, atol=1.0)


def test_registration_between_two_orientations_of_one_brain_keeps_world_positions(tmp_path: Path, measured) -> None:
    """The same phantom seen on a RAS grid and on an LPS-permuted grid (other spacing and origin): SyN finds
    (nearly) the identity in world space, and a blob goes back and forth at the same world millimetres."""
    brain = phantom(n=32, spacing_mm=4.0, affine=RAS_4MM)
    fixed, moving = tissue_image(brain), tissue_image(on_grid(brain, LPS_PERMUTED, (36, 36, 36)))
    registration = register(moving, fixed, out_dir=tmp_path)
    forward = centroid_mm(to_fixed(registration, blob(moving.grid, BLOB_MM), "density"), fixed.grid)
    backward = centroid_mm(to_moving(registration, blob(fixed.grid, BLOB_MM), "density"), moving.grid)
    measured("blob displacement forward, backward (mm)",
             f"{np.linalg.norm(forward - BLOB_MM):.2f}, {np.linalg.norm(backward - BLOB_MM):.2f}")
    assert np.linalg.norm(forward - BLOB_MM) < 2.0  # half a 4 mm voxel (measured 1.15 and 1.12)
    assert np.linalg.norm(backward - BLOB_MM) < 2.0


def test_registering_a_deformed_atlas_recovers_tissue_overlap(
    atlas: Anatomy, patient: tuple[Image, np.ndarray, Anatomy], masked: Registration, measured
) -> None:
    """Deformed copy → atlas with the tumour masked out: WM and GM Dice outside the tumour ≥ 0.85, well above
    the Dice before registration."""
    _, tumour, anatomy = patient
    outside = ~to_fixed(masked, tumour, "label")
    for name in ("wm", "gm"):
        moving_label = getattr(anatomy, name) > 0.5
        target = (getattr(atlas, name) > 0.5) & outside
        before = dice(moving_label & outside, target)
        after = dice(to_fixed(masked, moving_label, "label") & outside, target)
        measured(f"{name} Dice before -> after", f"{before:.3f} -> {after:.3f}")
        assert before < 0.7
        assert after >= 0.85
    measured("register wall time (s), 56x68x55, 1 ITK thread", f"{masked.wall_s:.1f}")


def test_forward_after_inverse_is_near_identity(atlas: Anatomy, masked: Registration, measured) -> None:
    wm = atlas.wm > 0.5
    round_trip = to_fixed(masked, to_moving(masked, wm, "label"), "label")
    point = blob(masked.fixed, BLOB_MM)
    moved = centroid_mm(to_fixed(masked, to_moving(masked, point, "density"), "density"), masked.fixed)
    measured("WM Dice after moving and back; blob displacement (mm)",
             f"{dice(round_trip, wm):.3f}; {np.linalg.norm(moved - BLOB_MM):.2f}")
    assert dice(round_trip, wm) >= 0.9
    assert np.linalg.norm(moved - BLOB_MM) < 1.0


def test_registration_is_kept_in_its_folder_and_reloads(
    atlas: Anatomy, patient: tuple[Image, np.ndarray, Anatomy], masked: Registration
) -> None:
    assert sorted(os.listdir(masked.out_dir)) == sorted([*TRANSFORM_FILES.values(), SIDECAR])
    assert masked.masked_voxels > patient[1].sum()  # the tumour and its margin
    loaded = Registration.load(masked.out_dir)
    assert loaded.moving.shape == atlas.shape and loaded.seed == 0 and loaded.threads == 1
    np.testing.assert_array_equal(loaded.fixed.affine, atlas.affine)
    np.testing.assert_array_equal(to_fixed(loaded, atlas.gm, "density"), to_fixed(masked, atlas.gm, "density"))


def test_one_thread_and_one_seed_give_identical_results_and_no_temporary_files_stay(
    atlas: Anatomy, patient: tuple[Image, np.ndarray, Anatomy], masked: Registration, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second run (with its temporary files directed to an empty folder) warps exactly as the first; the
    same run without the tumour mask does not, so the mask reached the metric."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    image, tumour, _ = patient
    again = register(image, tissue_image(atlas), moving_mask_out=tumour, out_dir=tmp_path / "again")
    unmasked = register(image, tissue_image(atlas), out_dir=tmp_path / "unmasked")
    assert list(temporary.iterdir()) == []
    first = to_fixed(masked, image.array, "density")
    np.testing.assert_array_equal(to_fixed(again, image.array, "density"), first)
    assert np.abs(to_fixed(unmasked, image.array, "density") - first).max() > 0.01


def test_bad_input_is_refused_with_a_clear_message(
    atlas: Anatomy, patient: tuple[Image, np.ndarray, Anatomy], masked: Registration, tmp_path: Path
) -> None:
    image, tumour, _ = patient
    with pytest.raises(ValueError, match="3D"):
        Image(np.zeros((4, 4, 4, 2)), np.eye(4))
    with pytest.raises(ValueError, match="singular"):
        Image(np.zeros((4, 4, 4)), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        Image(np.full((4, 4, 4), np.nan), np.eye(4))
    with pytest.raises(ValueError, match="does not lie on the grid"):
        to_fixed(masked, np.zeros((4, 4, 4)), "density")
    with pytest.raises(ValueError, match="not the grid's"):
        to_fixed(masked, atlas.wm, "density", affine=atlas.affine + np.array([[0, 0, 0, 2.0]] * 3 + [[0] * 4]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_moving(masked, np.where(atlas.wm > 0.5, np.inf, 0.0), "density")
    with pytest.raises(ValueError, match="kind must be one of"):
        to_fixed(masked, atlas.wm, "nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="binary mask"):
        register(image, tissue_image(atlas), moving_mask_out=tumour * 0.5, out_dir=tmp_path)
    with pytest.raises(ValueError, match="covers the whole moving image"):
        register(image, tissue_image(atlas), moving_mask_out=np.ones(atlas.shape), out_dir=tmp_path)
    with pytest.raises(ValueError, match="does not lie on the grid"):
        register(image, tissue_image(atlas), moving_mask_out=tumour[1:], out_dir=tmp_path)
    with pytest.raises(ValueError, match="threads"):
        register(image, tissue_image(atlas), threads=0, out_dir=tmp_path)
    broken = Registration(out_dir=tmp_path, moving=masked.moving, fixed=masked.fixed, seed=0, threads=1,
                          masked_voxels=0, wall_s=0.0)
    with pytest.raises(ValueError, match="lacks its transform files: .*warp.nii.gz"):
        to_fixed(broken, atlas.wm, "density")
    with pytest.raises(ValueError, match="not a registration record"):
        Registration.load(tmp_path)
