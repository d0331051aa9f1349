# %% [markdown]
# # Learn-Morph-Infer: a network's estimate in one pass, then a Bayesian fit around it
#
# Learn-Morph-Infer (Ezhov et al., Medical Image Analysis 83:102672, 2023, arXiv:2111.04090) trains a network on
# tumours simulated in one atlas to map a tumour's T1Gd and FLAIR masks to its growth (μ₁ = √(D_w·T),
# μ₂ = √(ρ·T)) and seed. A patient is registered to that atlas, the network answers there, and the tumour it
# implies is grown and warped back onto the patient's grid. This walkthrough runs the whole chain at toy size:
#
# 1. simulate a small training set in the atlas (`personalize.lmi.dataset`);
# 2. train a small network on it (`personalize.lmi.train`) and read its test table;
# 3. make a synthetic patient and estimate its parameters with the network (`fit_lmi`);
# 4. (without `--quick`) refine with TMCMC in patient space, the prior narrowed around the estimate
#    (`personalize.lmi.refine`).
#
# Run it as a script: `python tutorials/lmi.py --out tutorial-out`, or with `--quick` (what CI runs: about a
# minute). At this size the network has seen a few dozen tumours: its estimate is poor, and this is a walk
# through the steps, not a measure of the method. The same from a shell, at full size:
#
# ```
# python -m personalize.lmi.dataset lmi-data --preset cpu --workers 2
# python -m personalize.lmi.train lmi-data lmi-weights --preset cpu
# personalize synth --out patient
# personalize fit --method lmi --weights lmi-weights/lmi_network.pt --refine tmcmc \
#     --t1gd patient/t1gd.nii.gz --flair patient/flair.nii.gz --wm patient/wm.nii.gz --gm patient/gm.nii.gz \
#     --csf patient/csf.nii.gz --out fit
# ```

# %%
import argparse
import os
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # the warps; read once, at ITK's first use

import numpy as np  # noqa: E402
import torch  # noqa: E402

from personalize.fit import FitSettings, summary_table  # noqa: E402
from personalize.io import load_observation  # noqa: E402
from personalize.lmi.dataset import DatasetConfig, generate_dataset  # noqa: E402
from personalize.lmi.network import NetworkConfig  # noqa: E402
from personalize.lmi.personalization import fit_lmi  # noqa: E402
from personalize.lmi.refine import refine_lmi  # noqa: E402
from personalize.lmi.train import TrainingConfig, train  # noqa: E402
from personalize.overlap import dice  # noqa: E402
from personalize.synth import BUILT_IN_CASE, synthesize, write_synthetic  # noqa: E402
from simulators.anatomy import Anatomy  # noqa: E402
from simulators.atlas import default_atlas  # noqa: E402
from simulators.nifti import read_volume  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="tutorial-out")
parser.add_argument("--quick", action="store_true", help="toy settings (what CI runs), no refinement")
args = parser.parse_args()
out = Path(args.out)
torch.set_num_threads(1)

# %% [markdown]
# ## 1. A training set in the atlas
#
# Each sample draws (D_w, ρ, T, seed, u_t1gd, u_flair) from the prior, grows the tumour in the atlas (cropped to
# tissue) and keeps its thresholded masks when their volumes fall in a visible window. Shards are written one file
# each and are reproducible from `(config, data_seed, index)`: a killed run continues where it stopped. Here the
# atlas is at 8 mm and T at most 400 days (the prior reaches 1500): a simulation's cost grows with T, and the
# built-in patient's T = 300 days lies inside.

# %%
config = DatasetConfig(spacing_mm=8.0, samples_per_shard=4, t=(50.0, 400.0))
shards = 6 if args.quick else 20
generated = generate_dataset(out / "data", config, data_seed=0, shards=shards, progress=False)
print(f"dataset: {shards} shards of {config.samples_per_shard} tumours on the {config.spacing_mm:g} mm atlas in "
      f"{generated.wall_s:.1f} s")

# %% [markdown]
# ## 2. Train and test
#
# L1 loss on the outputs scaled to [-1, 1], AdamW, early stopping on the validation shards. The test table grows
# each test tumour again from the predicted parameters and compares the densities with the true ones (Dice at
# three levels, mean absolute error in white and grey matter), as Ezhov et al.'s Table 2 does.

# %%
training = TrainingConfig(network=NetworkConfig(channels=(4, 8)), batch_size=4,
                          max_epochs=3 if args.quick else 15, patience=5, split=(0.66, 0.17, 0.17),
                          evaluation_cases=2)
trained = train(out / "data", out / "weights", training, progress=False)
print(f"trained {len(trained.train_loss)} epochs in {trained.wall_s:.1f} s; best epoch {trained.best_epoch + 1}, "
      f"validation L1 {min(trained.validation_loss):.4f}")
print(trained.test.table())

# %% [markdown]
# ## 3. A patient, and the network's estimate
#
# The built-in synthetic case on the 4 mm atlas, written as NIfTI as a user's files would be. `fit_lmi` registers
# its tissue onto the training atlas (ANTs SyN, the tumour masked out), feeds the warped masks to the network,
# turns (μ₁, μ₂) into (D_w, ρ, T) at a fixed front speed, grows that tumour in the atlas and warps it back.

# %%
patient = synthesize(BUILT_IN_CASE, default_atlas(spacing_mm=4.0), seed=0, with_pet=False)
paths = write_synthetic(patient, out / "patient")
observation = load_observation(paths["t1gd"], paths["flair"], core=True)
tissue = Anatomy.from_nifti(paths["wm"], paths["gm"], paths["csf"])
lmi = fit_lmi(observation, out / "fit", weights=trained.weights, tissue=tissue, progress=False)
truth = dict(patient.truth, mu_1=float(np.sqrt(patient.truth["D_w"] * patient.truth["T"])),
             mu_2=float(np.sqrt(patient.truth["rho"] * patient.truth["T"])))
print(f"{'parameter':<10}{'truth':>10}{'LMI':>10}")
for name in ("mu_1", "mu_2", "x", "y", "z"):
    print(f"{name:<10}{truth[name]:>10.3f}{lmi.parameters[name]:>10.3f}")
quality = lmi.summary["map_fit"]
print(f"LMI Dice against the masks: T1Gd {quality['dice_t1gd']:.3f}, FLAIR {quality['dice_flair']:.3f}; "
      f"{lmi.summary['wall_s']:.1f} s (registration {lmi.summary['wall_s_registration']:.1f} s)")
predicted = read_volume(lmi.files["map_density"]).data
true_density = read_volume(paths["true_density"]).data
for name in ("u_flair", "u_t1gd"):
    level = patient.truth[name]
    print(f"LMI Dice against the true tumour at u = {level:g} ({name}): "
          f"{dice(predicted > level, true_density > level):.3f}")

# %% [markdown]
# ## 4. Refine with TMCMC (not with `--quick`)
#
# The network's estimate narrows the prior (μ₁, μ₂ within a factor 3, the seed within ± 12 mm), and TMCMC fits
# in the patient's own space, adding a posterior and the imaging thresholds. `personalize fit --method lmi
# --refine tmcmc` does this and writes the refined fit into `OUT/refine`.

# %%
if not args.quick:
    refined = refine_lmi(observation, lmi, out / "fit" / "refine", tissue=tissue,
                         settings=FitSettings(spacing_mm=4.0, n_samples=64, chain_steps=1, n_predictive=16),
                         truth=patient.truth, progress=False)
    print(summary_table(refined.summary, ["mu_1", "mu_2", "x", "y", "z", "u_t1gd", "u_flair"]))
    quality = refined.summary["map_fit"]
    print(f"refined MAP Dice against the masks: T1Gd {quality['dice_t1gd']:.3f}, FLAIR {quality['dice_flair']:.3f}")
