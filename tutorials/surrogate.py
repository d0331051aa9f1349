# %% [markdown]
# # A geometry-aware neural surrogate of the solver: train it, check it, fit with it
#
# Ezhov et al. (IEEE TMI 2022, arXiv:2009.04240) replace the Fisher–Kolmogorov solver by a network that maps the
# growth parameters and a cube of the patient's tissue maps around the seed to the tumour cell density. Here the
# whole chain at toy size:
#
# 1. simulate training data with the solver in several anatomies: the atlas, its mirror image and deformed
#    copies, each with a role, so that whole anatomies are held out (`personalize.surrogate.dataset`);
# 2. train the network on them and read its held-out metrics (`personalize.surrogate.train`);
# 3. use it as a simulator: the same call as the solver's, on any grid, side by side with the solver;
# 4. fit a synthetic patient with TMCMC through it (`personalize fit --simulator surrogate`).
#
# Run it as a script: `python tutorials/surrogate.py --out tutorial-out`, or `--quick` (what CI runs: about a
# minute). At this size (8³ cubes of 8 mm, a few dozen tumours) the network is poor: this walks through the steps,
# it does not measure the method; `benchmarks/surrogate.py` does that with the shipped weights. From a shell, at
# the CPU presets' size:
#
# ```
# python -m personalize.surrogate.dataset surrogate-data --preset cpu --workers 2
# python -m personalize.surrogate.train surrogate-data surrogate-weights --preset cpu
# personalize fit --simulator surrogate --surrogate-weights surrogate-weights/surrogate.pt --t1gd ... --out fit
# ```

# %%
import argparse
import time
from pathlib import Path

import numpy as np
import torch

from personalize.fit import FitSettings, fit, summary_table
from personalize.io import load_observation
from personalize.overlap import dice
from personalize.surrogate.anatomies import AnatomySpec
from personalize.surrogate.dataset import DataConfig, generate_data
from personalize.surrogate.train import TrainingConfig, train
from personalize.surrogate.weights import load_surrogate
from personalize.synth import BUILT_IN_CASE, synthesize, write_synthetic
from simulators.anatomy import Anatomy
from simulators.atlas import default_atlas
from simulators.fisher_kolmogorov import FisherKolmogorov

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="tutorial-out")
parser.add_argument("--quick", action="store_true", help="toy settings (what CI runs)")
args = parser.parse_args()
out = Path(args.out)
torch.set_num_threads(1)

# %% [markdown]
# ## 1. Training data in held-out anatomies
#
# Each sample draws (D_w, ρ, T) from the box and a seed in tissue, grows the tumour with the solver on the whole
# anatomy, and keeps the cube around the seed when the tumour shows and fits in it. The atlas trains, its mirror
# image validates, a deformed copy is the test anatomy.

# %%
anatomies = (AnatomySpec("atlas", "train", "atlas"), AnatomySpec("mirrored", "validation", "mirrored"),
             AnatomySpec("deformed-0", "test", "deformed", index=0))
config = DataConfig(crop=8, spacing_mm=8.0, t=(50.0, 400.0), samples_per_shard=4, anatomies=anatomies)
shards = 6 if args.quick else 30
generated = generate_data(out / "data", config, data_seed=0, shards=shards, progress=False)
print(f"dataset: {shards} shards of {config.samples_per_shard} cubes of {config.crop}^3 x {config.spacing_mm:g} mm "
      f"in {generated.wall_s:.1f} s")

# %% [markdown]
# ## 2. Train, and the test anatomy's metrics
#
# The loss is the paper's: L1 over the tumour plus L1 over CSF. The test table is the paper's Table I: Dice at
# u = 0.2, 0.4, 0.8 and the mean absolute error within WM, GM and CSF, on the test anatomy's cubes.

# %%
training = TrainingConfig(channels=(4, 8), parameter_channels=2, batch_size=4, max_epochs=3 if args.quick else 20,
                          patience=5)
trained = train(out / "data", out / "weights", training, progress=False)
print(f"trained {len(trained.train_loss)} epochs in {trained.wall_s:.1f} s; best epoch {trained.best_epoch + 1}")
print(trained.test.table())

# %% [markdown]
# ## 3. The surrogate is a simulator
#
# `load_surrogate` checks the weights' SHA-256 and returns an object with the solver's `simulate(params,
# anatomy)`: here both grow the same tumour on the atlas at 4 mm, a grid the network was not trained on (the cube
# is sampled through interpolation).

# %%
surrogate, record = load_surrogate(trained.weights)
atlas = default_atlas(4.0)
params = torch.tensor([[0.3, 0.05, 200.0, 30.0, -10.0, 20.0]], dtype=torch.float64)
timings = {}
densities = {}
for name, simulator in (("solver", FisherKolmogorov()), ("surrogate", surrogate)):
    started = time.perf_counter()
    densities[name] = simulator.simulate(params, atlas)[0].numpy()
    timings[name] = time.perf_counter() - started
for level in (0.2, 0.4, 0.8):
    overlap = dice(densities["surrogate"] > level, densities["solver"] > level)
    print(f"surrogate against solver at u > {level}: Dice {overlap:.3f}")
print(f"one simulation: solver {timings['solver']:.3f} s, surrogate {timings['surrogate']:.3f} s")

# %% [markdown]
# ## 4. Fit a synthetic patient through the surrogate
#
# `FitSettings(simulator="surrogate", surrogate_weights=...)` (`--simulator surrogate` on the command line) makes
# every simulation of the fit the network's; `summary.json` names the simulator and its weights' SHA-256.

# %%
truth = BUILT_IN_CASE | {"D_w": 0.3, "rho": 0.05, "T": 200.0}
patient = synthesize(truth, default_atlas(8.0), seed=0, with_pet=False)
paths = write_synthetic(patient, out / "patient")
observation = load_observation(paths["t1gd"], paths["flair"], core=True)
tissue = Anatomy.from_nifti(paths["wm"], paths["gm"], paths["csf"])
settings = FitSettings(spacing_mm=8.0, margin_mm=24.0, n_samples=32 if args.quick else 128, chain_steps=1,
                       n_predictive=4, coarse_levels=0, simulator="surrogate", surrogate_weights=str(trained.weights))
result = fit(observation, out / "fit", tissue=tissue, settings=settings, truth=truth, progress=False)
print(summary_table(result.summary, ["mu_1", "mu_2", "x", "y", "z", "u_t1gd", "u_flair"]))
print(f"simulator {result.summary['simulator']}, {result.summary['n_simulations']} simulations, "
      f"{result.summary['wall_s']:.1f} s; MAP Dice T1Gd {result.summary['map_fit']['dice_t1gd']:.3f}, "
      f"FLAIR {result.summary['map_fit']['dice_flair']:.3f}")
print(f"true mu_1 {np.sqrt(truth['D_w'] * truth['T']):.2f} mm, mu_2 {np.sqrt(truth['rho'] * truth['T']):.2f}")
