"""The geometry-aware surrogate: its network, its loss, and how it places the cube on any grid.

The placement tests use a stand-in network that answers its own white-matter input: whatever the surrogate
hands it, it hands back, so where the density lands on the anatomy shows exactly where the cube was taken.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import phantom
from simulators.anatomy import Anatomy
from simulators.protocol import Simulator
from simulators.surrogates.geometry_aware import (
    GeometryAwareSurrogate,
    SurrogateConfig,
    anatomy_tensor,
    build_network,
    cube_points,
    parameter_features,
    sample_volume,
    surrogate_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = SurrogateConfig(crop=16, spacing_mm=4.0, channels=(4, 8), parameter_channels=2)


class WhiteMatterEcho(nn.Module):
    """Answers the cube's white-matter channel, scaled by the first parameter feature mapped to [0, 1]."""

    def __init__(self, config: SurrogateConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, anatomy: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return anatomy[:, :1] * (features[:, :1, None, None, None] + 1) / 2


def echo(config: SurrogateConfig = SMALL) -> GeometryAwareSurrogate:
    return GeometryAwareSurrogate(WhiteMatterEcho(config))  # type: ignore[arg-type]


def params_at(anatomy: Anatomy, voxel: tuple[int, int, int], d_w: float = 1.5) -> torch.Tensor:
    """One row whose seed is the world position of ``voxel``; D_w at the top of the box makes the echo exact."""
    return torch.tensor([[d_w, 0.05, 300.0, *anatomy.voxel_to_world(np.array(voxel, dtype=float))]],
                        dtype=torch.float64)


@pytest.mark.parametrize("skips", [False, True])
def test_the_network_maps_a_cube_and_parameters_to_a_density_cube(skips):
    config = SurrogateConfig(crop=16, channels=(4, 8, 8), parameter_channels=2, skips=skips)
    network = build_network(config, seed=0)
    out = network(torch.rand(3, 3, 16, 16, 16), torch.zeros(3, config.feature_count))
    assert out.shape == (3, 1, 16, 16, 16) and torch.isfinite(out).all()
    again = build_network(config, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="expected anatomy"):
        network(torch.rand(1, 3, 8, 8, 8), torch.zeros(1, config.feature_count))


@pytest.mark.parametrize("bad, match", [
    ({"crop": 18, "channels": (4, 8, 8)}, "multiple of 4"),
    ({"features": "log"}, "features"),
    ({"d_w": (1.0, 0.5)}, "d_w"),
    ({"spacing_mm": 0.0}, "spacing_mm"),
    ({"channels": ()}, "channels"),
])
def test_a_bad_configuration_is_refused_by_name(bad, match):
    with pytest.raises(ValueError, match=match):
        SurrogateConfig(**bad)


def test_features_span_the_box_in_both_conventions():
    for features in ("dwt", "mu"):
        config = SurrogateConfig(features=features)
        corners = torch.tensor([[config.d_w[0], config.rho[0], config.t[0]],
                                [config.d_w[1], config.rho[1], config.t[1]]])
        scaled = parameter_features(corners, config)
        assert torch.allclose(scaled[0], torch.full((config.feature_count,), -1.0))
        assert torch.allclose(scaled[1], torch.full((config.feature_count,), 1.0))
    # (D_w, T) and (2 D_w, T / 2) grow the same density: the "mu" features cannot tell them apart
    mu = SurrogateConfig(features="mu")
    pair = torch.tensor([[0.2, 0.02, 400.0], [0.4, 0.04, 200.0]])
    assert torch.allclose(*parameter_features(pair, mu))


def test_the_loss_counts_tumour_and_csf_voxels_only():
    simulated = torch.zeros(1, 1, 4, 4, 4)
    simulated[..., :2] = 0.5
    csf = torch.zeros_like(simulated)
    csf[..., 3] = 1.0
    assert surrogate_loss(simulated.clone(), simulated, csf) == 0
    predicted = simulated.clone()
    predicted[..., 2] = 0.3  # neither tumour nor CSF: not counted
    assert surrogate_loss(predicted, simulated, csf) == 0
    predicted[..., 0] = 0.7  # half of the tumour voxels off by 0.2
    predicted[..., 3] = 0.1  # every CSF voxel off by 0.1
    assert surrogate_loss(predicted, simulated, csf).item() == pytest.approx(0.1 + 0.1)


def test_on_a_grid_of_the_training_spacing_the_cube_is_the_voxel_crop_padded_with_nothing():
    anatomy = phantom(32, spacing_mm=4.0)
    seed = anatomy.voxel_to_world(np.array([3.0, 20.0, 28.0]))  # near two walls of the grid
    cube = sample_volume(anatomy_tensor(anatomy), anatomy.affine, cube_points(torch.tensor(seed)[None], 16, 4.0))
    expected = np.zeros((3, 16, 16, 16), np.float32)
    maps = np.stack([anatomy.wm, anatomy.gm, anatomy.csf])
    expected[:, 5:, :, :12] = maps[:, 0:11, 12:28, 20:32]  # cube index 8 is voxel (3, 20, 28)
    assert np.abs(cube[0].numpy() - expected).max() < 1e-5


def test_the_density_lands_on_the_voxels_the_cube_was_taken_from_and_stays_in_tissue():
    anatomy = phantom(32, spacing_mm=4.0)
    surrogate = echo()
    assert isinstance(surrogate, Simulator)
    density = surrogate.simulate(params_at(anatomy, (12, 20, 15)), anatomy)[0].numpy()
    expected = np.zeros(anatomy.shape, np.float32)
    expected[4:20, 12:28, 7:23] = anatomy.wm[4:20, 12:28, 7:23]
    expected[anatomy.tissue <= 0] = 0
    assert np.abs(density - expected).max() < 1e-5
    assert density.min() >= 0 and density.max() <= 1


def test_the_same_brain_on_a_flipped_and_permuted_grid_gives_the_same_density_in_the_world():
    anatomy = phantom(32, spacing_mm=4.0)
    order, flip = (2, 0, 1), 1  # new axis i is old axis order[i]; then new axis 1 runs backwards
    maps = {name: np.flip(np.transpose(getattr(anatomy, name), order), flip) for name in ("wm", "gm", "csf")}
    index_to_old = np.zeros((4, 4))
    for new, old in enumerate(order):
        index_to_old[old, new] = 1.0
    index_to_old[order[flip], flip] = -1.0
    index_to_old[order[flip], 3] = anatomy.shape[order[flip]] - 1
    index_to_old[3, 3] = 1.0
    turned = Anatomy(**{k: np.ascontiguousarray(v) for k, v in maps.items()}, affine=anatomy.affine @ index_to_old)
    params = params_at(anatomy, (12, 20, 15))
    original = echo().simulate(params, anatomy)[0].numpy()
    other = echo().simulate(params, turned)[0].numpy()
    assert np.abs(np.flip(np.transpose(original, order), flip) - other).max() < 1e-5


def test_a_finer_grid_gets_the_density_through_interpolation_in_the_same_place():
    coarse = phantom(32, spacing_mm=4.0)
    fine = coarse.resample(2.0)
    params = params_at(coarse, (16, 16, 16))
    on_coarse = echo().simulate(params, coarse)[0].numpy()
    on_fine = echo().simulate(params, fine)[0].numpy()
    shift = centre_mm(on_coarse, coarse) - centre_mm(on_fine, fine)
    assert np.linalg.norm(shift) < 1.0, shift  # mm; the two grids hold the same brain
    assert on_fine.sum() == pytest.approx(8 * on_coarse.sum(), rel=0.1)  # the same volume of density


def centre_mm(density: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    """The density's centre of mass in world mm."""
    indices = np.indices(anatomy.shape).reshape(3, -1)
    return anatomy.voxel_to_world((indices * density.ravel()).sum(axis=1) / density.sum())


def test_rows_of_a_batch_are_independent_and_a_seed_off_the_grid_gives_nothing():
    anatomy = phantom(32, spacing_mm=4.0)
    config = SurrogateConfig(crop=16, spacing_mm=4.0, channels=(4, 8), parameter_channels=2)
    surrogate = GeometryAwareSurrogate(build_network(config, seed=1), batch_size=2)
    rows = torch.cat([params_at(anatomy, (12, 20, 15)), params_at(anatomy, (16, 16, 16), d_w=0.3),
                      params_at(anatomy, (10, 10, 10), d_w=0.1)])
    batch = surrogate.simulate(rows, anatomy)
    for i in range(3):
        assert torch.allclose(batch[i], surrogate.simulate(rows[i:i + 1], anatomy)[0], atol=1e-6)
    far = rows[:1].clone()
    far[0, 3] += 1000.0
    assert surrogate.simulate(far, anatomy).abs().max() == 0


def test_bad_parameters_are_refused():
    anatomy = phantom(32, spacing_mm=4.0)
    with pytest.raises(ValueError, match=r"\[B, 6\]"):
        echo().simulate(torch.zeros(1, 5, dtype=torch.float64), anatomy)
    bad = params_at(anatomy, (12, 20, 15))
    bad[0, 2] = -1.0
    with pytest.raises(ValueError, match="positive"):
        echo().simulate(bad, anatomy)
