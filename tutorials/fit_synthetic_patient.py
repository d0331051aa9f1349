# %% [markdown]
# # Fitting a synthetic patient with TMCMC
#
# This walkthrough grows a tumour with known parameters on the default atlas, images it the way the
# likelihood assumes (T1Gd and FLAIR masks, FET-PET), and then personalizes the Fisher–Kolmogorov model
# to those scans as one would for a real patient: the posterior over all 11 parameters, the MAP tumour,
# and the posterior-predictive maps of where the tumour is beyond what the scans show.
#
# Run it as a script: `python tutorials/fit_synthetic_patient.py --out tutorial-out` (about 10 minutes
# on two cores), or with `--quick` for small settings (a 4 mm grid and a small population: a minute,
# what CI runs; the posterior is then rough). The same steps from a shell:
#
# ```
# personalize synth --out patient
# personalize fit --t1gd patient/t1gd.nii.gz --flair patient/flair.nii.gz --pet patient/pet.nii.gz \
#     --wm patient/wm.nii.gz --gm patient/gm.nii.gz --csf patient/csf.nii.gz --truth patient/truth.json --out fit
# ```

# %%
import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from personalize.fit import FitSettings, fit, summary_table
from personalize.overlap import dice
from personalize.io import load_observation
from personalize.synth import BUILT_IN_CASE, synthesize, write_synthetic
from simulators.anatomy import Anatomy
from simulators.atlas import default_atlas

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="tutorial-out")
parser.add_argument("--quick", action="store_true", help="small settings (what CI runs)")
args = parser.parse_args()
out = Path(args.out)

# %% [markdown]
# ## 1. A synthetic patient
#
# The built-in case: D_w = 0.13 mm²/day, ρ = 0.025 /day, T = 300 days, seeded in the right frontal
# white matter; visible on T1Gd above u = 0.7 and on FLAIR above u = 0.25; PET = 0.85·u plus noise.
# Everything is written as NIfTI, with the truth beside it, exactly as a user's files would be.

# %%
spacing = 4.0 if args.quick else 2.0
patient = synthesize(BUILT_IN_CASE, default_atlas(spacing_mm=spacing), seed=0)
paths = write_synthetic(patient, out / "patient")
print("visible volumes (mL):", {k: round(v, 1) for k, v in patient.visible_volumes_ml.items()})
print("truth:", json.loads(paths["truth"].read_text())["mu_1"])

# %% [markdown]
# ## 2. Read the scans and the anatomy
#
# `load_observation` checks the files (one grid, binary masks or a named label convention, PET finite and
# non-negative) and reorients them to RAS+. The tissue maps here are the atlas's; for a real patient
# they come from a tissue segmentation of the patient's own T1 on the same grid.

# %%
observation = load_observation(paths["t1gd"], paths["flair"], paths["pet"])
tissue = Anatomy.from_nifti(paths["wm"], paths["gm"], paths["csf"])

# %% [markdown]
# ## 3. Fit
#
# TMCMC moves a population of parameter sets from the prior to the posterior through tempered targets.
# It first tempers on a grid twice as coarse as the working grid (a simulation there costs ~1/30), then
# bridges to the working grid, so the posterior is that of the working grid's model. Each stage is
# checkpointed in `fit/checkpoint/`: a killed fit continues with `resume=True` (`--resume`).

# %%
if args.quick:
    settings = FitSettings(spacing_mm=4.0, n_samples=64, chain_steps=1, n_predictive=16)
else:
    settings = FitSettings()
result = fit(observation, out / "fit", tissue=tissue, settings=settings, truth=patient.truth)
print(summary_table(result.summary, ["mu_1", "mu_2", "x", "y", "z", "u_t1gd", "u_flair", "sigma_alpha"]))

# %% [markdown]
# ## 4. Read the result
#
# μ₁ = √(D_w·T) and μ₂ = √(ρ·T) are what the scans determine; D_w, ρ and T separately are not
# identifiable from one time point (see `figures/pair.png`: the posterior is a ridge along T). Check
# whether the truth falls inside each 90 % interval, and how well the MAP tumour reproduces the masks.

# %%
truth = dict(patient.truth, mu_1=np.sqrt(patient.truth["D_w"] * patient.truth["T"]),
             mu_2=np.sqrt(patient.truth["rho"] * patient.truth["T"]))
for name in ("mu_1", "mu_2", "x", "y", "z", "u_t1gd", "u_flair"):
    entry = result.summary["parameters"][name]
    inside = entry["q05"] <= truth[name] <= entry["q95"]
    print(f"{name:8s} truth {truth[name]:9.4g}  90% interval [{entry['q05']:.4g}, {entry['q95']:.4g}]  "
          f"{'covered' if inside else 'NOT covered'}")
print("MAP Dice against the observed masks:", {k: round(v, 3) for k, v in result.summary["map_fit"].items()})

# %% [markdown]
# The posterior-predictive maps say where the tumour is beyond what the scans show: `p_u_above_0.01`
# is the probability that the cell density exceeds 1 %, the basis of a probabilistic radiotherapy margin.

# %%
beyond = np.asarray(nib.load(result.files["p_u_above_0.01"]).dataobj) > 0.5
flair = observation.flair > 0
voxel_ml = float(np.prod(observation.spacing_mm)) / 1000
print(f"P(u > 1%) > 0.5 covers {beyond.sum() * voxel_ml:.1f} mL, of which {(beyond & ~flair).sum() * voxel_ml:.1f} mL "
      f"lie outside the FLAIR abnormality; Dice(P > 0.5, FLAIR) = {dice(beyond, flair):.2f}")
print("figures:", sorted(p.name for p in (out / "fit" / "figures").iterdir()))
