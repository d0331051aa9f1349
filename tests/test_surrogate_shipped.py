"""The surrogate weights shipped in the package: they load, record their data, and grow tumours like the solver.

The comparison is on tumours the network never saw: a data seed that is not the training set's, in the test
anatomy of the default anatomies (a deformed atlas no sample of which was trained on), grown by the solver on the
whole anatomy and by the surrogate through ``simulate``, the call every fit makes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from personalize.overlap import dice
from personalize.surrogate.anatomies import build_anatomy
from personalize.surrogate.dataset import CPU_DATA, SOLVER, simulate_shard
from personalize.surrogate.weights import SHIPPED_SURROGATE, load_surrogate
from simulators.protocol import Simulator

pytestmark = [pytest.mark.usefixtures("one_torch_thread", "one_numba_thread"),
              pytest.mark.skipif(not SHIPPED_SURROGATE.is_file(), reason="no surrogate weights shipped")]

FRESH_SEED = 424_242
"""A data seed the shipped weights were not trained on (theirs is in their record)."""


@pytest.fixture(scope="module")
def shipped():
    return load_surrogate(SHIPPED_SURROGATE)


def test_the_shipped_surrogate_is_small_checked_and_records_its_data(shipped):
    surrogate, record = shipped
    assert isinstance(surrogate, Simulator) and SHIPPED_SURROGATE.stat().st_size <= 25 * 2**20
    assert record["data_seed"] != FRESH_SEED and record["dataset"]["crop"] == surrogate.config.crop
    roles = {a["role"] for a in record["dataset"]["anatomies"]}
    assert roles == {"train", "validation", "test"} and record["test_metrics"]["samples"] > 0


def test_the_shipped_surrogate_grows_unseen_tumours_in_an_unseen_anatomy_like_the_solver(shipped, measured):
    surrogate, _ = shipped
    spec = next(a for a in CPU_DATA.anatomies if a.role == "test")
    anatomy = build_anatomy(spec, CPU_DATA.spacing_mm)
    shard = simulate_shard(replace(CPU_DATA, samples_per_shard=6), anatomy, FRESH_SEED, 0)
    params = torch.from_numpy(shard["parameters"])
    solver = SOLVER.simulate(params, anatomy).numpy()
    learned = surrogate.simulate(params, anatomy).numpy()
    scores = {level: np.mean([dice(a > level, b > level) for a, b in zip(learned, solver) if (b > level).any()])
              for level in (0.2, 0.4, 0.8)}
    error = np.abs(learned - solver)[:, anatomy.tissue > 0].mean()
    measured("Dice at u = 0.2, 0.4, 0.8; MAE over tissue", ", ".join(f"{v:.3f}" for v in scores.values())
             + f"; {error:.4f}")
    assert scores[0.2] > 0.7 and scores[0.4] > 0.7
