"""Learn-Morph-Infer: the μ reparameterisation, the sharded dataset, the network, training and stored weights."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import phantom
from personalize.lmi.dataset import (
    MANIFEST_FILE,
    DatasetConfig,
    generate_dataset,
    open_dataset,
    shard_path,
    split_shards,
)
from personalize.lmi.inputs import FLAIR_WEIGHT, T1GD_WEIGHT, encode_masks, network_input
from personalize.lmi.network import NetworkConfig, build_network, parameter_count
from personalize.lmi.parameters import OutputRanges, growth_from_mu, mu_from_growth
from personalize.lmi.train import CHECKPOINT_FILE, TrainingConfig, train
from personalize.checked_weights import record_path
from personalize.lmi.weights import load_weights, save_weights
from personalize.priors import DEFAULT_BOUNDS
from simulators.fisher_kolmogorov import FisherKolmogorov, front_speed
from simulators.stencil import set_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_numba_thread")

CONFIG = DatasetConfig(spacing_mm=8.0, samples_per_shard=2, t=(50.0, 400.0))
"""The 8 mm atlas (20 × 25 × 20 voxels), short growth times so that most draws fall in the volume window."""
DATA_SEED = 3
SHARDS = 4
TINY_NETWORK = NetworkConfig(channels=(4, 8))
TINY_TRAINING = TrainingConfig(network=TINY_NETWORK, batch_size=2, max_epochs=4, learning_rate=3e-3, patience=100,
                               evaluation_cases=1)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lmi") / "data"
    generate_dataset(directory, CONFIG, data_seed=DATA_SEED, shards=SHARDS, progress=False)
    return directory


def _shard(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


# ------------------------------------------------------------------------------------------------ parameters
def test_mu_round_trip_recovers_growth_at_its_front_speed():
    rng = np.random.default_rng(0)
    d_w, rho, t = (rng.uniform(*DEFAULT_BOUNDS[name], size=50) for name in ("D_w", "rho", "T"))
    mu_1, mu_2 = mu_from_growth(d_w, rho, t)
    np.testing.assert_allclose(mu_1**2, d_w * t, rtol=1e-12)
    np.testing.assert_allclose(mu_2**2, rho * t, rtol=1e-12)
    velocity = np.array([front_speed(d, r) for d, r in zip(d_w, rho)])
    for recovered, original in zip(growth_from_mu(mu_1, mu_2, velocity), (d_w, rho, t)):
        np.testing.assert_allclose(recovered, original, rtol=1e-12)
    as_torch = growth_from_mu(*mu_from_growth(*map(torch.from_numpy, (d_w, rho, t))), torch.from_numpy(velocity))
    for recovered, original in zip(as_torch, (d_w, rho, t)):
        assert isinstance(recovered, torch.Tensor)
        np.testing.assert_allclose(recovered.numpy(), original, rtol=1e-12)


def test_any_front_speed_gives_the_same_density():
    """Why μ is what the network predicts: (D_w, ρ, T) of one μ at two speeds grow the same tumour."""
    anatomy = phantom(n=16, spacing_mm=4.0)
    mu_1, mu_2 = mu_from_growth(np.float64(0.2), np.float64(0.05), np.float64(200.0))
    rows = [[*growth_from_mu(mu_1, mu_2, v), 4.0, -6.0, 2.0] for v in (0.05, 0.4)]
    density = FisherKolmogorov().simulate(torch.tensor(rows, dtype=torch.float64), anatomy)
    assert float(density[0].max()) > 0.5
    torch.testing.assert_close(density[0], density[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_mu_refuses_non_positive_inputs_by_name(bad):
    with pytest.raises(ValueError, match="rho must be finite and positive"):
        mu_from_growth(np.array([0.1, 0.2]), np.array([0.01, bad]), np.array([100.0, 100.0]))
    with pytest.raises(ValueError, match="velocity must be finite and positive"):
        growth_from_mu(np.array([3.0]), np.array([2.0]), bad)


def test_scaling_maps_ranges_onto_the_unit_box_and_back():
    seed_box = {"x": (-70.0, 70.0), "y": (-100.0, 70.0), "z": (-50.0, 80.0)}
    ranges = OutputRanges.from_bounds(DEFAULT_BOUNDS, seed_box)
    corners = np.array([ranges.low, ranges.high])
    np.testing.assert_allclose(ranges.scale(corners), [[-1.0] * 5, [1.0] * 5], atol=1e-12)
    assert ranges.low[0] == pytest.approx(np.sqrt(0.02 * 50.0)) and ranges.high[1] == pytest.approx(np.sqrt(0.2 * 1500))
    scaled = np.random.default_rng(1).uniform(-1, 1, size=(20, 5))
    np.testing.assert_allclose(ranges.scale(ranges.unscale(scaled)), scaled, atol=1e-12)
    as_torch = ranges.unscale(torch.from_numpy(scaled).float())
    assert as_torch.dtype == torch.float32
    np.testing.assert_allclose(as_torch.numpy(), ranges.unscale(scaled), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[\.\.\., 5\]"):
        ranges.scale(np.zeros((3, 4)))


def test_network_input_weights_t1gd_and_flair():
    t1gd = np.array([0, 0, 1, 1], dtype=bool)
    flair = np.array([0, 1, 1, 0], dtype=bool)
    codes = encode_masks(t1gd, flair)
    assert codes.dtype == np.uint8
    np.testing.assert_allclose(network_input(codes).numpy(), T1GD_WEIGHT * t1gd + FLAIR_WEIGHT * flair, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ dataset
def test_dataset_shards_hold_what_their_parameters_simulate(dataset_dir):
    opened = open_dataset(dataset_dir)
    assert opened.config == CONFIG and opened.data_seed == DATA_SEED
    assert [p.name for p in opened.shards] == [f"shard_{i:05d}.npz" for i in range(SHARDS)]
    shard = _shard(opened.shards[0])
    n = CONFIG.samples_per_shard
    assert shard["masks"].dtype == np.uint8 and shard["masks"].shape == (n, *opened.anatomy.shape)
    assert shard["targets"].dtype == np.float32 and np.all(np.abs(shard["targets"]) <= 1)
    parameters = shard["parameters"]
    truth = np.column_stack([*mu_from_growth(*parameters[:, :3].T), parameters[:, 3:]])
    np.testing.assert_allclose(shard["targets"], opened.ranges.scale(truth), atol=1e-6)
    # the masks are the thresholded density of the stored parameters, inside the volume window
    density = CONFIG.simulator.simulate(torch.from_numpy(parameters[:1]), opened.anatomy)[0].numpy()
    u_t1gd, u_flair = shard["thresholds"][0]
    np.testing.assert_array_equal(shard["masks"][0], encode_masks(density > u_t1gd, density > u_flair))
    voxel_ml = 8.0**3 / 1000
    assert (density > u_t1gd).sum() * voxel_ml >= CONFIG.min_t1gd_ml
    assert (density > u_flair).sum() * voxel_ml <= CONFIG.max_flair_ml


def test_resumed_generation_skips_complete_shards_and_rewrites_lost_ones_identically(dataset_dir, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(dataset_dir, copy)
    kept = shard_path(copy, 0).stat().st_mtime_ns
    original = _shard(shard_path(copy, 1))
    shard_path(copy, 1).unlink()
    result = generate_dataset(copy, CONFIG, data_seed=DATA_SEED, shards=SHARDS + 1, progress=False)
    assert result.written == (shard_path(copy, 1), shard_path(copy, SHARDS))
    assert shard_path(copy, 0).stat().st_mtime_ns == kept
    rewritten = _shard(shard_path(copy, 1))
    for name, values in original.items():
        np.testing.assert_array_equal(rewritten[name], values)


def test_generation_refuses_another_configuration_or_seed(dataset_dir):
    with pytest.raises(ValueError, match=r"config\.min_t1gd_ml"):
        generate_dataset(dataset_dir, replace(CONFIG, min_t1gd_ml=2.0), data_seed=DATA_SEED, shards=1, progress=False)
    with pytest.raises(ValueError, match="data_seed"):
        generate_dataset(dataset_dir, CONFIG, data_seed=DATA_SEED + 1, shards=1, progress=False)
    assert json.loads((dataset_dir / MANIFEST_FILE).read_text())["data_seed"] == DATA_SEED


def test_same_seed_gives_identical_shards_whatever_the_workers(dataset_dir, tmp_path):
    # spawned, not forked: this process has run the solver's OpenMP kernel, and GNU OpenMP refuses a fork after that
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"), initializer=set_threads,
                             initargs=(1,)) as pool:
        again = generate_dataset(tmp_path / "again", CONFIG, data_seed=DATA_SEED, shards=SHARDS, executor=pool,
                                 progress=False)
    for path in again.shards:
        first, second = _shard(dataset_dir / path.name), _shard(path)
        for name, values in first.items():
            np.testing.assert_array_equal(second[name], values)
    other = _shard(generate_dataset(tmp_path / "other", CONFIG, data_seed=DATA_SEED + 1, shards=1,
                                    progress=False).shards[0])
    assert not np.array_equal(other["parameters"], _shard(dataset_dir / "shard_00000.npz")["parameters"])


def test_split_is_deterministic_disjoint_and_complete():
    split = split_shards(range(20), seed=5)
    assert split == split_shards(list(reversed(range(20))), seed=5)
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert set().union(*parts) == set(range(20)) and sum(map(len, parts)) == 20
    assert (len(split.train), len(split.validation), len(split.test)) == (16, 2, 2)
    assert split_shards(range(20), seed=6) != split
    with pytest.raises(ValueError, match="at least 3 shards"):
        split_shards([0, 1])


# ------------------------------------------------------------------------------------------------ network
@pytest.mark.parametrize("norm", ["group", "batch"])
def test_network_maps_a_batch_to_five_outputs_in_the_unit_box(norm):
    network = build_network(replace(TINY_NETWORK, norm=norm), seed=0)
    batch = 1000.0 * torch.randn(3, 1, 16, 20, 16, generator=torch.Generator().manual_seed(0))
    out = network(batch)
    assert out.shape == (3, 5)
    assert bool(((out >= -1) & (out <= 1)).all())
    assert parameter_count(network) < parameter_count(build_network(NetworkConfig(channels=(8, 16)), seed=0))
    with pytest.raises(ValueError, match="channels must be"):
        NetworkConfig(channels=())


# ------------------------------------------------------------------------------------------------ training
def test_training_lowers_the_loss_and_resumes_to_the_same_result(dataset_dir, tmp_path):
    whole = train(dataset_dir, tmp_path / "whole", TINY_TRAINING, progress=False)
    assert whole.train_loss[-1] < whole.train_loss[0]
    assert (tmp_path / "whole" / CHECKPOINT_FILE).is_file() and whole.weights.is_file()
    assert len(whole.test.cases) == 1 and all(0 <= d <= 1 for d in whole.test.cases[0].dice)

    interrupted = train(dataset_dir, tmp_path / "parts", replace(TINY_TRAINING, max_epochs=2), progress=False)
    assert len(interrupted.train_loss) == 2
    resumed = train(dataset_dir, tmp_path / "parts", TINY_TRAINING, progress=False)
    assert resumed.train_loss == whole.train_loss and resumed.validation_loss == whole.validation_loss
    for name, value in torch.load(whole.weights, weights_only=True).items():
        torch.testing.assert_close(torch.load(resumed.weights, weights_only=True)[name], value, rtol=0, atol=0)

    with pytest.raises(ValueError, match="another dataset or training configuration"):
        train(dataset_dir, tmp_path / "parts", replace(TINY_TRAINING, learning_rate=1e-3), progress=False)


# ------------------------------------------------------------------------------------------------ weights
def test_weights_load_untouched_and_refuse_tampering_or_another_architecture(tmp_path):
    network = build_network(TINY_NETWORK, seed=1)
    ranges = OutputRanges(low=(1.0, 0.3, -70.0, -100.0, -50.0), high=(47.0, 17.0, 70.0, 70.0, 80.0))
    path = tmp_path / "net.pt"
    save_weights(network, path, ranges=ranges, provenance={"data_seed": DATA_SEED})
    record = json.loads(record_path(path).read_text())
    assert record["data_seed"] == DATA_SEED and record["network"]["channels"] == [4, 8] and len(record["sha256"]) == 64

    loaded = load_weights(path)
    batch = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    network.eval()
    torch.testing.assert_close(loaded.network(batch), network(batch))
    assert loaded.ranges == ranges

    with pytest.raises(ValueError, match="net.pt: saved for"):
        load_weights(path, config=NetworkConfig(channels=(4, 16)))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"net\.pt: SHA-256 .* differs"):
        load_weights(path)
