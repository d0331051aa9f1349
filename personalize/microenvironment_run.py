"""One run of the tumour micro-environment model under a dose schedule, from a TOML file to files on disk.

What ``personalize simulate --model microenvironment`` does: a virtual patient (:func:`initial_state` from a
seed) grows under the schedule from day 0 to ``start_day`` without output, then :func:`simulate_microenvironment`
records the five fields from ``start_day`` to ``start_day + days`` every ``output_every_days``. The output
folder holds

- ``trajectory.npz``: ``times`` (days, ``[T]``), ``n``, ``m``, ``P``, ``A``, ``d`` (float32 ``[T, X, Y]``),
  ``spacing_mm``, ``seed`` and ``schedule`` (a JSON string: ``{"doses": [{"day", "agent", "amount"}, ...]}``);
- ``summary.json``: the settings, the schedule's doses, the model's parameters, and per output time the
  regional measures of :func:`regional_measures`;
- ``figures/microenvironment.png``: the five fields at the first and the last output time.

Regions (the same as the model's tests and docstring): the tumour is n > 0.5, its core n > 0.8, its rim (the
periphery where the drug gathers) 0.01 < n < 0.5.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulators.microenvironment import (  # noqa: E402
    DEFAULT_SPACING_MM,
    DEFAULT_TIME_STEP_DAYS,
    FIELDS,
    MicroenvironmentParameters,
    MicroenvironmentState,
    Trajectory,
    grow,
    initial_state,
    simulate_microenvironment,
    time_step_days,
)
from simulators.surrogates.metrics import DEFAULT_TUMOUR_THRESHOLD, tumour_cell_density  # noqa: E402
from simulators.treatment import Schedule  # noqa: E402

TUMOUR_THRESHOLD = DEFAULT_TUMOUR_THRESHOLD
"""Tumour cells: n above this (the "tumour cell density" is the mean of n there, as DENT measures it)."""
CORE_THRESHOLD = 0.8
"""The tumour core: n above this."""
RIM_BOUNDS = (0.01, 0.5)
"""The tumour's rim (periphery): n strictly between these."""
DEFAULT_OUTPUT_EVERY_DAYS = 1.0 / 48.0
"""30 minutes, DENT's output interval."""

FIELD_LABELS = {
    "n": "tumour cells n",
    "m": "vessels m",
    "P": "pressure P (P_v)",
    "A": "anti-angiogenic A",
    "d": "drug d",
}
MEASURE_UNITS = {
    "tumour_burden_mm2": "mm^2 (sum of n times the cell area)",
    "tumour_cell_density": f"mean n where n > {TUMOUR_THRESHOLD}",
    "core_vessel_density": f"mean m where n > {CORE_THRESHOLD}",
    "core_pressure": f"mean P (units of P_v) where n > {CORE_THRESHOLD}",
    "core_drug": f"mean d (plasma concentration units) where n > {CORE_THRESHOLD}",
    "rim_drug": f"mean d (plasma concentration units) where {RIM_BOUNDS[0]} < n < {RIM_BOUNDS[1]}",
    "max_drug": "max d (plasma concentration units)",
}


@dataclass(frozen=True)
class MicroenvironmentRecord:
    """What a micro-environment run wrote and measured (the first measures are also in ``summary.json``)."""

    trajectory: str
    summary: str
    figure: str
    outputs: int
    start_day: float
    end_day: float
    wall_s: float
    burden_first_mm2: float
    burden_last_mm2: float


def schedule_doses(schedule: Schedule) -> list[dict[str, float | str]]:
    """The doses as JSON-ready records ``{"day", "agent", "amount"}``, sorted by day."""
    return [{"day": dose.day, "agent": dose.agent, "amount": dose.amount} for dose in schedule.doses]


def default_start_day(schedule: Schedule) -> float:
    """The day therapy starts: the schedule's first dose, or 0 for no treatment."""
    return schedule.doses[0].day if schedule.doses else 0.0


def check_run(grid: int, spacing_mm: float, seed: int, start_day: float, days: float,
              output_every_days: float) -> None:
    """Refuse settings the model would refuse, before any work.

    Raises:
        ValueError: naming the setting and the problem.
    """
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 3:
        raise ValueError(f"grid must be an integer of at least 3 cells, got {grid!r}")
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing must be a positive number of mm, got {spacing_mm}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (math.isfinite(start_day) and start_day >= 0):
        raise ValueError(f"start day must be finite and non-negative, got {start_day}")
    if not (math.isfinite(days) and days >= 0):
        raise ValueError(f"days must be finite and non-negative, got {days}")
    if not (math.isfinite(output_every_days) and output_every_days > 0):
        raise ValueError(f"output interval must be positive, got {output_every_days}")
    outputs = round(days / output_every_days)
    if abs(outputs * output_every_days - days) > 1e-9 * max(1.0, days):
        raise ValueError(f"days ({days:g}) must be a whole number of output intervals ({output_every_days:g})")


def grow_and_treat(
    schedule: Schedule,
    *,
    grid: int = 151,
    spacing_mm: float = DEFAULT_SPACING_MM,
    seed: int = 0,
    start_day: float = 0.0,
    days: float = 7.0,
    output_every_days: float = DEFAULT_OUTPUT_EVERY_DAYS,
    parameters: MicroenvironmentParameters = MicroenvironmentParameters(),
    max_time_step_days: float = DEFAULT_TIME_STEP_DAYS,
    progress: bool = False,
) -> Trajectory:
    """Virtual patient ``seed`` on a ``grid`` × ``grid`` square of ``spacing_mm``, grown under ``schedule`` from
    day 0 to ``start_day`` without output, then recorded to ``start_day + days`` every ``output_every_days``.

    The time step is at most ``max_time_step_days`` and below the explicit diffusion limit of the grid
    (:func:`time_step_days`). Raises ValueError for settings :func:`check_run` refuses.
    """
    check_run(grid, spacing_mm, seed, start_day, days, output_every_days)
    step = time_step_days(spacing_mm, parameters, max_time_step_days)
    state = initial_state((grid, grid), seed=seed, parameters=parameters, spacing_mm=spacing_mm)
    if start_day > 0:
        state = grow(state, schedule, start_day, parameters, max_time_step_days=step, progress=progress)
    return simulate_microenvironment(state, schedule, days, parameters, output_every_days, start_day=start_day,
                                     max_time_step_days=step, progress=progress)


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def regional_measures(state: MicroenvironmentState) -> dict[str, float | None]:
    """Measures of one state: tumour burden Σ n·h² (mm²), tumour cell density (mean n over n > 0.5), and in
    the core (n > 0.8) the mean vessel density, pressure and drug, the mean drug at the rim (0.01 < n < 0.5)
    and the largest drug concentration. A region with no cell gives None."""
    n = state.n
    core = n > CORE_THRESHOLD
    rim = (n > RIM_BOUNDS[0]) & (n < RIM_BOUNDS[1])
    return {
        "tumour_burden_mm2": float(n.sum() * state.spacing_mm**2),
        "tumour_cell_density": _none_if_nan(tumour_cell_density(n, TUMOUR_THRESHOLD)),
        "core_vessel_density": _mean_or_none(state.m[core]),
        "core_pressure": _mean_or_none(state.P[core]),
        "core_drug": _mean_or_none(state.d[core]),
        "rim_drug": _mean_or_none(state.d[rim]),
        "max_drug": float(state.d.max()),
    }


def trajectory_summary(trajectory: Trajectory, schedule: Schedule, *, seed: int, start_day: float, days: float,
                       output_every_days: float, parameters: MicroenvironmentParameters,
                       wall_s: float | None = None) -> dict:
    """The content of ``summary.json``: settings, doses, parameters, and the measures at every output time."""
    outputs = []
    for index, day in enumerate(trajectory.times):
        outputs.append({"day": float(day), **regional_measures(trajectory.state(index))})
    return {
        "model": "microenvironment",
        "seed": seed,
        "grid": list(trajectory.n.shape[1:]),
        "spacing_mm": trajectory.spacing_mm,
        "start_day": start_day,
        "days": days,
        "output_every_days": output_every_days,
        "wall_s": wall_s,
        "schedule": schedule_doses(schedule),
        "regions": {"tumour": f"n > {TUMOUR_THRESHOLD}", "core": f"n > {CORE_THRESHOLD}",
                    "rim": f"{RIM_BOUNDS[0]} < n < {RIM_BOUNDS[1]}"},
        "units": MEASURE_UNITS,
        "parameters": asdict(parameters),
        "outputs": outputs,
    }


def write_trajectory(trajectory: Trajectory, path: str | os.PathLike[str], *, seed: int,
                     schedule: Schedule) -> Path:
    """``trajectory`` as a compressed ``.npz``: times, the five fields as float32 ``[T, X, Y]``, spacing_mm,
    seed, and the schedule as a JSON string. Read it with ``np.load(path)`` (no pickle needed)."""
    path = Path(path)
    fields = {name: getattr(trajectory, name).astype(np.float32) for name in FIELDS}
    np.savez_compressed(path, times=np.asarray(trajectory.times, dtype=np.float64),
                        spacing_mm=np.float64(trajectory.spacing_mm), seed=np.int64(seed),
                        schedule=np.array(json.dumps({"doses": schedule_doses(schedule)})), **fields)
    return path


def plot_fields(trajectory: Trajectory, path: str | os.PathLike[str], title: str = "") -> Path:
    """A 2 × 5 panel of the five fields at the first (top) and last (bottom) output time, one colour scale
    per field shared by both rows, x to the right and y up, in mm."""
    h = trajectory.spacing_mm
    size_x, size_y = trajectory.n.shape[1:]
    extent = (0.0, size_x * h, 0.0, size_y * h)
    figure, axes = plt.subplots(2, len(FIELDS), figsize=(3.4 * len(FIELDS), 6.4), constrained_layout=True)
    for column, name in enumerate(FIELDS):
        series = getattr(trajectory, name)
        rows = (series[0], series[-1])
        low = float(min(row.min() for row in rows))
        high = float(max(row.max() for row in rows))
        if high <= low:
            high = low + 1.0
        for row, (field, day) in enumerate(zip(rows, (trajectory.times[0], trajectory.times[-1]))):
            axis = axes[row, column]
            image = axis.imshow(field.T, origin="lower", extent=extent, vmin=low, vmax=high, cmap="viridis")
            axis.set_title(f"{FIELD_LABELS[name]}, day {day:g}", fontsize=9)
            axis.set_xlabel("x (mm)", fontsize=8)
            axis.set_ylabel("y (mm)", fontsize=8)
            axis.tick_params(labelsize=7)
            figure.colorbar(image, ax=axis, shrink=0.8).ax.tick_params(labelsize=7)
    if title:
        figure.suptitle(title)
    path = Path(path)
    try:
        figure.savefig(path, dpi=110, format="png")
    finally:
        plt.close(figure)
    return path


def run_microenvironment(
    schedule: Schedule,
    out: str | os.PathLike[str],
    *,
    grid: int = 151,
    spacing_mm: float = DEFAULT_SPACING_MM,
    seed: int = 0,
    start_day: float | None = None,
    days: float = 7.0,
    output_every_days: float = DEFAULT_OUTPUT_EVERY_DAYS,
    parameters: MicroenvironmentParameters = MicroenvironmentParameters(),
    progress: bool = True,
) -> MicroenvironmentRecord:
    """Simulate virtual patient ``seed`` under ``schedule`` (see :func:`grow_and_treat`) and write
    ``trajectory.npz``, ``summary.json`` and ``figures/microenvironment.png`` into ``out``.

    Args:
        schedule: the doses, days counted from the virtual patient's day 0.
        out: output folder; nothing is written there unless the whole run succeeds.
        grid: cells per side of the square grid.
        spacing_mm: cell size in mm.
        seed: the virtual patient (its vessel islands).
        start_day: first recorded day (None: the schedule's first dose, or 0 without one).
        days: recorded span in days, a whole number of ``output_every_days``.
        output_every_days: output interval in days.
        parameters: the model's constants.
        progress: show progress bars over time steps.

    Raises:
        ValueError: settings the model cannot run.
    """
    start_day = default_start_day(schedule) if start_day is None else float(start_day)
    check_run(grid, spacing_mm, seed, start_day, days, output_every_days)
    began = time.perf_counter()
    trajectory = grow_and_treat(schedule, grid=grid, spacing_mm=spacing_mm, seed=seed, start_day=start_day,
                                days=days, output_every_days=output_every_days, parameters=parameters,
                                progress=progress)
    wall_s = time.perf_counter() - began
    summary = trajectory_summary(trajectory, schedule, seed=seed, start_day=start_day, days=days,
                                 output_every_days=output_every_days, parameters=parameters, wall_s=wall_s)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".simulate-", dir=out.parent))
    try:
        write_trajectory(trajectory, staging / "trajectory.npz", seed=seed, schedule=schedule)
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (staging / "figures").mkdir()
        title = (f"virtual patient {seed}, {len(schedule.doses)} doses, days {start_day:g} to "
                 f"{start_day + days:g}")
        plot_fields(trajectory, staging / "figures" / "microenvironment.png", title=title)
        for item in sorted(staging.rglob("*")):
            if item.is_file():
                target = out / item.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    first, last = summary["outputs"][0], summary["outputs"][-1]
    return MicroenvironmentRecord(
        trajectory=str(out / "trajectory.npz"), summary=str(out / "summary.json"),
        figure=str(out / "figures" / "microenvironment.png"), outputs=len(trajectory.times),
        start_day=start_day, end_day=start_day + days, wall_s=wall_s,
        burden_first_mm2=first["tumour_burden_mm2"], burden_last_mm2=last["tumour_burden_mm2"])
