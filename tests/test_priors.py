"""Specification of personalize.priors: a uniform prior over box parameters and a seed in candidate tissue."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from personalize.io import Observation
from personalize.priors import (
    DEFAULT_BOUNDS,
    Prior,
    parse_bound_overrides,
    read_bounds_toml,
    seed_candidates,
)
from simulators.anatomy import Anatomy
from simulators.nifti import Volume

N = 24
SPACING = 4.0


def grid_affine(spacing: float = SPACING, n: int = N) -> np.ndarray:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (n - 1) / 2
    return affine


def centred_indices(n: int = N) -> np.ndarray:
    return np.indices((n, n, n)).transpose(1, 2, 3, 0) - (n - 1) / 2  # voxel offsets from the grid centre


def make_anatomy(affine: np.ndarray | None = None) -> Anatomy:
    """WM ball (radius 6 voxels), GM shell to 9, CSF ventricle (a small ball inside WM), CSF rim to 10."""
    g = centred_indices()
    r = np.linalg.norm(g, axis=-1)
    ventricle = np.linalg.norm(g - [-3, 0, 0], axis=-1) < 1.8
    wm = ((r < 6) & ~ventricle).astype(np.float32)
    gm = ((r >= 6) & (r < 9)).astype(np.float32)
    csf = (ventricle | ((r >= 9) & (r < 10))).astype(np.float32)
    return Anatomy(wm=wm, gm=gm, csf=csf, affine=grid_affine() if affine is None else affine)


def make_observation(anatomy: Anatomy, pet: bool = False) -> Observation:
    """T1Gd ball of radius 1.5 voxels and FLAIR ball of radius 3 voxels around voxel offset (-2, 0, 0), so the
    abnormality's neighbourhood reaches the ventricle (CSF, not a candidate)."""
    g = centred_indices()
    distance = np.linalg.norm(g - [-2, 0, 0], axis=-1)
    t1gd = (distance < 1.5).astype(np.float32)
    flair = (distance < 3).astype(np.float32)
    volume = Volume(data=t1gd, affine=anatomy.affine, source_affine=anatomy.affine, source_shape=t1gd.shape,
                    path="synthetic_t1gd.nii.gz")
    pet_map = np.exp(-distance**2 / 8).astype(np.float32) if pet else None
    return Observation(t1gd=t1gd, flair=flair, pet=pet_map, affine=anatomy.affine, reference=volume)


@pytest.fixture(scope="module")
def anatomy() -> Anatomy:
    return make_anatomy()


@pytest.fixture(scope="module")
def observation(anatomy) -> Observation:
    return make_observation(anatomy)


@pytest.fixture(scope="module")
def prior(anatomy, observation) -> Prior:
    return Prior.from_config(anatomy, observation)


def voxel_of(prior: Prior, anatomy: Anatomy, theta: torch.Tensor) -> np.ndarray:
    seeds = theta[..., [prior.index("x"), prior.index("y"), prior.index("z")]].double().numpy()
    return np.floor(anatomy.world_to_voxel(seeds) + 0.5).astype(int)


# ----------------------------------------------------------------------------------------- names and shapes

def test_names_units_bounds_and_order(prior):
    assert prior.names == ("D_w", "rho", "T", "x", "y", "z", "u_t1gd", "u_flair", "sigma_alpha")
    assert [prior.index(n) for n in prior.names] == list(range(9))
    assert prior.units["D_w"] == "mm^2/day" and prior.units["rho"] == "1/day" and prior.units["T"] == "day"
    assert prior.units["x"] == "mm"
    assert prior.bounds == {n: v for n, v in DEFAULT_BOUNDS.items() if not n.startswith("pet")}
    assert prior.event_shape == torch.Size([9]) and prior.batch_shape == torch.Size()
    assert isinstance(prior, torch.distributions.Distribution)
    with pytest.raises(ValueError, match="pet_scale"):
        prior.index("pet_scale")


def test_pet_parameters_only_with_pet(anatomy):
    with_pet = Prior.from_config(anatomy, make_observation(anatomy, pet=True))
    assert with_pet.names[-2:] == ("pet_scale", "pet_sigma")
    assert with_pet.bounds["pet_scale"] == (0.6, 1.02) and with_pet.bounds["pet_sigma"] == (0.01, 0.25)
    assert with_pet.sample((3,)).shape == (3, 11)


def test_sample_and_log_prob_shapes(prior):
    assert prior.sample().shape == (9,)
    assert prior.sample((7,)).shape == (7, 9)
    assert prior.sample((2, 3)).shape == (2, 3, 9)
    assert prior.sample((2, 3)).dtype == torch.float32
    assert prior.log_prob(prior.sample((2, 3))).shape == (2, 3)
    assert prior.log_prob(prior.sample()).shape == ()
    with pytest.raises(ValueError, match=r"\[\.\.\., 9\]"):
        prior.log_prob(torch.zeros(4, 8))


# ------------------------------------------------------------------------------------ candidate seed voxels

def test_candidates_are_tissue_within_margin_of_the_abnormality(anatomy, observation):
    candidates = seed_candidates(anatomy, observation, seed_margin_mm=5.0)
    g = centred_indices()
    distance_vox = np.linalg.norm(g - [-2, 0, 0], axis=-1)
    abnormal = (observation.t1gd > 0) | (observation.flair > 0)
    assert not np.any(candidates & (anatomy.tissue < 0.5)), "a non-tissue voxel (ventricle) is a candidate"
    assert np.all(candidates[abnormal & (anatomy.tissue >= 0.5)])
    # 5 mm at 4 mm spacing reaches the face neighbours of the abnormality, not voxels 2 away
    assert np.any(candidates & ~abnormal)
    assert not np.any(candidates & (distance_vox >= 3 + 2))
    assert np.array_equal(seed_candidates(anatomy, observation, 0.0), abnormal & (anatomy.tissue >= 0.5))


def test_grid_mismatch_and_empty_candidates_are_refused(anatomy, observation):
    small = make_anatomy().crop((slice(0, 20), slice(0, N), slice(0, N)))
    with pytest.raises(ValueError, match="shape"):
        Prior.from_config(small, observation)
    shifted = grid_affine()
    shifted[:3, 3] += 2.0
    with pytest.raises(ValueError, match="affine"):
        Prior.from_config(make_anatomy(shifted), observation)
    no_tissue = Anatomy(wm=np.zeros((N, N, N)), gm=np.zeros((N, N, N)), csf=np.ones((N, N, N)),
                        affine=grid_affine())
    with pytest.raises(ValueError, match="no tissue voxel"):
        Prior.from_config(no_tissue, observation)
    with pytest.raises(ValueError, match="seed_margin_mm"):
        Prior.from_config(anatomy, observation, seed_margin_mm=-1.0)


# ------------------------------------------------------------------------------------------------ sampling

def test_samples_lie_in_bounds_and_in_candidate_voxels(prior, anatomy):
    theta = prior.sample_with(20_000, torch.Generator().manual_seed(1))
    for name, (low, high) in prior.bounds.items():
        column = theta[:, prior.index(name)]
        assert column.min() >= low - 1e-6 and column.max() <= high + 1e-6, name
    voxels = voxel_of(prior, anatomy, theta)
    assert prior.candidates[voxels[:, 0], voxels[:, 1], voxels[:, 2]].all()
    assert torch.isfinite(prior.log_prob(theta)).all()
    assert prior.support.check(theta).all()


def test_box_marginals_are_uniform(prior):
    theta = prior.sample_with(20_000, torch.Generator().manual_seed(2)).double()
    for name, (low, high) in prior.bounds.items():
        p_value = stats.kstest(theta[:, prior.index(name)].numpy(), stats.uniform(low, high - low).cdf).pvalue
        assert p_value > 0.01, f"{name}: KS p = {p_value:.3g}"


def test_seed_covers_candidates_uniformly(prior, anatomy, measured):
    theta = prior.sample_with(200_000, torch.Generator().manual_seed(3))
    voxels = voxel_of(prior, anatomy, theta)
    flat = np.ravel_multi_index(voxels.T, prior.candidates.shape)
    counts = np.bincount(flat, minlength=prior.candidates.size)[prior.candidates.ravel()]
    assert counts.min() > 0, "a candidate voxel never drawn"
    p_value = stats.chisquare(counts).pvalue
    measured("candidate voxels", int(prior.candidates.sum()))
    measured("chi-square p over voxels", f"{p_value:.3f}")
    assert p_value > 0.01
    # uniform within each voxel cell: the fractional voxel position is uniform on [-0.5, 0.5)
    seeds = theta[:, 3:6].double().numpy()
    within = anatomy.world_to_voxel(seeds) - voxels
    for axis in range(3):
        assert stats.kstest(within[:, axis], stats.uniform(-0.5, 1.0).cdf).pvalue > 0.01


def test_generator_makes_draws_reproducible(prior):
    first = prior.sample_with((50,), torch.Generator().manual_seed(7))
    again = prior.sample_with((50,), torch.Generator().manual_seed(7))
    other = prior.sample_with((50,), torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(11)
    a = prior.sample((5,))
    torch.manual_seed(11)
    assert torch.equal(a, prior.sample((5,)))


def test_mean_and_variance_match_samples(prior):
    theta = prior.sample_with(100_000, torch.Generator().manual_seed(4)).double()
    scale = prior.stddev.double()
    assert torch.allclose(theta.mean(0), prior.mean.double(), atol=0.02 * scale.max().item(), rtol=0)
    assert torch.all(torch.abs(theta.mean(0) - prior.mean.double()) < 0.02 * scale)
    assert torch.allclose(theta.var(0), prior.variance.double(), rtol=0.03)


# ----------------------------------------------------------------------------------------------- log_prob

def test_log_prob_is_the_exact_normalising_constant_inside_and_minus_inf_outside(prior, anatomy, observation):
    volume = prior.candidates.sum() * SPACING**3
    expected = -sum(math.log(high - low) for low, high in prior.bounds.values()) - math.log(volume)
    assert prior.candidate_volume_mm3 == pytest.approx(volume)
    theta = prior.sample_with(10, torch.Generator().manual_seed(5)).double()
    assert torch.allclose(prior.log_prob(theta), torch.full((10,), expected, dtype=torch.float64), atol=1e-12)

    in_csf = theta[0].clone()
    ventricle = np.argwhere((anatomy.csf > 0.5) & (anatomy.tissue < 0.5)
                            & (np.linalg.norm(centred_indices() - [-3, 0, 0], axis=-1) < 1.8))[0]
    assert observation.flair[tuple(ventricle)] == 1, "the CSF point should lie inside the abnormality"
    in_csf[3:6] = torch.as_tensor(anatomy.voxel_to_world(ventricle))
    far_from_tumour = theta[0].clone()
    far_from_tumour[3:6] = torch.as_tensor(anatomy.voxel_to_world(np.array([11.5, 20.0, 11.5])))
    off_grid = theta[0].clone()
    off_grid[3] = 1e4
    too_fast = theta[0].clone()
    too_fast[prior.index("D_w")] = 1.6
    negative_time = theta[0].clone()
    negative_time[prior.index("T")] = -1.0
    nan = theta[0].clone()
    nan[4] = float("nan")
    outside = torch.stack([in_csf, far_from_tumour, off_grid, too_fast, negative_time, nan])
    assert torch.equal(prior.log_prob(outside), torch.full((6,), -math.inf, dtype=torch.float64))
    assert not prior.support.check(outside).any()


def test_log_prob_integrates_to_one_over_the_outer_box(prior):
    low, high = prior.outer_bounds
    generator = torch.Generator().manual_seed(6)
    points = low + (high - low) * torch.rand(400_000, len(prior.names), dtype=torch.float64, generator=generator)
    integral = torch.exp(prior.log_prob(points)).mean() * torch.prod(high - low)
    assert integral.item() == pytest.approx(1.0, rel=0.02)


def test_rotated_grid_keeps_samples_and_density_consistent():
    angle = math.radians(30)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([SPACING, 3.0, 2.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    anatomy = make_anatomy(affine)
    prior = Prior.from_config(anatomy, make_observation(anatomy))
    assert prior.candidate_volume_mm3 == pytest.approx(prior.candidates.sum() * SPACING * 3.0 * 2.0)
    theta = prior.sample_with(20_000, torch.Generator().manual_seed(9))
    assert torch.isfinite(prior.log_prob(theta)).all()
    voxels = voxel_of(prior, anatomy, theta)
    assert prior.candidates[voxels[:, 0], voxels[:, 1], voxels[:, 2]].all()
    low, high = prior.outer_bounds
    assert torch.all(theta.double() > low) and torch.all(theta.double() < high)


# ------------------------------------------------------------------------------------- unbounded space

def test_unbounded_round_trip(prior):
    theta = prior.sample_with(1000, torch.Generator().manual_seed(10)).double()
    z = prior.to_unbounded(theta)
    assert torch.isfinite(z).all()
    assert torch.allclose(prior.from_unbounded(z), theta, rtol=1e-12, atol=1e-9)
    z = torch.randn(1000, len(prior.names), dtype=torch.float64, generator=torch.Generator().manual_seed(12)) * 3
    assert torch.allclose(prior.to_unbounded(prior.from_unbounded(z)), z, rtol=1e-9, atol=1e-9)
    theta32 = prior.sample_with(1000, torch.Generator().manual_seed(13))
    assert torch.allclose(prior.from_unbounded(prior.to_unbounded(theta32)), theta32, rtol=1e-5, atol=1e-5)


def test_log_abs_det_jacobian_matches_autograd(prior):
    z = torch.randn(4, len(prior.names), dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    for point in z:
        jacobian = torch.autograd.functional.jacobian(prior.from_unbounded, point)
        expected = torch.linalg.slogdet(jacobian).logabsdet
        assert prior.log_abs_det_jacobian(point).item() == pytest.approx(expected.item(), abs=1e-9)
    assert prior.log_abs_det_jacobian(z).shape == (4,)


def test_biject_to_support_is_the_same_map(prior):
    transform = torch.distributions.biject_to(prior.support)
    z = torch.randn(5, len(prior.names), generator=torch.Generator().manual_seed(15))
    assert torch.allclose(transform(z), prior.from_unbounded(z), rtol=1e-5, atol=1e-4)
    theta = transform(z)
    assert torch.allclose(transform.log_abs_det_jacobian(z, theta), prior.log_abs_det_jacobian(z), rtol=1e-5)


def test_unbounded_density_is_minus_inf_where_the_seed_leaves_candidates(prior, anatomy):
    theta = prior.sample_with(1, torch.Generator().manual_seed(16)).double()
    corner = theta.clone()
    low, high = prior.outer_bounds
    corner[0, 3:6] = low[3:6] + 1e-3  # inside the bounding box, outside the (ball-shaped) candidate set
    assert torch.isfinite(prior.log_prob_unbounded(prior.to_unbounded(theta))).all()
    assert prior.log_prob_unbounded(prior.to_unbounded(corner)).item() == -math.inf


# -------------------------------------------------------------------------------------------- overrides

def test_explicit_and_command_line_overrides_change_bounds(anatomy, observation):
    overrides = parse_bound_overrides(["D_w=0.05:1.0", "T = 100:900"])
    assert overrides == {"D_w": (0.05, 1.0), "T": (100.0, 900.0)}
    prior = Prior.from_config(anatomy, observation, overrides)
    assert prior.bounds["D_w"] == (0.05, 1.0) and prior.bounds["T"] == (100.0, 900.0)
    assert prior.bounds["rho"] == DEFAULT_BOUNDS["rho"]
    assert parse_bound_overrides("rho=0.01:0.1") == {"rho": (0.01, 0.1)}


def test_toml_overrides_then_explicit_ones(anatomy, observation, tmp_path):
    path = tmp_path / "prior.toml"
    path.write_text("[bounds]\nD_w = [0.05, 1.0]\nrho = [0.01, 0.1]\n\n[other]\nignored = true\n")
    assert read_bounds_toml(path) == {"D_w": (0.05, 1.0), "rho": (0.01, 0.1)}
    prior = Prior.from_config(anatomy, observation, {"rho": (0.02, 0.05)}, toml_path=path)
    assert prior.bounds["D_w"] == (0.05, 1.0) and prior.bounds["rho"] == (0.02, 0.05)
    theta = prior.sample_with(1000, torch.Generator().manual_seed(17))
    assert theta[:, 0].min() >= 0.05 and theta[:, 0].max() <= 1.0


@pytest.mark.parametrize("item, name", [
    ("D_x=0.1:1", "D_x"),            # unknown parameter
    ("rho=0.2:0.1", "rho"),          # low >= high
    ("T=5:5", "T"),                  # low == high
    ("D_w=-0.1:1", "D_w"),           # negative diffusivity
    ("T=-10:100", "T"),              # negative time
    ("u_t1gd=0.5:1.5", "u_t1gd"),    # threshold above 1
    ("x=0:10", "x"),                 # the seed is not a box parameter
    ("D_w=a:b", "D_w"),              # not numbers
    ("D_w=inf:1", "D_w"),            # not finite
])
def test_bad_command_line_overrides_name_the_parameter(item, name):
    with pytest.raises(ValueError, match=name):
        parse_bound_overrides([item])


def test_bad_overrides_elsewhere_are_refused(anatomy, observation, tmp_path):
    with pytest.raises(ValueError, match="NAME=LOW:HIGH"):
        parse_bound_overrides(["D_w 0.1 1"])
    with pytest.raises(ValueError, match="rho.*twice"):
        parse_bound_overrides(["rho=0.01:0.1", "rho=0.02:0.1"])
    with pytest.raises(ValueError, match="rho"):
        Prior.from_config(anatomy, observation, {"rho": (0.3, 0.1)})
    with pytest.raises(ValueError, match="pet_sigma.*no PET"):
        Prior.from_config(anatomy, observation, {"pet_sigma": (0.01, 0.1)})
    bad = tmp_path / "bad.toml"
    bad.write_text("[bounds]\nT = [-5.0, 100.0]\n")
    with pytest.raises(ValueError, match="bad.toml.*T"):
        Prior.from_config(anatomy, observation, toml_path=bad)
    single = tmp_path / "single.toml"
    single.write_text("[bounds]\nD_w = 0.5\n")
    with pytest.raises(ValueError, match="D_w.*pair"):
        read_bounds_toml(single)
    empty = tmp_path / "empty.toml"
    empty.write_text("[priors]\n")
    with pytest.raises(ValueError, match=r"\[bounds\]"):
        read_bounds_toml(empty)


# -------------------------------------------------------------------------------------- sbi and pyro

def test_sbi_takes_it_as_is(prior):
    from sbi.utils import mcmc_transform
    from sbi.utils.sbiutils import within_support
    from sbi.utils.user_input_checks import process_prior

    processed, n_parameters, returns_numpy = process_prior(prior)
    assert processed is prior and n_parameters == 9 and returns_numpy is False
    theta = prior.sample((100,))
    assert within_support(prior, theta).all()
    outside = theta.clone()
    outside[:, prior.index("rho")] = 1.0
    assert not within_support(prior, outside).any()
    transform = mcmc_transform(prior)  # parameters -> unbounded, the inverse of biject_to(prior.support)
    assert torch.allclose(transform(theta), prior.to_unbounded(theta), rtol=1e-3, atol=1e-3)
    assert torch.allclose(transform.inv(transform(theta)), theta, rtol=1e-4, atol=1e-3)


def test_pyro_samples_from_it_in_a_model(prior):
    import pyro
    import pyro.poutine as poutine

    def model():
        return pyro.sample("theta", prior)

    pyro.set_rng_seed(0)
    trace = poutine.trace(model).get_trace()
    value = trace.nodes["theta"]["value"]
    assert value.shape == (9,)
    assert trace.log_prob_sum().item() == pytest.approx(prior.log_prob(value).item())
    conditioned = poutine.condition(model, data={"theta": value})
    assert torch.equal(poutine.trace(conditioned).get_trace().nodes["theta"]["value"], value)
    # what HMC/NUTS build: the unconstrained space through transform_to(support), and its potential
    from pyro.infer.mcmc.util import initialize_model

    init, potential_fn, transforms, _ = initialize_model(model)
    z = init["theta"]
    assert torch.allclose(transforms["theta"].inv(z), prior.from_unbounded(z), rtol=1e-5, atol=1e-4)
    assert torch.isfinite(potential_fn(init))
