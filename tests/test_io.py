"""Specification of personalize.io: loading a patient's masks and PET, and writing results back."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine

from personalize.io import LABEL_CONVENTIONS, load_observation, summarize, write_output
from simulators.nifti import NiftiError

SHAPE = (6, 7, 8)


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return path


def blob(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A small asymmetric mask, so any flip or permutation of axes shows."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[1:3, 2:5, 3] = 1
    mask[4, 1, 6] = 1
    return mask


def affine(columns: list[list[float]], origin: list[float]) -> np.ndarray:
    result = np.eye(4)
    result[:3, :3] = np.array(columns, dtype=np.float64).T
    result[:3, 3] = origin
    return result


def rotated(matrix: np.ndarray, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rotation = np.eye(4)
    rotation[:2, :2] = [[c, -s], [s, c]]
    return rotation @ matrix


NON_CANONICAL = {
    "LAS flipped x": affine([[-1, 0, 0], [0, 1, 0], [0, 0, 1]], [10, -20, 30]),
    "LPS": affine([[-0.9, 0, 0], [0, -0.9, 0], [0, 0, 3]], [90, 126, -72]),
    "PSR permuted": affine([[0, -2, 0], [0, 0, 1.5], [1, 0, 0]], [-5, 40, -12]),
    "oblique LPI": rotated(affine([[-1.2, 0, 0], [0, -1, 0], [0, 0, -2.5]], [3, 7, 60]), 8.0),
    "anisotropic RAS with origin": affine([[0.5, 0, 0], [0, 1.25, 0], [0, 0, 4]], [-64.5, 12.25, 3]),
}


def assert_one_line_error(excinfo: pytest.ExceptionInfo[NiftiError], path: Path, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# NIfTI round trips keep the data, the affine and the orientation


@pytest.mark.parametrize("matrix", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_writing_the_canonical_mask_back_reproduces_the_input_file(
    tmp_path: Path, matrix: np.ndarray
) -> None:
    source = save(tmp_path / "mask.nii.gz", blob(), matrix)
    observation = load_observation(source, source)
    written = nib.load(write_output(observation.t1gd, observation, tmp_path / "out.nii.gz"))
    original = nib.load(source)
    assert written.shape == original.shape
    assert np.array_equal(np.asarray(written.dataobj), np.asarray(original.dataobj))
    assert np.array_equal(written.affine, original.affine)


@pytest.mark.parametrize("matrix", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_a_marked_voxel_keeps_its_world_coordinate_in_the_canonical_arrays(
    tmp_path: Path, matrix: np.ndarray
) -> None:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1, 5, 2] = 1
    source = save(tmp_path / "mask.nii.gz", mask, matrix)
    observation = load_observation(source, source)
    (index,) = np.argwhere(observation.t1gd)
    in_file = apply_affine(nib.load(source).affine, (1, 5, 2))
    assert np.allclose(apply_affine(observation.affine, index), in_file)


@pytest.mark.parametrize("matrix", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_observation_arrays_are_in_ras_orientation(tmp_path: Path, matrix: np.ndarray) -> None:
    source = save(tmp_path / "mask.nii.gz", blob(), matrix)
    assert nib.aff2axcodes(load_observation(source, source).affine) == ("R", "A", "S")


def test_a_flair_stored_in_another_orientation_of_the_same_grid_is_aligned(tmp_path: Path) -> None:
    ras = affine([[2, 0, 0], [0, 2, 0], [0, 0, 2]], [-6, -7, -8])
    t1gd = save(tmp_path / "t1gd.nii.gz", blob(), ras)
    flipped = ras @ nib.orientations.inv_ornt_aff(np.array([[0, -1], [1, 1], [2, 1]]), SHAPE)
    flair = save(tmp_path / "flair.nii.gz", blob()[::-1], flipped)
    observation = load_observation(t1gd, flair)
    assert np.array_equal(observation.t1gd, observation.flair)


# Each problem is one line naming the file


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NiftiError) as excinfo:
        load_observation(tmp_path / "absent.nii.gz", tmp_path / "absent.nii.gz")
    assert_one_line_error(excinfo, tmp_path / "absent.nii.gz", "not found")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_truncated_file_is_an_error(tmp_path: Path, suffix: str) -> None:
    path = save(tmp_path / f"t1gd{suffix}", blob((30, 30, 30)))
    payload = path.read_bytes()
    path.write_bytes(payload[: int(0.6 * len(payload))])
    with pytest.raises(NiftiError) as excinfo:
        load_observation(path, path)
    assert_one_line_error(excinfo, path, "truncated or corrupt")


def test_a_4d_series_is_an_error(tmp_path: Path) -> None:
    path = save(tmp_path / "t1gd.nii.gz", np.stack([blob()] * 3, axis=-1))
    with pytest.raises(NiftiError) as excinfo:
        load_observation(path, path)
    assert_one_line_error(excinfo, path, "4D series", "(6, 7, 8, 3)")


def test_a_trailing_singleton_dimension_is_squeezed(tmp_path: Path) -> None:
    path = save(tmp_path / "t1gd.nii.gz", blob()[..., np.newaxis])
    observation = load_observation(path, path)
    assert observation.shape == SHAPE
    assert np.array_equal(observation.t1gd, blob())


def test_shape_mismatch_names_both_files_and_shapes(tmp_path: Path) -> None:
    t1gd = save(tmp_path / "t1gd.nii.gz", blob())
    flair = save(tmp_path / "flair.nii.gz", blob((6, 7, 9)))
    with pytest.raises(NiftiError) as excinfo:
        load_observation(t1gd, flair)
    assert_one_line_error(excinfo, flair, str(t1gd), "(6, 7, 9)", "(6, 7, 8)")


def test_affine_mismatch_names_both_files(tmp_path: Path) -> None:
    t1gd = save(tmp_path / "t1gd.nii.gz", blob())
    flair = save(tmp_path / "flair.nii.gz", blob(), affine([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0.5, 0, 0]))
    with pytest.raises(NiftiError) as excinfo:
        load_observation(t1gd, flair)
    assert_one_line_error(excinfo, flair, str(t1gd), "affine")


def test_affines_within_a_micrometre_are_one_grid(tmp_path: Path) -> None:
    t1gd = save(tmp_path / "t1gd.nii.gz", blob())
    flair = save(tmp_path / "flair.nii.gz", blob(), affine([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [1e-4, 0, 0]))
    assert load_observation(t1gd, flair).shape == SHAPE


def test_pet_on_another_grid_is_an_error(tmp_path: Path) -> None:
    t1gd = save(tmp_path / "t1gd.nii.gz", blob())
    pet = save(tmp_path / "pet.nii.gz", np.ones((6, 7, 9), dtype=np.float32))
    with pytest.raises(NiftiError) as excinfo:
        load_observation(t1gd, t1gd, pet)
    assert_one_line_error(excinfo, pet, str(t1gd), "shape")


def test_empty_mask_is_an_error(tmp_path: Path) -> None:
    t1gd = save(tmp_path / "t1gd.nii.gz", np.zeros(SHAPE, dtype=np.uint8))
    flair = save(tmp_path / "flair.nii.gz", blob())
    with pytest.raises(NiftiError) as excinfo:
        load_observation(t1gd, flair)
    assert_one_line_error(excinfo, t1gd, "empty T1Gd mask")


def test_a_label_map_without_a_convention_is_an_error(tmp_path: Path) -> None:
    labels = blob() * 2
    labels[0, 0, 0], labels[5, 6, 7] = 1, 4
    path = save(tmp_path / "seg.nii.gz", labels)
    with pytest.raises(NiftiError) as excinfo:
        load_observation(path, path)
    expected = "holds labels [0, 1, 2, 4]; pass --labels brats|gliodil|predictgbm|gliomasolver"
    assert_one_line_error(excinfo, path, expected)


def test_float_masks_of_zeros_and_ones_are_binary(tmp_path: Path) -> None:
    path = save(tmp_path / "t1gd.nii.gz", blob().astype(np.float32))
    assert np.array_equal(load_observation(path, path).t1gd, blob())


def test_a_probability_map_is_no_mask(tmp_path: Path) -> None:
    path = save(tmp_path / "t1gd.nii.gz", blob().astype(np.float32) * 0.5)
    with pytest.raises(NiftiError) as excinfo:
        load_observation(path, path)
    assert_one_line_error(excinfo, path, "non-integer values (e.g. 0.5)")


def test_nan_in_pet_is_an_error(tmp_path: Path) -> None:
    t1gd = save(tmp_path / "t1gd.nii.gz", blob())
    values = np.ones(SHAPE, dtype=np.float32)
    values[2, 2, 2] = np.nan
    pet = save(tmp_path / "pet.nii.gz", values)
    with pytest.raises(NiftiError) as excinfo:
        load_observation(t1gd, t1gd, pet)
    assert_one_line_error(excinfo, pet, "NaN")


def test_negative_pet_is_an_error(tmp_path: Path) -> None:
    t1gd = save(tmp_path / "t1gd.nii.gz", blob())
    values = np.ones(SHAPE, dtype=np.float32)
    values[2, 2, 2] = -0.25
    pet = save(tmp_path / "pet.nii.gz", values)
    with pytest.raises(NiftiError) as excinfo:
        load_observation(t1gd, t1gd, pet)
    assert_one_line_error(excinfo, pet, "1 negative values (min -0.25)")


def test_negative_spacing_in_the_header_is_an_error(tmp_path: Path) -> None:
    image = nib.Nifti1Image(blob(), np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header["pixdim"][1] = -1.0
    path = tmp_path / "t1gd.nii.gz"
    nib.save(image, path)
    with nib.openers.ImageOpener(str(path)) as fileobj:  # nibabel writes it, and fixes it silently on load
        assert nib.Nifti1Header.from_fileobj(fileobj, check=False)["pixdim"][1] == -1.0
    assert nib.load(path).header["pixdim"][1] == 1.0
    with pytest.raises(NiftiError) as excinfo:
        load_observation(path, path)
    assert_one_line_error(excinfo, path, "voxel spacing must be positive", "-1.0")


def test_unknown_label_convention_lists_the_valid_ones(tmp_path: Path) -> None:
    path = save(tmp_path / "seg.nii.gz", blob())
    with pytest.raises(NiftiError) as excinfo:
        load_observation(path, path, labels="bratz")
    assert_one_line_error(excinfo, path, "'bratz'", "brats, gliodil, predictgbm, gliomasolver")


def test_a_label_outside_the_convention_is_an_error(tmp_path: Path) -> None:
    labels = blob() * 4
    labels[0, 0, 0] = 3
    path = save(tmp_path / "seg.nii.gz", labels)
    with pytest.raises(NiftiError) as excinfo:
        load_observation(path, path, labels="brats")
    assert_one_line_error(excinfo, path, "holds labels [3]", "brats")


# Label conventions: T1Gd = necrotic + enhancing, FLAIR = necrotic + enhancing + edema

NECROTIC, EDEMA, ENHANCING = (1, 1, 1), (2, 2, 2), (3, 3, 3)


@pytest.mark.parametrize(
    ("name", "necrotic", "edema", "enhancing"),
    [("brats", 1, 2, 4), ("gliodil", 4, 3, 1), ("predictgbm", 1, 2, 3)],
)
def test_a_label_map_gives_the_t1gd_and_flair_masks(
    tmp_path: Path, name: str, necrotic: int, edema: int, enhancing: int
) -> None:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[NECROTIC], labels[EDEMA], labels[ENHANCING] = necrotic, edema, enhancing
    path = save(tmp_path / "seg.nii.gz", labels)
    observation = load_observation(path, path, labels=name)
    assert {tuple(i) for i in np.argwhere(observation.t1gd)} == {NECROTIC, ENHANCING}
    assert {tuple(i) for i in np.argwhere(observation.flair)} == {NECROTIC, EDEMA, ENHANCING}


def test_separate_label_map_files_are_read_each_for_its_own_mask(tmp_path: Path) -> None:
    t1gd_labels = np.zeros(SHAPE, dtype=np.uint8)
    t1gd_labels[NECROTIC], t1gd_labels[ENHANCING] = 1, 4
    flair_labels = np.zeros(SHAPE, dtype=np.uint8)
    flair_labels[EDEMA] = 2
    t1gd = save(tmp_path / "t1gd.nii.gz", t1gd_labels)
    flair = save(tmp_path / "flair.nii.gz", flair_labels)
    observation = load_observation(t1gd, flair, labels="brats")
    assert {tuple(i) for i in np.argwhere(observation.t1gd)} == {NECROTIC, ENHANCING}
    assert {tuple(i) for i in np.argwhere(observation.flair)} == {EDEMA}


def test_gliomasolver_counts_only_label_1_as_t1gd(tmp_path: Path) -> None:
    t1gd_labels = np.zeros(SHAPE, dtype=np.uint8)
    t1gd_labels[1, 1, 1], t1gd_labels[2, 2, 2], t1gd_labels[3, 3, 3] = 1, 2, 4
    t1gd = save(tmp_path / "tumT1c.nii.gz", t1gd_labels)
    flair = save(tmp_path / "tumFLAIR.nii.gz", blob())
    observation = load_observation(t1gd, flair, labels="gliomasolver")
    assert {tuple(i) for i in np.argwhere(observation.t1gd)} == {(1, 1, 1)}
    assert np.array_equal(observation.flair, blob())
    # the growth model (personalize fit) reads the whole core: label 4 is the necrosis, densest of all
    core = load_observation(t1gd, flair, labels="gliomasolver", core=True)
    assert {tuple(i) for i in np.argwhere(core.t1gd)} == {(1, 1, 1), (2, 2, 2), (3, 3, 3)}


@pytest.mark.parametrize("name", ["brats", "gliodil", "predictgbm"])
def test_the_core_is_the_t1gd_mask_where_a_convention_already_counts_the_necrosis(tmp_path: Path, name: str) -> None:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    for index, label in enumerate(sorted(LABEL_CONVENTIONS[name].labels)):
        labels[index + 1, 1, 1] = label
    path = save(tmp_path / "seg.nii.gz", labels)
    plain, core = (load_observation(path, path, labels=name, core=flag) for flag in (False, True))
    assert np.array_equal(plain.t1gd, core.t1gd) and np.array_equal(plain.flair, core.flair)


@pytest.mark.parametrize("name", LABEL_CONVENTIONS)
def test_binary_masks_mean_the_same_under_every_convention(tmp_path: Path, name: str) -> None:
    path = save(tmp_path / "mask.nii.gz", blob())
    observation = load_observation(path, path, labels=name)
    assert np.array_equal(observation.t1gd, blob()) and np.array_equal(observation.flair, blob())


# The observation itself, writing back, and the summary


def test_observation_holds_read_only_float32_arrays(tmp_path: Path) -> None:
    mask = save(tmp_path / "mask.nii.gz", blob())
    pet = save(tmp_path / "pet.nii.gz", np.full(SHAPE, 2.5, dtype=np.float32))
    observation = load_observation(mask, mask, pet)
    for array in (observation.t1gd, observation.flair, observation.pet):
        assert array.dtype == np.float32 and not array.flags.writeable
    assert load_observation(mask, mask).pet is None


def test_write_output_refuses_an_array_off_the_grid(tmp_path: Path) -> None:
    path = save(tmp_path / "mask.nii.gz", blob())
    observation = load_observation(path, path)
    with pytest.raises(NiftiError) as excinfo:
        write_output(np.zeros((6, 7, 9), dtype=np.float32), observation, tmp_path / "out.nii.gz")
    assert_one_line_error(excinfo, tmp_path / "out.nii.gz", "(6, 7, 9)")


def test_summary_counts_voxels_and_millilitres_and_describes_the_file(tmp_path: Path) -> None:
    lps = affine([[-2, 0, 0], [0, -2, 0], [0, 0, 2.5]], [0, 0, 0])
    t1gd_mask = np.zeros(SHAPE, dtype=np.uint8)
    t1gd_mask[1, 1, 1] = 1
    t1gd = save(tmp_path / "t1gd.nii.gz", t1gd_mask, lps)
    flair = save(tmp_path / "flair.nii.gz", blob(), lps)
    pet_values = np.zeros(SHAPE, dtype=np.float32)
    pet_values[2, 2, 2], pet_values[3, 3, 3] = 1.0, 3.0
    pet = save(tmp_path / "pet.nii.gz", pet_values, lps)
    summary = summarize(load_observation(t1gd, flair, pet))
    assert summary["shape"] == list(SHAPE)
    assert summary["spacing_mm"] == [2.0, 2.0, 2.5]
    assert summary["orientation"] == "LPS"
    assert summary["t1gd"] == {"voxels": 1, "volume_ml": pytest.approx(0.01)}
    assert summary["flair"] == {"voxels": int(blob().sum()), "volume_ml": pytest.approx(0.01 * blob().sum())}
    assert summary["pet"] == {
        "min": 0.0, "max": 3.0, "mean": pytest.approx(4.0 / np.prod(SHAPE)), "positive_voxels": 2,
    }
