# %% [markdown]
# # Choosing a schedule: personalize the micro-environment model, then predict the response
#
# This walkthrough makes a virtual patient — a tumour among vessel islands on a 2D grid, treated with DENT's
# protocol from day 14 (Koyuncu et al., Sci Rep 2022) — and observes its tumour-cell density, with noise, on
# days 7 and 14 (before treatment) and 17 (three days into it). It then infers the patient's growth and
# drug-response parameters from those maps with TMCMC, checks that the 90 % intervals cover the truth, and asks
# the fitted model what three candidate schedules from day 14 would do by day 21: the tumour area over time and
# the probability of each RECIST 1.1 class (CR, PR, SD, PD; Dimou et al. group them as responsive, stable and
# non-responsive).
#
# Run it as a script: `python tutorials/treatment_response.py --out tutorial-response` (41 × 41 cells of
# 0.25 mm, all four parameters and the noise inferred: about ten minutes on two cores), or with `--quick`
# (15 × 15 cells of 0.5 mm, 2-hour steps, the growth rate, the drug's kill rate and the noise inferred by a
# small TMCMC population: about a minute on one core, what CI runs; the posterior is then rough). The same
# steps from a shell:
#
# ```
# personalize predict-response --make-virtual-patient sigma=0.1 --observed-days 7 14 17 --out patient
# personalize predict-response --observation patient/observation.npz --schedule patient/schedule.toml \
#     --truth patient/truth.json --candidate untreated=14:0:0 --candidate dent=14:1:1 \
#     --candidate chemo-3=14:1:3 --out response
# ```

# %%
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from personalize.predictive.schedules import predict_response
from personalize.response_run import plot_observation, plot_responses, run_summary, write_virtual_patient
from personalize.virtual_patient import (
    DEFAULT_BOUNDS,
    DEFAULT_TRUTH,
    VirtualPatientFitSettings,
    fit_virtual_patient,
    make_virtual_patient,
    protocol_schedule,
)

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="tutorial-response")
parser.add_argument("--quick", action="store_true", help="small settings (what CI runs)")
args = parser.parse_args()
out = Path(args.out)
(out / "figures").mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)  # one simulation per row: threads gain nothing on grids this small

# %% [markdown]
# ## 1. A virtual patient
#
# The truth is the model's defaults (r_n = 0.2 /day, D_n = 0.01 mm²/day, d_r = 0.5 /day per unit drug,
# α_mn = 0.1 /day) with observation noise σ = 0.1 (of a density in [0, 1]); the noise is Gaussian, clipped to
# [0, 1]. The patient's files are what `personalize predict-response` reads: `observation.npz` (days, maps,
# spacing, vessel seed), `schedule.toml` (the doses it received) and `truth.json`.

# %%
if args.quick:
    grid, spacing_mm, step_days, inferred, n_samples, chain_steps, n_draws = 15, 0.5, 1 / 12, ("r_n", "d_r"), 48, 1, 16
else:
    grid, spacing_mm, step_days, inferred, n_samples, chain_steps, n_draws = 41, 0.25, 1 / 24, \
        ("r_n", "D_n", "d_r", "alpha_mn"), 256, 2, 64
start_day = 14.0
observation, truth = make_virtual_patient({**DEFAULT_TRUTH, "sigma": 0.1}, days=(7.0, 14.0, 17.0),
                                          schedule=protocol_schedule(start_day), grid=grid, spacing_mm=spacing_mm,
                                          max_time_step_days=step_days)
write_virtual_patient(observation, truth, out / "patient")
plot_observation(observation, out / "figures" / "observation.png")
print(f"grid {grid} x {grid} of {spacing_mm:g} mm, step {step_days * 24:g} h; observed days "
      f"{', '.join(f'{day:g}' for day in observation.days)}; cells with n > 0.5: "
      f"{', '.join(str(int((values > 0.5).sum())) for values in observation.maps)}")

# %% [markdown]
# ## 2. The posterior
#
# Independent log-uniform priors (a factor 2 around r_n's default, 10 around d_r's; σ from 0.01 to 0.3), the
# clipped-Gaussian likelihood of every observed value, and TMCMC; the parameters not inferred stay at their
# defaults. Before treatment the maps inform the growth; after its first doses, the kill rate.

# %%
bounds = {name: DEFAULT_BOUNDS[name] for name in (*inferred, "sigma")}
settings = VirtualPatientFitSettings(n_samples=n_samples, chain_steps=chain_steps, max_time_step_days=step_days)
posterior = fit_virtual_patient(observation, "tmcmc", settings, bounds=bounds)
summary = posterior.summary()
print(f"\nTMCMC: {posterior.n_simulations} simulations in {posterior.wall_s:.0f} s")
print(f"{'parameter':<10}{'truth':>9}{'q05':>9}{'mean':>9}{'q95':>9}  covered")
for name, entry in summary.items():
    covered = entry["q05"] <= truth[name] <= entry["q95"]
    print(f"{name:<10}{truth[name]:>9.4g}{entry['q05']:>9.4g}{entry['mean']:>9.4g}{entry['q95']:>9.4g}  "
          f"{'yes' if covered else 'no'}")

# %% [markdown]
# ## 3. The response to three candidate schedules
#
# Each candidate is DENT's protocol from day 14 at a pair of dose levels (anti-angiogenic, chemotherapy): none
# (the dose days at amount 0), the patient's own (1, 1), and a triple chemotherapy dose (1, 3). Posterior draws
# are simulated under each from day 0; the tumour is n > 0.5, measured from the first dose (the baseline) every
# day for seven days, and each draw is classified by RECIST 1.1 at day 21. RECIST's progression needs the sum of
# diameters to grow by 5 mm as well as by 20 %, which a tumour of a few millimetres does not do in a week: the
# untreated tumour more than doubles its area and is still "stable" (`--criteria rano` calls it progressive).

# %%
candidates = {"untreated": protocol_schedule(start_day, 0.0, 0.0), "dent": protocol_schedule(start_day, 1.0, 1.0),
              "chemo-3": protocol_schedule(start_day, 1.0, 3.0)}
responses = predict_response(posterior, observation, candidates, n_draws=n_draws, seed=0, criteria="recist",
                             max_time_step_days=step_days)
print(f"\nRECIST 1.1 at day {start_day + 7:g}, {n_draws} posterior draws per candidate:")
print(f"{'candidate':<11}{'CR':>7}{'PR':>7}{'SD':>7}{'PD':>7}{'NE':>7}   median area mm^2 (day {start_day:g} -> "
      f"{start_day + 7:g})")
for response in responses:
    p = response.class_probabilities
    median = np.asarray(response.tumour_area_mm2[response.quantile_levels.index(0.5)])
    print(f"{response.label:<11}" + "".join(f"{p[name]:>7.3f}" for name in ("CR", "PR", "SD", "PD", "NE"))
          + f"   {median[0]:.2f} -> {median[-1]:.2f}")

# %% [markdown]
# ## 4. What was written
#
# `figures/observation.png` (the maps), `figures/response.png` (each candidate's area band and class
# probabilities) and `summary.json` — the same record `personalize predict-response` writes.

# %%
plot_responses(responses, out / "figures" / "response.png")
record = run_summary(posterior, responses, observation, truth=truth, wall_s=posterior.wall_s,
                     settings={"method": "tmcmc", "parameters": list(bounds), "criteria": "recist",
                               "horizon_days": 7.0, "n_draws": n_draws, "quick": args.quick})
(out / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
print(f"wrote {out / 'summary.json'}, {out / 'figures'} and the patient's files in {out / 'patient'}")
