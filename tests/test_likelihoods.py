"""Specification of likelihoods: detection probability, mask and PET likelihoods, their joint."""

from __future__ import annotations

import math

import numpy as np
import scipy.stats
import pytest
import torch

from likelihoods import (
    CONVENTIONS,
    DEFAULT_CLAMP,
    GLIOMASOLVER_DEFAULTS,
    IMAGING_PARAMETER_NAMES,
    ImageObservation,
    JointLikelihood,
    detection_probability,
    mask_log_likelihood,
    pet_log_likelihood,
)

N = 24  # grid edge of the synthetic scans


def smooth_density(n: int = N, width: float = 0.25, centre=(0.05, -0.03, 0.02)) -> torch.Tensor:
    """A smooth tumour-like field in (0, 1]: an anisotropic Gaussian bump, shape (n, n, n), float64."""
    grid = (np.indices((n, n, n)).transpose(1, 2, 3, 0) + 0.5) / n - 0.5
    r2 = np.sum(((grid - np.array(centre)) / np.array([1.0, 0.8, 0.9])) ** 2, axis=-1)
    return torch.from_numpy(np.exp(-r2 / (2 * width**2)))


def random_case(seed: int = 0, batch: int = 3, n: int = 10):
    """Random densities (B, n, n, n), masks, a PET map with zeros, and a PET-valid mask, float64."""
    rng = np.random.default_rng(seed)
    density = torch.from_numpy(rng.uniform(0, 1, (batch, n, n, n)))
    t1gd = torch.from_numpy(rng.uniform(size=(n, n, n)) < 0.3)
    flair = torch.from_numpy(rng.uniform(size=(n, n, n)) < 0.5)
    pet = torch.from_numpy(np.where(rng.uniform(size=(n, n, n)) < 0.4, 0.0, rng.uniform(0, 1.2, (n, n, n))))
    valid = torch.from_numpy(rng.uniform(size=(n, n, n)) < 0.8)
    return density, t1gd, flair, pet, valid


def imaging_params(batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    low = {"u_t1gd": 0.5, "u_flair": 0.1, "sigma_alpha": 0.05, "pet_scale": 0.5, "pet_sigma": 0.05}
    high = {"u_t1gd": 0.8, "u_flair": 0.35, "sigma_alpha": 1.5, "pet_scale": 1.5, "pet_sigma": 0.3}
    return {k: torch.from_numpy(rng.uniform(low[k], high[k], batch)) for k in IMAGING_PARAMETER_NAMES}


# --- detection probability α(u) -------------------------------------------------------------------


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_alpha_is_one_half_at_threshold(convention):
    u_c = torch.tensor([0.1, 0.25, 0.7])
    density = u_c.view(3, 1, 1, 1).expand(3, 2, 2, 2).clone()
    alpha = detection_probability(density, u_c, torch.tensor([0.05, 0.3, 1.4]), convention=convention)
    assert torch.equal(alpha, torch.full_like(alpha, 0.5))


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_alpha_increases_with_density(convention):
    u = torch.linspace(0, 1, 1001).view(1, 1001, 1, 1)
    alpha = detection_probability(u, 0.4, 0.2, convention=convention).flatten()
    steps = torch.diff(alpha)
    assert torch.all(steps >= 0)
    if convention == "thesis":  # strictly, wherever the clamp does not bind
        inside = (alpha[1:] > DEFAULT_CLAMP) & (alpha[:-1] < 1 - DEFAULT_CLAMP)
        assert torch.all(steps[inside] > 0)


def test_alpha_tends_to_one_far_above_and_zero_far_below_within_the_clamp():
    u = torch.tensor([0.0, 0.05, 0.95, 1.0]).view(1, 4, 1, 1)
    alpha = detection_probability(u, 0.5, 0.05, clamp=DEFAULT_CLAMP).flatten()
    torch.testing.assert_close(alpha, torch.tensor([1e-4, 1e-4, 1 - 1e-4, 1 - 1e-4]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("clamp", [0.0, DEFAULT_CLAMP])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_mask_log_likelihood_is_finite_for_density_zero_and_one(convention, clamp):
    density = torch.stack([torch.zeros(4, 4, 4), torch.ones(4, 4, 4)])  # float32
    for mask in (torch.zeros(4, 4, 4, dtype=torch.bool), torch.ones(4, 4, 4, dtype=torch.bool)):
        for sigma_alpha in (1e-3, 0.05, 2.0):
            value = mask_log_likelihood(density, mask, 0.5, sigma_alpha, convention=convention, clamp=clamp)
            assert torch.all(torch.isfinite(value)), (mask[0, 0, 0], sigma_alpha, value)


# --- agreement with independent evaluations of the published formulas --------------------------------


def numpy_mask_log_likelihood(u, y, u_c, slope_or_sigma2, gliomasolver, clamp=0.0):
    """Σ y·log α + (1 − y)·log(1 − α), α = 0.5 + 0.5·sign(d)·(1 − exp(−ω²/s)), evaluated naively."""
    d = u - u_c
    omega2 = np.where(d > 0, 1.0, d**2) if gliomasolver else d**2
    alpha = 0.5 + 0.5 * np.sign(d) * (1 - np.exp(-omega2 / slope_or_sigma2))
    alpha = np.clip(alpha, clamp, 1 - clamp)
    return np.sum(np.where(y == 1, np.log(alpha), np.log(1 - alpha)))


def test_gliomasolver_mask_term_equals_published_formula():
    density, t1gd, flair, *_ = random_case()
    u_c = np.array([0.7, 0.25, 0.5])
    slope = np.array([2.0, 0.5, 1.0])
    for mask in (t1gd, flair):
        got = mask_log_likelihood(
            density, mask, torch.from_numpy(u_c), torch.from_numpy(np.sqrt(slope)), convention="gliomasolver"
        )
        want = [numpy_mask_log_likelihood(density[b].numpy(), mask.numpy(), u_c[b], slope[b], True) for b in range(3)]
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_gliomasolver_pet_term_equals_published_formula_with_normalising_constant():
    density, _, _, pet, _ = random_case()
    scale, sigma2 = np.array([0.85, 0.5, 1.2]), np.array([0.000361, 0.01, 0.2])
    got = pet_log_likelihood(
        density, pet, torch.from_numpy(scale), torch.from_numpy(np.sqrt(sigma2)), convention="gliomasolver"
    )
    want = []
    for b in range(3):
        on = pet.numpy() > 0
        residual = density[b].numpy()[on] - scale[b] * pet.numpy()[on]
        count = np.count_nonzero(on)
        want.append(-count / 2 * np.log(2 * np.pi * sigma2[b]) - np.sum(residual**2) / (2 * sigma2[b]))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_thesis_mask_term_equals_clamped_formula():
    density, t1gd, *_ = random_case()
    sigma_alpha = np.array([0.02, 0.1, 0.5])
    got = mask_log_likelihood(density, t1gd, 0.6, torch.from_numpy(sigma_alpha), clamp=1e-4)
    want = [
        numpy_mask_log_likelihood(density[b].numpy(), t1gd.numpy(), 0.6, s**2, False, 1e-4)
        for b, s in enumerate(sigma_alpha)
    ]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_thesis_pet_term_is_a_gaussian_over_valid_voxels_censored_at_zero():
    """Voxels read above 0 contribute the Gaussian density; voxels read 0 (40 % of this map) contribute
    the probability P(y ≤ 0) = Φ(−b·u/σ) of a measurement clipped at 0."""
    density, _, _, pet, valid = random_case()
    scale = torch.tensor([0.8, 1.0, 1.3], dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64)
    got = pet_log_likelihood(density, pet, scale, sigma, valid=valid)
    read, floor = valid & (pet > 0), valid & (pet == 0)
    assert floor.sum() > 100
    want = torch.stack(
        [
            torch.distributions.Normal(scale[b] * density[b][read], sigma[b]).log_prob(pet[read]).sum()
            + float(scipy.stats.norm.logcdf(0.0, (scale[b] * density[b][floor]).numpy(), float(sigma[b])).sum())
            for b in range(3)
        ]
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


# --- identifiability -------------------------------------------------------------------------------


def threshold_profile(u: torch.Tensor, u_c_true: float, grid: torch.Tensor, sigma_alpha: float, convention: str):
    """Mask log-likelihood of mask = (u > u_c_true) for every threshold in ``grid``."""
    return mask_log_likelihood(u.expand(len(grid), *u.shape), u > u_c_true, grid, sigma_alpha, convention=convention)


@pytest.mark.parametrize("u_c_true", [0.25, 0.7])
def test_mask_likelihood_over_thresholds_peaks_at_the_true_threshold(u_c_true, measured):
    u, step = smooth_density().float(), 0.025
    grid = torch.arange(0.05, 0.951, step)
    best = float(grid[torch.argmax(threshold_profile(u, u_c_true, grid, 0.05, "thesis"))])
    measured("argmax u_c", round(best, 3))
    assert abs(best - u_c_true) <= step + 1e-6


def test_gliomasolver_threshold_is_not_identifiable_at_its_default_slope(measured):
    """Above u_c its α is pinned at 1 − 0.5·e^(−1/slope) whatever the distance, while background voxels
    gain from any larger u_c: at slope 2 the likelihood peaks at the top of the threshold grid (GliomaSolver
    fixes u_c rather than inferring it)."""
    u, grid = smooth_density().float(), torch.arange(0.05, 0.951, 0.025)
    values = threshold_profile(u, 0.25, grid, math.sqrt(2.0), "gliomasolver")
    best = float(grid[torch.argmax(values)])
    measured("argmax u_c for true 0.25", round(best, 3))
    assert best > 0.9


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_pet_likelihood_over_scale_and_sigma_peaks_near_the_truth(convention, measured):
    u = smooth_density().float()
    rng = np.random.default_rng(3)
    scale_true, sigma_true = 0.85, 0.05
    noise = torch.from_numpy(rng.normal(0, sigma_true, u.shape)).float()
    if convention == "thesis":  # PET = b·u + noise, read as 0 where that is negative
        pet = torch.clamp(scale_true * u + noise, min=0)
    else:  # u = scale·PET + noise, on voxels with PET > 0
        pet = torch.clamp((u - noise) / scale_true, min=0)
    valid = u > 0.05 if convention == "gliomasolver" else torch.ones_like(u, dtype=torch.bool)
    scales, sigmas = torch.linspace(0.6, 1.1, 51), torch.linspace(0.02, 0.1, 41)
    b, s = torch.meshgrid(scales, sigmas, indexing="ij")
    values = pet_log_likelihood(
        u.expand(b.numel(), *u.shape), pet, b.flatten(), s.flatten(), valid=valid, convention=convention
    )
    best = int(torch.argmax(values))
    best_scale, best_sigma = float(b.flatten()[best]), float(s.flatten()[best])
    measured(f"{convention} argmax (scale, sigma)", (round(best_scale, 3), round(best_sigma, 4)))
    assert abs(best_scale - scale_true) <= 0.03
    assert abs(best_sigma - sigma_true) <= 0.006


# --- joint -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_joint_is_the_sum_of_the_parts(convention):
    density, t1gd, flair, pet, valid = random_case()
    params = imaging_params(3)
    observation = ImageObservation(t1gd=t1gd, flair=flair, pet=pet, pet_valid=valid)
    joint = JointLikelihood(convention=convention).log_likelihood(density, params, observation)
    parts = (
        mask_log_likelihood(density, t1gd, params["u_t1gd"], params["sigma_alpha"], convention=convention)
        + mask_log_likelihood(density, flair, params["u_flair"], params["sigma_alpha"], convention=convention)
        + pet_log_likelihood(density, pet, params["pet_scale"], params["pet_sigma"], valid=valid, convention=convention)
    )
    torch.testing.assert_close(joint, parts, rtol=1e-12, atol=0)


def test_absent_pet_ignores_pet_parameters():
    density, t1gd, flair, *_ = random_case()
    observation = ImageObservation(t1gd=t1gd, flair=flair)
    params = imaging_params(3)
    likelihood = JointLikelihood()
    reference = likelihood.log_likelihood(density, params, observation)
    without = {k: v for k, v in params.items() if not k.startswith("pet_")}
    nonsense = {**params, "pet_scale": torch.full((3,), -5.0), "pet_sigma": torch.full((3,), -1.0)}
    assert likelihood.parameter_names(observation) == ("u_t1gd", "u_flair", "sigma_alpha")
    assert torch.equal(likelihood.log_likelihood(density, without, observation), reference)
    assert torch.equal(likelihood.log_likelihood(density, nonsense, observation), reference)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_batched_evaluation_equals_one_at_a_time(convention):
    density, t1gd, flair, pet, valid = random_case(batch=5)
    density, pet = density.float(), pet.float()
    params = {k: v.float() for k, v in imaging_params(5).items()}
    observation = ImageObservation(t1gd=t1gd, flair=flair, pet=pet, pet_valid=valid)
    likelihood = JointLikelihood(convention=convention)
    batched = likelihood.log_likelihood(density, params, observation)
    single = torch.cat(
        [
            likelihood.log_likelihood(density[b : b + 1], {k: v[b : b + 1] for k, v in params.items()}, observation)
            for b in range(5)
        ]
    )
    torch.testing.assert_close(batched, single, rtol=1e-6, atol=1e-4)


def test_float32_agrees_with_float64_on_a_smooth_tumour():
    u = smooth_density(32)
    density = torch.stack([u, 0.9 * u])
    observation = ImageObservation(t1gd=u > 0.7, flair=u > 0.25, pet=0.85 * u, pet_valid=u > 0.01)
    params = {"u_t1gd": 0.68, "u_flair": 0.27, "sigma_alpha": 0.03, "pet_scale": 0.9, "pet_sigma": 0.02}
    likelihood = JointLikelihood()
    exact = likelihood.log_likelihood(density, params, observation)
    single = likelihood.log_likelihood(density.float(), params, observation)
    torch.testing.assert_close(single.double(), exact, rtol=1e-5, atol=1e-2)


def test_observation_from_personalize_style_numpy_arrays():
    u = smooth_density(8).numpy().astype(np.float32)
    t1gd = (u > 0.7).astype(np.float32)
    t1gd.setflags(write=False)
    observation = ImageObservation(t1gd=t1gd, flair=(u > 0.25).astype(np.float32), pet=u)
    assert observation.shape == (8, 8, 8)
    assert observation.t1gd.dtype == torch.bool and torch.equal(observation.t1gd, torch.from_numpy(u > 0.7))


def test_gliomasolver_defaults_name_every_imaging_parameter():
    assert set(GLIOMASOLVER_DEFAULTS) == set(IMAGING_PARAMETER_NAMES)
    assert GLIOMASOLVER_DEFAULTS["sigma_alpha"] ** 2 == pytest.approx(2.0)  # slope 2
    assert GLIOMASOLVER_DEFAULTS["pet_sigma"] ** 2 == pytest.approx(0.000361)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_evaluation_equals_cpu():
    density, t1gd, flair, pet, valid = random_case()
    params = imaging_params(3)
    observation = ImageObservation(t1gd=t1gd, flair=flair, pet=pet, pet_valid=valid)
    likelihood = JointLikelihood()
    cpu = likelihood.log_likelihood(density, params, observation)
    gpu = likelihood.log_likelihood(density.cuda(), {k: v.cuda() for k, v in params.items()}, observation.to("cuda"))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=0)


# --- bad input -------------------------------------------------------------------------------------


def test_shape_mismatch_between_density_and_masks_raises():
    density, t1gd, flair, *_ = random_case(n=10)
    observation = ImageObservation(t1gd=t1gd, flair=flair)
    with pytest.raises(ValueError, match="shape mismatch"):
        JointLikelihood().log_likelihood(density[:, :9], imaging_params(3), observation)
    with pytest.raises(ValueError, match="shape mismatch"):
        mask_log_likelihood(density, t1gd[:9], 0.5, 0.1)
    with pytest.raises(ValueError, match="shape mismatch"):
        ImageObservation(t1gd=t1gd, flair=flair[:, :9])


def test_unknown_convention_raises():
    density, t1gd, *_ = random_case()
    with pytest.raises(ValueError, match="unknown convention 'glioma'"):
        JointLikelihood(convention="glioma")
    with pytest.raises(ValueError, match="unknown convention"):
        mask_log_likelihood(density, t1gd, 0.5, 0.1, convention="Thesis")


@pytest.mark.parametrize("name", ["sigma_alpha", "pet_sigma"])
@pytest.mark.parametrize("bad", [0.0, -0.1])
def test_non_positive_sigma_raises_naming_it(name, bad):
    density, t1gd, flair, pet, _ = random_case()
    params = imaging_params(3)
    params[name] = torch.tensor([0.1, bad, 0.2], dtype=torch.float64)
    observation = ImageObservation(t1gd=t1gd, flair=flair, pet=pet)
    with pytest.raises(ValueError, match=f"{name} must be finite and > 0"):
        JointLikelihood().log_likelihood(density, params, observation)


def test_missing_imaging_parameter_raises_naming_it():
    density, t1gd, *_ = random_case()
    with pytest.raises(ValueError, match="u_t1gd"):
        JointLikelihood().log_likelihood(density, {"sigma_alpha": 0.1}, ImageObservation(t1gd=t1gd))


def test_non_binary_mask_raises():
    labels = torch.tensor([0.0, 1.0, 2.0, 4.0]).repeat(2, 2, 1)
    with pytest.raises(ValueError, match="binary"):
        ImageObservation(t1gd=labels)
