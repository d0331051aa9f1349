# %% [markdown]
# # A tumour micro-environment under anti-angiogenic therapy and chemotherapy
#
# This walkthrough grows a virtual patient — a Gaussian tumour among random vessel islands, on a 2D grid —
# untreated until therapy starts, then follows it for seven days in three arms: no treatment, the
# anti-angiogenic agent alone, and DENT's combined schedule (Koyuncu et al., Sci Rep 2022): the
# anti-angiogenic agent at the end of days t0, t0+2, t0+4, t0+6 and nanoparticle chemotherapy at t0+2, t0+4,
# t0+6, read from `tutorials/schedules/dent_example.toml` (t0 = 14). It prints what each arm measures at the
# end — tumour burden, vessel density and interstitial pressure in the tumour core, drug at the rim and in
# the core — and saves a comparison figure.
#
# Run it as a script: `python tutorials/microenvironment_treatment.py --out tutorial-me` (DENT's 151 × 151 grid
# of 1/15 mm and 30-minute steps: a few minutes on two cores), or with `--quick` (61 × 61 cells of 0.1 mm and
# 2-hour steps: seconds, what CI runs; the numbers then differ by a few per cent). The combined arm from a
# shell, on the full grid:
#
# ```
# personalize simulate --model microenvironment --schedule tutorials/schedules/dent_example.toml --out run/
# ```

# %%
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from personalize.microenvironment_run import regional_measures, schedule_doses  # noqa: E402
from simulators.microenvironment import grow, initial_state, simulate_microenvironment  # noqa: E402
from simulators.treatment import Schedule  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="tutorial-me")
parser.add_argument("--quick", action="store_true", help="small settings (what CI runs)")
parser.add_argument("--seed", type=int, default=1, help="the virtual patient")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. The schedules
#
# A `Schedule` is a sorted tuple of dated doses; after each one the plasma concentration of its agent jumps
# by the dose's amount and decays with an e-folding time of one day. The combined arm is the example file;
# the anti-angiogenic arm keeps its anti-angiogenic doses only.

# %%
combined = Schedule.from_toml(Path(__file__).resolve().parent / "schedules" / "dent_example.toml")
arms = {
    "untreated": Schedule(),
    "anti-angiogenic": Schedule(tuple(dose for dose in combined.doses if dose.agent == "antiangiogenic")),
    "combined": combined,
}
t0, horizon = combined.doses[0].day, 7.0
for name, schedule in arms.items():
    print(f"{name:16s}", ", ".join(f"day {dose.day:g} {dose.agent} {dose.amount:g}" for dose in schedule.doses)
          or "no doses")

# %% [markdown]
# ## 2. A virtual patient, grown untreated to the start of therapy
#
# The seed draws the vessel islands: it is the patient. The tumour starts as a Gaussian of 0.3 mm and grows
# for t0 days; pressure, the anti-angiogenic agent and the drug are quasi-steady, solved from the tumour and
# vessels whenever they are needed.

# %%
if args.quick:
    grid, spacing_mm, step_days, every_days = 61, 0.1, 1.0 / 12.0, 1.0
else:
    grid, spacing_mm, step_days, every_days = 151, 10.0 / 150.0, 1.0 / 48.0, 0.5
patient = initial_state((grid, grid), seed=args.seed, spacing_mm=spacing_mm)
start = grow(patient, Schedule(), t0, max_time_step_days=step_days)
# the state at t0 holds the pressure solved at t0; no dose has been given yet
before = regional_measures(start)
print(f"grid {grid} x {grid} of {spacing_mm:.4g} mm, step {step_days * 24:g} h; virtual patient {args.seed} at "
      f"day {t0:g}: tumour burden {before['tumour_burden_mm2']:.3f} mm^2, core vessel density "
      f"{before['core_vessel_density']:.3f}, core pressure {before['core_pressure']:.3f} P_v")

# %% [markdown]
# ## 3. Three arms over seven days
#
# Every arm starts from the same state at t0 (the clock keeps counting from the patient's day 0, so the dose
# days of the schedules apply as written).

# %%
runs = {name: simulate_microenvironment(start, schedule, horizon, output_every_days=every_days, start_day=t0,
                                        max_time_step_days=step_days)
        for name, schedule in arms.items()}
measures = {name: [regional_measures(run.state(index)) for index in range(len(run.times))]
            for name, run in runs.items()}


def shown(value: float | None, digits: int = 3) -> str:
    """A measure, or '-' where its region holds no cell."""
    return "-" if value is None else f"{value:.{digits}f}"


print(f"\nat day {t0 + horizon:g} ({horizon:g} days after the first dose):")
print(f"{'arm':16s} {'burden mm^2':>11s} {'core vessels':>12s} {'core P (P_v)':>12s} {'rim drug':>9s} "
      f"{'core drug':>9s} {'rim/core':>8s}")
for name, series in measures.items():
    last = series[-1]
    ratio = (last["rim_drug"] / last["core_drug"] if last["rim_drug"] is not None and last["core_drug"]
             else None)
    print(f"{name:16s} {shown(last['tumour_burden_mm2']):>11s} {shown(last['core_vessel_density']):>12s} "
          f"{shown(last['core_pressure']):>12s} {shown(last['rim_drug']):>9s} {shown(last['core_drug']):>9s} "
          f"{shown(ratio, 2):>8s}")
untreated_burden = measures["untreated"][-1]["tumour_burden_mm2"]
for name in ("anti-angiogenic", "combined"):
    change = measures[name][-1]["tumour_burden_mm2"] / untreated_burden - 1.0
    print(f"{name}: tumour burden {100 * change:+.1f} % against untreated at day {t0 + horizon:g}")

# %% [markdown]
# ## 4. The comparison figure
#
# Top three rows: each arm's tumour, vessels, pressure and drug at the end, one colour scale per field.
# Bottom row: tumour burden, core vessel density, core pressure and rim drug over the seven days.

# %%
shown_fields = (("n", "tumour cells n"), ("m", "vessels m"), ("P", "pressure P (P_v)"), ("d", "drug d"))
curves = (("tumour_burden_mm2", "tumour burden (mm^2)"), ("core_vessel_density", "core vessel density"),
          ("core_pressure", "core pressure (P_v)"), ("rim_drug", "rim drug"))
figure, axes = plt.subplots(len(arms) + 1, len(shown_fields), figsize=(14, 13.5), constrained_layout=True)
extent = (0.0, grid * spacing_mm, 0.0, grid * spacing_mm)
for column, (field, label) in enumerate(shown_fields):
    finals = [getattr(run, field)[-1] for run in runs.values()]
    low, high = min(f.min() for f in finals), max(f.max() for f in finals)
    high = high if high > low else low + 1.0
    for row, (name, final) in enumerate(zip(runs, finals)):
        image = axes[row, column].imshow(final.T, origin="lower", extent=extent, vmin=low, vmax=high)
        axes[row, column].set_title(f"{name}: {label}", fontsize=9)
        figure.colorbar(image, ax=axes[row, column], shrink=0.8)
for column, (key, label) in enumerate(curves):
    axis = axes[-1, column]
    for name, run in runs.items():
        values = [np.nan if entry[key] is None else entry[key] for entry in measures[name]]
        axis.plot(run.times, values, marker="o", markersize=3, label=name)
    for dose in combined.doses:
        chemotherapy = dose.agent == "chemotherapy"
        axis.axvline(dose.day, color="salmon" if chemotherapy else "0.6", ls="--" if chemotherapy else "-",
                     lw=0.8, zorder=0)
    axis.set_xlabel("day")
    axis.set_title(label, fontsize=9)
axes[-1, 0].legend(fontsize=8)
figure.suptitle(f"virtual patient {args.seed}: untreated, anti-angiogenic, combined (grey lines: anti-angiogenic "
                "doses, red dashes: chemotherapy)")
figure_path = out / "comparison.png"
figure.savefig(figure_path, dpi=100)
plt.close(figure)

record = {"seed": args.seed, "grid": grid, "spacing_mm": spacing_mm, "time_step_days": step_days,
          "therapy_start_day": t0, "days": horizon, "schedules": {name: schedule_doses(s) for name, s in arms.items()},
          "at_start": before,
          "arms": {name: {"days": runs[name].times.tolist(), "measures": series} for name, series in measures.items()}}
(out / "comparison.json").write_text(json.dumps(record, indent=2) + "\n")
print(f"wrote {figure_path} and {out / 'comparison.json'}")
