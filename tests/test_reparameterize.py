"""Specification of log coordinates: an exact change of variables that straightens the growth model's ridge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import biject_to

from conftest import phantom
from personalize.priors import Prior
from personalize.reparameterize import FunctionInCoordinates, LogCoordinates, PriorInCoordinates


@pytest.fixture(scope="module")
def prior() -> Prior:
    anatomy = phantom(24, 4.0)
    abnormal = np.zeros(anatomy.shape, dtype=np.float32)
    abnormal[10:14, 10:14, 10:14] = 1
    observation = type("Scans", (), {"t1gd": abnormal, "flair": abnormal, "pet": None})()
    return Prior.from_config(anatomy, observation)


def test_coordinates_round_trip_and_log_only_the_named_columns(prior):
    coordinates = LogCoordinates.of(prior.names, ("D_w", "rho", "T"))
    theta = prior.sample_with(100, torch.Generator().manual_seed(0)).double()
    z = coordinates.from_physical(theta)
    np.testing.assert_allclose(z[:, :3], torch.log(theta[:, :3]), rtol=1e-12)
    np.testing.assert_array_equal(z[:, 3:], theta[:, 3:])
    np.testing.assert_allclose(coordinates.to_physical(z), theta, rtol=1e-12)
    with pytest.raises(ValueError, match="not among"):
        LogCoordinates.of(prior.names, ("kappa",))


def test_the_prior_in_log_coordinates_is_a_normalised_density_of_log_theta(prior):
    """The marginal of log T under a uniform T on [a, b] is e^z / (b − a): histogram of samples and the
    density agree, and the density integrates to one over its support."""
    coordinates = LogCoordinates.of(prior.names, ("D_w", "rho", "T"))
    transformed = PriorInCoordinates(prior, coordinates)
    z = transformed.sample_with(20000, torch.Generator().manual_seed(1))
    low, high = prior.bounds["T"]
    counts, edges = np.histogram(z[:, 2].numpy(), bins=20, range=(math.log(low), math.log(high)))
    expected = 20000 * (np.exp(edges[1:]) - np.exp(edges[:-1])) / (high - low)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    # log_prob(z) − log_prob_theta(θ(z)) is exactly the Jacobian Σ z over logged columns
    theta = coordinates.to_physical(z[:5])
    difference = transformed.log_prob(z[:5]) - prior.log_prob(theta.float()).double()
    np.testing.assert_allclose(difference, z[:5, :3].sum(dim=1), rtol=1e-6)


def test_outside_the_support_the_log_density_is_minus_infinity(prior):
    coordinates = LogCoordinates.of(prior.names, ("D_w", "rho", "T"))
    transformed = PriorInCoordinates(prior, coordinates)
    z = transformed.sample_with(3, torch.Generator().manual_seed(2))
    z[0, 0] = math.log(10 * prior.bounds["D_w"][1])
    assert transformed.log_prob(z)[0] == -math.inf and torch.isfinite(transformed.log_prob(z)[1:]).all()


def test_sbi_can_use_the_prior_in_log_coordinates_as_a_torch_distribution(prior):
    """sbi draws with ``sample``, rejects leaked samples with ``support.check`` and maps to an unbounded space
    with ``biject_to(support)``: all three agree with the physical prior."""
    coordinates = LogCoordinates.of(prior.names, ("D_w", "rho", "T"))
    transformed = PriorInCoordinates(prior, coordinates)
    torch.manual_seed(0)
    z = transformed.sample((64,))
    assert z.dtype == prior.dtype and transformed.support.check(z).all()
    outside = z.clone()
    outside[0, 0] = math.log(10 * prior.bounds["D_w"][1])
    assert not transformed.support.check(outside)[0]
    transform = biject_to(transformed.support)
    torch.testing.assert_close(transform(transform.inv(z.double())), z.double(), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(transform.log_abs_det_jacobian(transform.inv(z.double()), z.double())).all()


def test_the_likelihood_sees_physical_parameters():
    coordinates = LogCoordinates((True, False))
    seen = []
    wrapped = FunctionInCoordinates(lambda theta: seen.append(theta) or theta.sum(dim=1), coordinates)
    value = wrapped(torch.tensor([[0.0, 2.0], [math.log(3.0), -1.0]], dtype=torch.float64))
    np.testing.assert_allclose(seen[0], [[1.0, 2.0], [3.0, -1.0]])
    np.testing.assert_allclose(value, [3.0, 2.0])
