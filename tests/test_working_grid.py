"""Specification of the working grid a fit runs on: coarse, cropped, scans carried faithfully, results back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import phantom
from likelihoods.joint import JointLikelihood
from personalize.io import Observation
from personalize.synth import BUILT_IN_CASE, synthesize
from personalize.working_grid import ImageLogLikelihood, anatomy_on_grid, build_working_problem, crop_wall_density
from simulators.fisher_kolmogorov import PARAMETER_NAMES, FisherKolmogorov

TRUTH = BUILT_IN_CASE | {"x": -20.0, "y": 0.0, "z": 4.0, "D_w": 0.3, "rho": 0.05, "T": 200.0}


@pytest.fixture(scope="module")
def fine_case():
    """A synthetic patient on a 2 mm phantom (48³), PET included."""
    anatomy = phantom(48, 2.0)
    patient = synthesize(TRUTH, anatomy, seed=2)
    observation = Observation(t1gd=patient.t1gd, flair=patient.flair, pet=patient.pet, affine=anatomy.affine,
                              reference=None)
    return anatomy, patient, observation


def test_masks_coarsen_by_coverage_and_the_crop_keeps_the_abnormality_and_margin(fine_case):
    anatomy, patient, observation = fine_case
    problem = build_working_problem(observation, anatomy, spacing_mm=4.0, margin_mm=8.0)
    assert problem.anatomy.spacing_mm == pytest.approx((4.0, 4.0, 4.0))
    # FLAIR volume is kept to within the partial voxels of its boundary
    fine_ml = patient.flair.sum() * 8e-3
    coarse_ml = float(problem.scans.flair.sum()) * 64e-3
    assert coarse_ml == pytest.approx(fine_ml, rel=0.25)
    # the abnormality lies at least the margin (2 voxels) inside the crop, or the crop reaches the grid's edge
    positive = torch.nonzero(problem.scans.flair).numpy()
    shape = np.array(problem.anatomy.shape)
    corner = np.full(3, -0.5)
    at_low_edge = np.isclose(problem.anatomy.voxel_to_world(corner), anatomy.voxel_to_world(corner))
    at_high_edge = np.isclose(problem.anatomy.voxel_to_world(shape - 0.5),
                              anatomy.voxel_to_world(np.array(anatomy.shape) - 0.5), atol=2.0)
    assert np.all((positive.min(axis=0) >= 2) | at_low_edge)
    assert np.all((positive.max(axis=0) <= shape - 3) | at_high_edge)
    # PET is the mean uptake: the total uptake (× voxel volume) of a tracer inside the crop is kept
    confined = np.where(patient.flair > 0, patient.pet, 0.0)
    tracer = build_working_problem(Observation(t1gd=patient.t1gd, flair=patient.flair, pet=confined,
                                               affine=anatomy.affine, reference=None),
                                   anatomy, spacing_mm=4.0, margin_mm=8.0)
    assert float(tracer.scans.pet.sum()) * 64 == pytest.approx(float(confined.sum()) * 8, rel=1e-5)


def test_a_pet_cut_to_its_uptake_region_is_read_only_there_and_undiluted_at_its_edge(fine_case):
    """GliomaSolver's preprocessed PET is kept only where T1Gd enhances and is 0 in the rest of the FLAIR
    abnormality: those zeros are unmeasured, so the likelihood reads the map only where it was measured,
    at its mean uptake there; a full map (0 only where noise was clipped) is read over all tissue."""
    anatomy, patient, observation = fine_case
    cut = np.where(patient.t1gd > 0, 0.6, 0.0).astype(np.float32)
    problem = build_working_problem(Observation(t1gd=patient.t1gd, flair=patient.flair, pet=cut,
                                                affine=anatomy.affine, reference=None),
                                    anatomy, spacing_mm=4.0, margin_mm=8.0)
    valid = problem.scans.pet_valid
    assert valid.sum() == pytest.approx(float(problem.scans.t1gd.sum()), rel=0.3)
    assert not bool((valid & ~problem.scans.flair).any())  # nothing outside the abnormality
    np.testing.assert_allclose(problem.scans.pet[valid].numpy(), 0.6, rtol=1e-5)
    coarser = problem.coarsened(2)
    np.testing.assert_allclose(coarser.scans.pet[coarser.scans.pet_valid].numpy(), 0.6, rtol=1e-5)
    full = build_working_problem(observation, anatomy, spacing_mm=4.0, margin_mm=8.0)
    tissue = torch.from_numpy((full.anatomy.wm + full.anatomy.gm) > 0)
    assert torch.equal(full.scans.pet_valid, tissue)
    assert problem.describe()["working_pet_voxels"] == int(valid.sum())


def test_an_edema_only_flair_mask_is_completed_with_the_t1gd_core(fine_case):
    """Every T1Gd-visible voxel is FLAIR-visible in the model (u_flair < u_t1gd), so a FLAIR file that
    labels only the edema is read as edema ∪ core."""
    anatomy, patient, _ = fine_case
    edema = np.where(patient.t1gd > 0, 0.0, patient.flair).astype(np.float32)
    ring = Observation(t1gd=patient.t1gd, flair=edema, pet=None, affine=anatomy.affine, reference=None)
    whole = Observation(t1gd=patient.t1gd, flair=patient.flair, pet=None, affine=anatomy.affine, reference=None)
    assert torch.equal(build_working_problem(ring, anatomy, spacing_mm=4.0).scans.flair,
                       build_working_problem(whole, anatomy, spacing_mm=4.0).scans.flair)


def test_world_positions_survive_coarsening_and_cropping(fine_case):
    anatomy, _, observation = fine_case
    problem = build_working_problem(observation, anatomy, spacing_mm=4.0, margin_mm=8.0)
    # a density that is a linear function of world position comes back onto the fine grid unchanged inside
    centres = problem.anatomy.voxel_to_world(np.indices(problem.anatomy.shape).reshape(3, -1).T)
    field = (0.01 * centres @ np.array([1.0, -0.5, 0.25]) + 0.5).reshape(problem.anatomy.shape)
    back = problem.to_input_grid(field.astype(np.float32))
    fine_centres = anatomy.voxel_to_world(np.indices(anatomy.shape).reshape(3, -1).T)
    expected = (0.01 * fine_centres @ np.array([1.0, -0.5, 0.25]) + 0.5).reshape(anatomy.shape)
    inside = back > 0
    inner = np.zeros_like(inside)
    inner[tuple(slice(int(np.argwhere(inside)[:, a].min()) + 2, int(np.argwhere(inside)[:, a].max()) - 1)
                for a in range(3))] = True
    np.testing.assert_allclose(back[inner], expected[inner], atol=1e-5)


def test_the_input_grid_is_kept_when_it_is_already_coarse(fine_case):
    anatomy, _, observation = fine_case
    problem = build_working_problem(observation, anatomy, spacing_mm=1.0, margin_mm=4.0)
    assert problem.anatomy.spacing_mm == pytest.approx(anatomy.spacing_mm)
    window = tuple(slice(int(i), int(i) + n) for i, n in
                   zip(np.round(np.linalg.solve(anatomy.affine, problem.anatomy.affine)[:3, 3]), problem.anatomy.shape))
    np.testing.assert_array_equal(problem.scans.t1gd.numpy(), observation.t1gd[window] > 0)


def test_tissue_on_another_grid_and_an_empty_tumour_are_refused(fine_case):
    anatomy, patient, observation = fine_case
    with pytest.raises(ValueError, match="different grids"):
        build_working_problem(observation, phantom(40, 2.0))
    empty = Observation(t1gd=np.zeros_like(patient.t1gd), flair=np.zeros_like(patient.flair), pet=None,
                        affine=anatomy.affine, reference=None)
    with pytest.raises(ValueError, match="no tumour"):
        build_working_problem(empty, anatomy)
    with pytest.raises(ValueError, match="spacing"):
        build_working_problem(observation, anatomy, spacing_mm=0.0)


def test_anatomy_on_grid_carries_tissue_through_world_space():
    source = phantom(32, 4.0)
    target_affine = source.affine.copy()
    target_affine[:3, :3] = np.diag([-2.0, 2.0, 2.0])  # flipped axis, finer
    target_affine[:3, 3] = source.voxel_to_world(np.array([31.25, 0.25, 0.25]))
    carried = anatomy_on_grid(source, (64, 64, 64), target_affine)
    assert carried.tissue.sum() * 8 == pytest.approx(source.tissue.sum() * 64, rel=0.03)
    # where the source is uniform around a voxel, the carried map holds its value there
    uniform = [tuple(v) for v in np.argwhere(source.wm > 0.5)[::97]
               if np.ptp(source.wm[tuple(slice(i - 1, i + 2) for i in v)]) == 0]
    assert uniform
    for voxel in uniform:
        target = carried.world_to_voxel(source.voxel_to_world(np.array([voxel], dtype=float)))[0]
        assert carried.wm[tuple(np.round(target).astype(int))] == pytest.approx(source.wm[voxel], abs=1e-5)


def test_the_likelihood_peaks_at_the_truth_among_perturbed_parameters(fine_case):
    anatomy, patient, observation = fine_case
    problem = build_working_problem(observation, anatomy, spacing_mm=2.0, margin_mm=10.0)
    names = (*PARAMETER_NAMES, "u_t1gd", "u_flair", "sigma_alpha", "pet_scale", "pet_sigma")
    likelihood = ImageLogLikelihood(FisherKolmogorov(), problem.anatomy, problem.scans, JointLikelihood(), names)
    truth = torch.tensor([[TRUTH.get(n, 0.05) for n in names]], dtype=torch.float64)
    perturbed = truth.repeat(6, 1)
    for row, (column, factor) in enumerate([(0, 1.5), (0, 0.67), (1, 1.5), (1, 0.67), (3, 1.2), (6, 0.9)]):
        perturbed[row, column] *= factor
    values = likelihood(torch.cat([truth, perturbed]))
    assert values.shape == (7,) and values.dtype == torch.float64
    assert torch.all(values[0] > values[1:])


def test_the_likelihood_names_the_parameters_it_misses(fine_case):
    anatomy, _, observation = fine_case
    problem = build_working_problem(observation, anatomy)
    with pytest.raises(ValueError, match="pet_scale, pet_sigma"):
        ImageLogLikelihood(FisherKolmogorov(), problem.anatomy, problem.scans, JointLikelihood(),
                           (*PARAMETER_NAMES, "u_t1gd", "u_flair", "sigma_alpha"))


def test_the_density_at_the_crop_wall_is_the_largest_on_any_face():
    density = np.zeros((5, 6, 7), dtype=np.float32)
    density[2, 3, 3] = 0.9  # inside: not on a wall
    assert crop_wall_density(density) == 0.0
    density[2, 5, 4] = 0.3  # on the last y face
    assert crop_wall_density(density) == pytest.approx(0.3)
