# %% [markdown]
# # One patient, two engines: TMCMC beside sequential NPE
#
# TMCMC scores every simulation with an analytic image likelihood; sequential neural posterior estimation
# (NPE) never evaluates one: it simulates what a scanner would show (masks at sampled thresholds, a noisy
# PET map), learns p(θ | scans) with a neural density estimator, and spends later rounds of simulations
# where that estimate puts the patient. This walkthrough fits the same synthetic patient both ways and
# compares the posteriors, the MAP tumours and the cost.
#
# Run it as a script: `python tutorials/tmcmc_vs_npe.py --out tutorial-npe` (its full settings fit both at
# 2 mm: TMCMC alone takes about 9 minutes on two cores, and one NPE round of 1,000 prior draws took over 8 on
# shared ones), or with `--quick` for small settings (what CI runs; both posteriors are then rough). From a
# shell:
#
# ```
# personalize synth --out patient
# personalize fit ... --method tmcmc --out fit-tmcmc
# personalize fit ... --method npe --estimator mdn --rounds 4 --simulations 1000 --out fit-npe
# personalize compare fit-tmcmc fit-npe --out comparison
# ```

# %%
import argparse
import json
from pathlib import Path

from personalize.compare import compare_runs
from personalize.fit import FitSettings, fit, summary_table
from personalize.io import load_observation
from personalize.synth import BUILT_IN_CASE, synthesize, write_synthetic
from simulators.anatomy import Anatomy
from simulators.atlas import default_atlas

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="tutorial-npe")
parser.add_argument("--quick", action="store_true", help="small settings (what CI runs)")
args = parser.parse_args()
out = Path(args.out)

# %% [markdown]
# ## 1. The patient
#
# The built-in synthetic case on the default atlas, written as NIfTI and read back as a user's files.

# %%
spacing = 4.0 if args.quick else 2.0
patient = synthesize(BUILT_IN_CASE, default_atlas(spacing_mm=spacing), seed=0)
paths = write_synthetic(patient, out / "patient")
observation = load_observation(paths["t1gd"], paths["flair"], paths["pet"])
tissue = Anatomy.from_nifti(paths["wm"], paths["gm"], paths["csf"])

# %% [markdown]
# ## 2. TMCMC
#
# The likelihood-based fit of the TMCMC tutorial.

# %%
quick = dict(spacing_mm=4.0, n_predictive=16) if args.quick else {}
tmcmc_settings = FitSettings(n_samples=64, chain_steps=1, **quick) if args.quick else FitSettings()
tmcmc = fit(observation, out / "fit-tmcmc", tissue=tissue, settings=tmcmc_settings, truth=patient.truth)

# %% [markdown]
# ## 3. Sequential NPE
#
# Round 1 draws parameters from the prior; rounds 2… from the current estimate at this patient's scans.
# The network sees the scans through an embedding: here each scan's moments (`moments`: mass, centroid
# and spread), or the block averages of each scan (`pooled`), or a 3D CNN trained jointly (`cnn`). A checkpoint is written after every round (`--resume` continues).

# %%
npe_settings = FitSettings(method="npe", estimator="mdn", embedding="moments",
                           **(dict(rounds=2, simulations=200, npe_draws=1000, npe_max_epochs=40, **quick)
                              if args.quick else {}))
npe = fit(observation, out / "fit-npe", tissue=tissue, settings=npe_settings, truth=patient.truth)
for result in (tmcmc, npe):
    print(result.summary["method"], f"{result.summary['n_simulations_inference']} simulations, "
          f"{result.summary['wall_s']:.0f} s")
    print(summary_table(result.summary, ["mu_1", "mu_2", "x", "y", "z", "u_t1gd", "u_flair"]))

# %% [markdown]
# ## 4. Compare
#
# C2ST trains a classifier to tell the two sample sets apart over the parameters the scans determine
# (μ₁, μ₂, the seed, the thresholds): 0.5 means indistinguishable, 1 disjoint. Wasserstein distances say
# which parameter differs and by how much; Dice compares the two MAP tumours.

# %%
comparison = compare_runs([out / "fit-tmcmc", out / "fit-npe"], out / "comparison")
pair = comparison.pairs[0]
print(f"C2ST {pair.c2st:.3f}; MAP Dice FLAIR {pair.dice_flair:.3f}, T1Gd {pair.dice_t1gd:.3f}")
print("relative Wasserstein:", {name: round(value, 2) for name, value in pair.relative_wasserstein.items()})
print("written:", json.loads((out / "comparison" / "comparison.json").read_text())["files"])
