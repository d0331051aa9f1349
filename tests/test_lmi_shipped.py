"""The Learn-Morph-Infer weights shipped in the package: they load, vouch for their atlas and data, and estimate.

The estimate is checked on tumours the network never saw: a shard drawn with a data seed that is not the
training set's, in the same atlas and box, and a synthetic patient fitted through ``personalize fit --method lmi``
with no ``--weights`` (the shipped ones), end to end through the registration.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from personalize.cli import main
from personalize.lmi.dataset import simulate_shard
from personalize.lmi.inputs import network_input
from personalize.lmi.network import predict
from personalize.lmi.parameters import OUTPUT_NAMES
from personalize.lmi.personalization import weights_atlas
from personalize.lmi.weights import SHIPPED_WEIGHTS, load_weights
from personalize.synth import BUILT_IN_CASE, synthesize, write_synthetic
from simulators.atlas import default_atlas

pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_numba_thread")
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

FRESH_SEED = 987_654
"""A data seed the shipped weights were not trained on (theirs is in their record)."""


@pytest.fixture(scope="module")
def shipped():
    loaded = load_weights(SHIPPED_WEIGHTS)
    return loaded, *weights_atlas(SHIPPED_WEIGHTS, loaded)


def test_the_shipped_weights_are_small_load_checked_and_record_their_data_and_test_table(shipped):
    loaded, config, atlas = shipped
    assert SHIPPED_WEIGHTS.stat().st_size <= 25 * 2**20
    record = loaded.record
    assert record["data_seed"] != FRESH_SEED and record["training"]["evaluation_cases"] >= 240
    assert record["dataset"]["spacing_mm"] == config.spacing_mm == atlas.spacing_mm[0]
    metrics = record["test_metrics"]
    assert len(metrics["cases"]) >= 240 and set(metrics["dice_mean"]) == {"0.01", "0.1", "0.8"}
    assert all(0 <= value <= 1 for value in metrics["dice_mean"].values())


def test_the_shipped_network_estimates_unseen_tumours_far_better_than_a_constant_guess(shipped, measured):
    """On 8 fresh atlas tumours its errors (scaled units) are well below those of the best constant, the
    midpoint of each output's range, for every output."""
    loaded, config, atlas = shipped
    shard = simulate_shard(replace(config, samples_per_shard=8), atlas, FRESH_SEED, 0)
    inputs = torch.stack([network_input(m)[None] for m in shard["masks"]])
    predicted = predict(loaded.network, inputs).double().numpy()
    error = np.abs(predicted - shard["targets"]).mean(axis=0)
    constant = np.abs(shard["targets"]).mean(axis=0)
    seed_mm = np.linalg.norm(loaded.ranges.unscale(predicted)[:, 2:] - shard["parameters"][:, 3:6], axis=1).mean()
    measured("scaled MAE per output, network / constant", ", ".join(
        f"{name} {e:.3f}/{c:.3f}" for name, e, c in zip(OUTPUT_NAMES, error, constant)))
    measured("mean seed error (mm)", f"{seed_mm:.1f}")
    assert error.mean() < 0.5 * constant.mean()
    assert np.all(error[2:] < 0.5 * constant[2:])  # the seed, axis by axis
    assert seed_mm < 3 * config.spacing_mm


def test_the_command_fits_a_patient_with_the_shipped_weights_when_none_are_given(tmp_path, capsys, measured):
    patient = synthesize(BUILT_IN_CASE, default_atlas(4.0), seed=0, with_pet=False)
    paths = write_synthetic(patient, tmp_path / "patient")
    code = main(["fit", "--method", "lmi", "--t1gd", str(paths["t1gd"]), "--flair", str(paths["flair"]), "--wm",
                 str(paths["wm"]), "--gm", str(paths["gm"]), "--csf", str(paths["csf"]), "--quiet",
                 "--out", str(tmp_path / "fit")])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert summary["weights"]["sha256"] == json.loads(SHIPPED_WEIGHTS.with_suffix(".json").read_text())["sha256"]
    seed_error = np.linalg.norm([summary["parameters"][n]["map"] - BUILT_IN_CASE[n] for n in "xyz"])
    measured("built-in case: Dice T1Gd, FLAIR; seed error (mm); wall (s)",
             f"{summary['map_fit']['dice_t1gd']:.3f}, {summary['map_fit']['dice_flair']:.3f}; {seed_error:.1f}; "
             f"{summary['wall_s']:.1f}")
    assert summary["map_fit"]["dice_flair"] > 0.5
    assert seed_error < 15.0
