"""The solver against two peer solvers' outputs for the same patient case (skips without ../shared/data).

Each peer is matched under its own input and seed convention (see benchmarks/forward.py for the sources):
TumorGrowthToolkit with the true WM/GM and its Gaussian seed; GliomaSolver with its grey-matter map as both
tissue maps, as its published run used, and its smooth bump seed.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from personalize.overlap import dice
from simulators.anatomy import Anatomy
from simulators.fisher_kolmogorov import FisherKolmogorov
from simulators.seed import PRESETS

PATIENT = SHARED_DATA / "lipkova_patient"
RUNS = SHARED_DATA / "reference_runs"
FRACTIONS = np.array([0.64925073, 0.59093041, 0.37127833])

pytestmark = pytest.mark.skipif(not RUNS.is_dir() or not PATIENT.is_dir(), reason=f"no reference runs at {RUNS}")


@pytest.fixture(scope="module")
def anatomy() -> Anatomy:
    return Anatomy.from_nifti(PATIENT / "WM.nii.gz", PATIENT / "GM.nii.gz")


def reference(name: str) -> np.ndarray:
    return np.asarray(nib.load(RUNS / name).dataobj, dtype=np.float32)


def case(anatomy: Anatomy, voxel: np.ndarray) -> torch.Tensor:
    return torch.tensor([[0.13, 0.025, 300.0, *anatomy.voxel_to_world(voxel)]], dtype=torch.float32)


def test_agrees_with_tumorgrowthtoolkit_under_its_seed(anatomy, measured):
    seed = PRESETS["tumorgrowthtoolkit"]
    voxel = np.floor(FRACTIONS * np.asarray(anatomy.shape))
    u = FisherKolmogorov(seed=seed).simulate(case(anatomy, voxel), anatomy)[0].numpy()
    peer = reference("tumorgrowthtoolkit_Dw0.13_rho0.025_T300.nii.gz")
    scores = dice(u > 0.25, peer > 0.25), dice(u > 0.7, peer > 0.7)
    measured("Dice vs TumorGrowthToolkit at u>0.25 / u>0.7", f"{scores[0]:.4f} / {scores[1]:.4f}")
    assert min(scores) > 0.98


def test_agrees_with_gliomasolver_under_its_input_and_seed(anatomy, measured):
    gm = anatomy.gm
    as_run = Anatomy(wm=0.5 * gm, gm=0.5 * gm, csf=np.zeros_like(gm), affine=anatomy.affine)
    seed = PRESETS["gliomasolver"]
    u = FisherKolmogorov(seed=seed).simulate(case(as_run, FRACTIONS * np.asarray(gm.shape)), as_run)[0].numpy()
    peer = reference("gliomasolver_Dw0.13_rho0.025_T300.nii.gz")
    scores = dice(u > 0.25, peer > 0.25), dice(u > 0.7, peer > 0.7)
    measured("Dice vs GliomaSolver at u>0.25 / u>0.7", f"{scores[0]:.4f} / {scores[1]:.4f}")
    assert min(scores) > 0.93
