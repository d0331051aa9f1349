"""Specification of the Fisher–Kolmogorov simulator: accuracy, conservation, bounds, symmetry, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import phantom
from simulators.anatomy import Anatomy
from simulators.fisher_kolmogorov import FisherKolmogorov, front_speed
from simulators.protocol import Simulator
from simulators.seed import Seed


def homogeneous(shape: tuple[int, int, int], spacing_mm: float) -> Anatomy:
    """All white matter: a closed box of homogeneous tissue whose corner (edge of voxel 0) is the origin."""
    ones = np.ones(shape, np.float32)
    affine = np.diag([spacing_mm] * 3 + [1.0])
    affine[:3, 3] = spacing_mm / 2
    return Anatomy(wm=ones, gm=0 * ones, csf=0 * ones, affine=affine)


def params(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def restrict(u: np.ndarray) -> np.ndarray:
    """Average 2×2×2 blocks: a fine cell-centred field on the next coarser grid."""
    x, y, z = (n // 2 for n in u.shape)
    return u.reshape(x, 2, y, 2, z, 2).mean(axis=(1, 3, 5))


def test_satisfies_simulator_protocol():
    assert isinstance(FisherKolmogorov(), Simulator)
    assert FisherKolmogorov.parameter_names == ("D_w", "rho", "T", "x", "y", "z")


def test_travelling_front_speed_is_within_3_percent_of_2_sqrt_D_rho(measured):
    d_w, rho, h = 0.5, 0.1, 0.5
    anatomy = homogeneous((900, 1, 1), h)
    fk = FisherKolmogorov(seed=Seed("gaussian", width_mm=2.0))

    def front(t: float) -> float:
        u = fk.simulate(params((d_w, rho, t, 0.0, 0.25, 0.25)), anatomy)[0, :, 0, 0].numpy()
        i = int(np.argmax(u < 0.5))  # first voxel below 1/2; interpolate the crossing
        return h * (i - 1 + (u[i - 1] - 0.5) / (u[i - 1] - u[i]))

    t1, t2 = 400.0, 800.0
    speed = (front(t2) - front(t1)) / (t2 - t1)
    error = speed / front_speed(d_w, rho) - 1
    # a front from compact initial data lags by (3/2)·sqrt(D/rho)·ln t (Bramson 1983): the rest is numerical
    bramson = front_speed(d_w, rho) - 1.5 * math.sqrt(d_w / rho) * math.log(t2 / t1) / (t2 - t1)
    numerical = speed / bramson - 1
    measured("front speed / 2sqrt(D rho) - 1", f"{error:+.4f}")
    measured("front speed / Bramson-corrected speed - 1", f"{numerical:+.4f}")
    assert abs(error) < 0.03
    assert abs(numerical) < 0.01


@pytest.mark.parametrize("integrator, expected", [("euler", 1), ("heun", 2)])
def test_time_step_refinement_converges_at_the_integrators_order(integrator, expected, measured):
    anatomy = phantom(24, 4.0)
    theta = params((0.05, 0.1, 120.0, -6.0, 4.0, 2.0))  # reaction-limited steps: the splitting is tested
    runs = [
        FisherKolmogorov(integrator=integrator, time_step_factor=f).simulate(theta, anatomy)[0].double().numpy()
        for f in (1, 0.5, 0.25)
    ]
    coarse, fine = np.abs(runs[0] - runs[1]).sum(), np.abs(runs[1] - runs[2]).sum()
    order = math.log2(coarse / fine)
    measured(f"observed order in time, {integrator} (L1)", f"{order:.2f}")
    assert expected - 0.3 < order < expected + 0.5, f"observed order in time {order:.2f}"


def test_grid_refinement_converges_at_second_order(measured):
    length, theta = 32.0, params((0.3, 0.05, 40.0, 16.0, 16.0, 16.0))
    fk = FisherKolmogorov(seed=Seed("gaussian", width_mm=3.0, amplitude=0.5, cutoff=1e-6))
    runs = [fk.simulate(theta, homogeneous((n,) * 3, length / n))[0].double().numpy() for n in (16, 32, 64)]
    e_coarse = np.sqrt(((runs[0] - restrict(runs[1])) ** 2).mean())
    e_fine = np.sqrt(((runs[1] - restrict(runs[2])) ** 2).mean())
    order = math.log2(e_coarse / e_fine)
    measured("observed order in space (L2)", f"{order:.2f}")
    assert 1.6 < order < 2.6, f"observed order in space {order:.2f}"


def test_pure_diffusion_in_closed_heterogeneous_tissue_conserves_mass(brain, measured):
    theta = params((1.2, 0.0, 300.0, 10.0, -8.0, 6.0))
    fk = FisherKolmogorov()
    before = fk.initial_density(theta, brain).double().sum()
    after = fk.simulate(theta, brain).double().sum()
    drift = abs(float(after / before) - 1)
    measured("relative mass drift", f"{drift:.2e}")
    assert drift < 1e-5
    assert float(after) > 0


def test_random_prior_draws_stay_in_tissue_within_bounds_and_finite(brain):
    generator = torch.Generator().manual_seed(0)
    n = 1000
    low = torch.tensor([0.02, 0.002, 50.0])
    high = torch.tensor([1.5, 0.2, 1500.0])
    growth = low + (high - low) * torch.rand(n, 3, generator=generator)
    tissue_voxels = np.argwhere(brain.tissue > 0.5)
    seeds = brain.voxel_to_world(tissue_voxels[torch.randint(len(tissue_voxels), (n,), generator=generator)])
    theta = torch.cat([growth, torch.as_tensor(seeds, dtype=torch.float32)], dim=1)
    outside = torch.from_numpy(brain.tissue == 0)
    fk = FisherKolmogorov()
    for batch in theta.split(250):
        u = fk.simulate(batch, brain)
        assert torch.isfinite(u).all()
        assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0
        assert float(u[:, outside].abs().max()) == 0.0
        assert (u.flatten(1).max(dim=1).values > 0).all()


def test_batched_results_equal_one_at_a_time(brain):
    theta = params(
        (0.13, 0.025, 300.0, 10.0, -8.0, 6.0),
        (0.9, 0.15, 120.0, -20.0, 10.0, -4.0),
        (0.05, 0.01, 800.0, 4.0, 30.0, 10.0),
    )
    fk = FisherKolmogorov()
    together = fk.simulate(theta, brain)
    alone = torch.cat([fk.simulate(theta[i : i + 1], brain) for i in range(len(theta))])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_mirrored_anatomy_and_seed_give_the_mirrored_tumour(brain):
    theta = params((0.5, 0.05, 200.0, 12.0, -6.0, 4.0))
    theta_mirrored = theta.clone()
    theta_mirrored[0, 3:] = torch.as_tensor(brain.mirror_point(theta[0, 3:].numpy(), axis=0))
    fk = FisherKolmogorov()
    u = fk.simulate(theta, brain)[0]
    u_mirrored = fk.simulate(theta_mirrored, brain.mirrored(axis=0))[0]
    torch.testing.assert_close(u_mirrored.flip(0), u, atol=1e-5, rtol=0)


def test_result_lives_in_world_space_whatever_the_array_orientation():
    anatomy = phantom(24, 4.0)
    permuted_affine = anatomy.affine[:, [2, 0, 1, 3]]  # array axes (z, x, y) on the same world grid
    permuted = Anatomy(*(np.ascontiguousarray(a.transpose(2, 0, 1)) for a in (anatomy.wm, anatomy.gm, anatomy.csf)),
                       affine=permuted_affine)
    theta = params((0.4, 0.05, 150.0, 6.0, -10.0, 3.0))
    fk = FisherKolmogorov()
    u = fk.simulate(theta, anatomy)[0]
    u_permuted = fk.simulate(theta, permuted)[0]
    torch.testing.assert_close(u_permuted, u.permute(2, 0, 1), atol=1e-5, rtol=0)


def test_anisotropic_spacing_keeps_the_front_speed_isotropic():
    d_w, rho, t = 0.4, 0.1, 150.0
    anatomy = Anatomy(*(np.ones((40, 80, 40), np.float32),) * 1, gm=np.zeros((40, 80, 40), np.float32),
                      csf=np.zeros((40, 80, 40), np.float32), affine=np.diag([2.0, 1.0, 2.0, 1.0]))
    u = FisherKolmogorov().simulate(params((d_w, rho, t, 40.0, 40.0, 40.0)), anatomy)[0].numpy()
    reach = [np.count_nonzero(profile > 0.5) * h for profile, h in
             ((u[:, 40, 20], 2.0), (u[20, :, 20], 1.0), (u[20, 40, :], 2.0))]
    assert max(reach) - min(reach) <= 4.0, reach


def test_torch_kernel_matches_the_compiled_cpu_kernel(brain):
    theta = params((0.3, 0.05, 200.0, 10.0, -8.0, 6.0), (1.0, 0.1, 100.0, -12.0, 4.0, 0.0))
    compiled = FisherKolmogorov(backend="numba").simulate(theta, brain)
    eager = FisherKolmogorov(backend="torch").simulate(theta, brain)
    torch.testing.assert_close(eager, compiled, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(brain):
    theta = params((0.3, 0.05, 200.0, 10.0, -8.0, 6.0))
    on_gpu = FisherKolmogorov().simulate(theta.cuda(), brain)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), FisherKolmogorov().simulate(theta, brain), atol=1e-5, rtol=0)


def test_seed_has_the_same_physical_size_on_any_grid():
    theta = params((0.1, 0.01, 0.0, 16.0, 16.0, 16.0))
    fk = FisherKolmogorov(seed=Seed("gaussian", width_mm=3.0, amplitude=1.0, cutoff=1e-6))
    mass = [float(fk.initial_density(theta, homogeneous((n,) * 3, 32.0 / n)).sum()) * (32.0 / n) ** 3 for n in (16, 32, 64)]
    expected = (2 * math.pi) ** 1.5 * 3.0**3
    assert all(abs(m / expected - 1) < 0.02 for m in mass), mass


def test_seed_without_tissue_gives_no_tumour(brain):
    corner = brain.voxel_to_world(np.array([0, 0, 0]))
    u = FisherKolmogorov().simulate(params((0.5, 0.1, 300.0, *corner)), brain)
    assert float(u.max()) == 0.0


@pytest.mark.parametrize(
    "row, problem",
    [((-0.1, 0.1, 100, 0, 0, 0), "D_w"), ((0.1, -0.1, 100, 0, 0, 0), "rho"),
     ((0.1, 0.1, -5, 0, 0, 0), "T"), ((0.1, float("nan"), 100, 0, 0, 0), "NaN")],
)
def test_invalid_parameters_are_refused_with_the_parameter_named(brain, row, problem):
    with pytest.raises(ValueError, match=problem):
        FisherKolmogorov().simulate(params(row), brain)


def test_early_exit_at_saturation_agrees_with_the_full_run_within_its_tolerance(brain, monkeypatch):
    import simulators.fisher_kolmogorov as module

    theta = params((1.0, 0.1, 1200.0, 10.0, -8.0, 6.0), (0.6, 0.15, 900.0, -16.0, 6.0, 2.0))
    calls = {"count": 0}
    step = module.diffusion_reaction_step

    def counting(*args, **kwargs):
        calls["count"] += 1
        step(*args, **kwargs)

    monkeypatch.setattr(module, "diffusion_reaction_step", counting)
    early = FisherKolmogorov(saturation=1e-4).simulate(theta, brain)
    early_calls, calls["count"] = calls["count"], 0
    full = FisherKolmogorov(saturation=0.0).simulate(theta, brain)
    assert early_calls < 0.5 * calls["count"], (early_calls, calls["count"])
    torch.testing.assert_close(early, full, atol=1e-4, rtol=0)
