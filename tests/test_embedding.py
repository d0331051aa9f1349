"""The fixed reductions that carry scans into NPE keep what identifies the tumour: its mass, position, spread."""

import pytest
import torch

from personalize.embedding import (
    EMBEDDINGS,
    EmbeddedSimulator,
    embedding_net,
    moment_features,
    network_input,
    pooled_features,
)


def ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))
    distance = (grid - torch.tensor(centre, dtype=torch.float64)[:, None, None, None]).square().sum(dim=0).sqrt()
    return (distance <= radius).double()


SHAPE = (21, 17, 25)
MEAN, SQUARE, CX, CY, CZ, XX, YY, ZZ, XY, XZ, YZ = range(11)


def test_moments_place_the_centroid_in_box_coordinates():
    """A ball centred at voxel c has its centroid at −1 + 2c/(n − 1) along each axis."""
    centre = (6.0, 11.0, 15.0)
    features = moment_features(ball(SHAPE, centre, 4.0)[None, None])[0]
    expected = torch.tensor([-1 + 2 * c / (n - 1) for c, n in zip(centre, SHAPE)], dtype=torch.float64)
    torch.testing.assert_close(features[CX:CZ + 1], expected, atol=1e-12, rtol=0)


def test_moments_follow_a_translation_and_keep_mass_and_spread():
    """Moving a ball moves its centroid by the shift and leaves its mass and central moments unchanged."""
    a = moment_features(ball(SHAPE, (8.0, 8.0, 10.0), 3.5)[None, None])[0]
    b = moment_features(ball(SHAPE, (11.0, 6.0, 13.0), 3.5)[None, None])[0]
    step = torch.tensor([2 / (n - 1) for n in SHAPE], dtype=torch.float64)
    torch.testing.assert_close(b[CX:CZ + 1] - a[CX:CZ + 1], torch.tensor([3.0, -2.0, 3.0], dtype=torch.float64) * step)
    torch.testing.assert_close(b[[MEAN, SQUARE]], a[[MEAN, SQUARE]])
    torch.testing.assert_close(b[XX:], a[XX:], atol=1e-12, rtol=0)


def test_moments_grow_with_the_lesion_and_separate_channels():
    """A larger ball has more mass and a wider spread; each channel is summarised on its own."""
    small, large = ball(SHAPE, (10.0, 8.0, 12.0), 2.5), ball(SHAPE, (10.0, 8.0, 12.0), 5.0)
    features = moment_features(torch.stack([small, large])[None]).reshape(2, 11)
    assert features[1, MEAN] > 5 * features[0, MEAN]
    assert (features[1, XX:ZZ + 1] > 3 * features[0, XX:ZZ + 1]).all()
    torch.testing.assert_close(features[:, XY:], torch.zeros(2, 3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_an_empty_scan_gives_finite_zero_moments():
    """No lesion (a FLAIR mask below every threshold) is a valid observation, not a NaN."""
    features = moment_features(torch.zeros(3, 2, *SHAPE))
    assert torch.isfinite(features).all() and (features == 0).all()


def test_every_embedding_gives_one_feature_vector_per_observation():
    """Each embedding maps a batch of scans to a batch of fixed-length vectors the estimator can read."""
    x = torch.rand(4, 3, 12, 10, 14)
    assert network_input("pooled", x).shape == pooled_features(x).shape == (4, 3 * 64)
    assert network_input("moments", x).shape == (4, 3 * 11)
    for kind in EMBEDDINGS:
        assert embedding_net(kind, 3)(network_input(kind, x)).shape[0] == 4


def blobs(theta: torch.Tensor) -> torch.Tensor:
    """A ball per row, centred by θ's first two values, as a one-channel scan."""
    return torch.stack([ball(SHAPE, (float(t[0]), float(t[1]), 12.0), 4.0)[None] for t in theta])


def test_features_reduced_per_chunk_equal_those_of_the_whole_batch():
    """An executor may reduce scans chunk by chunk where they are made: the features do not change."""
    theta = torch.tensor([[8.0, 6.0], [12.0, 9.0], [10.0, 10.0]])
    simulate = EmbeddedSimulator(blobs, "moments")
    whole = network_input("moments", blobs(theta).float())
    torch.testing.assert_close(torch.cat([simulate(theta[:1]), simulate(theta[1:])]), whole)
    with pytest.raises(ValueError, match="embedding must be one of"):
        EmbeddedSimulator(blobs, "fft")
