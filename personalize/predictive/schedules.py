"""The posterior-predictive response of a virtual patient (:mod:`personalize.virtual_patient`) to candidate
treatment schedules: its tumour area over time and the probability of each response class.

For each candidate schedule (start day, dose levels of each agent; :func:`personalize.virtual_patient.
protocol_schedule` builds DENT's), posterior draws are simulated from day 0 under it: the patient as if treated
by it (a candidate that should continue the observed treatment must hold its doses). The tumour is n > 0.5 (as
:mod:`personalize.microenvironment_run` defines it); its area (mm²) is recorded from the schedule's first dose,
the baseline, every ``every_days`` over ``horizon_days``, and each draw's masks are classified at the last day
by :func:`personalize.predictive.response.assess_response` (baseline first; RECIST 1.1 by default, or RANO)
and grouped as Dimou et al. (responsive, stable, non-responsive). A draw whose baseline holds no measurable
tumour is "NE" (not evaluable), so the class probabilities always sum to 1.

Measurability: RECIST's 10 mm exceeds every tumour of the model's 1 cm domain (about 2.5 mm across at day 14
by default), so a target here needs a longest diameter of twice the grid spacing (RECIST's alternative, twice
the slice thickness) unless ``measurable_mm`` says otherwise. RECIST's progression also needs the sum to grow by
5 mm, which such tumours do not within a week: measured for draws near the default truth on the default grid,
untreated from day 14 the tumour's area grows 4.3 → 9.6 mm² by day 21 and RECIST calls every draw SD, RANO
(no absolute minimum) PD; with DENT's protocol at level 2 RECIST says SD, RANO SD; chemotherapy at 4 CR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch

from personalize.executors import evaluate
from personalize.microenvironment_run import TUMOUR_THRESHOLD, schedule_doses
from personalize.posterior import Posterior
from personalize.predictive.response import CLASSES, CRITERIA, GROUPS, assess_response, target_sum
from personalize.virtual_patient import (
    DEFAULT_TIME_STEP_DAYS,
    PARAMETER_FIELDS,
    DensitySimulator,
    VirtualPatientObservation,
    check_names,
)
from simulators.microenvironment import MicroenvironmentParameters
from simulators.treatment import Schedule

NOT_EVALUABLE = "NE"
"""A draw whose baseline holds no measurable tumour: RECIST's "not evaluable"."""


@dataclass(frozen=True)
class ScheduleResponse:
    """What the posterior predicts under one candidate schedule.

    Attributes:
        label: the candidate's name.
        schedule: its doses.
        criteria: ``"recist"`` or ``"rano"``.
        days: the baseline (the first dose day) and every ``every_days`` after it to the horizon.
        quantile_levels: the levels of ``tumour_area_mm2``.
        tumour_area_mm2: per level, the area with n > 0.5 (mm²) on each of ``days`` across the draws.
        class_probabilities: the share of draws in each class (:data:`CLASSES`, and ``"NE"`` for draws without
            a measurable baseline tumour) at the last day; they sum to 1.
        group_probabilities: the same grouped as Dimou et al. (responsive, stable, non-responsive, and
            ``"NE"``); they sum to 1.
        n_draws: posterior draws simulated.
        measurable_mm: the smallest baseline longest diameter that makes a tumour a target.
    """

    label: str
    schedule: Schedule
    criteria: str
    days: tuple[float, ...]
    quantile_levels: tuple[float, ...]
    tumour_area_mm2: tuple[tuple[float, ...], ...]
    class_probabilities: dict[str, float]
    group_probabilities: dict[str, float]
    n_draws: int
    measurable_mm: float

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready record (doses as ``{"day", "agent", "amount"}``; area quantiles keyed ``q05`` etc.)."""
        return {
            "label": self.label,
            "schedule": schedule_doses(self.schedule),
            "criteria": self.criteria,
            "days": list(self.days),
            "tumour_area_mm2": {f"q{round(100 * q):02d}": list(values)
                                for q, values in zip(self.quantile_levels, self.tumour_area_mm2)},
            "class_probabilities": dict(self.class_probabilities),
            "group_probabilities": dict(self.group_probabilities),
            "n_draws": self.n_draws,
            "measurable_mm": self.measurable_mm,
        }


def predict_response(
    posterior: Posterior,
    observation: VirtualPatientObservation,
    schedules: Mapping[str, Schedule],
    *,
    horizon_days: float = 7.0,
    every_days: float = 1.0,
    n_draws: int = 64,
    seed: int = 0,
    criteria: str = "recist",
    measurable_mm: float | None = None,
    quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
    parameters: MicroenvironmentParameters = MicroenvironmentParameters(),
    max_time_step_days: float = DEFAULT_TIME_STEP_DAYS,
    executor: Executor | None = None,
    chunk_size: int | None = None,
) -> tuple[ScheduleResponse, ...]:
    """The posterior-predictive tumour area and response class under each of ``schedules`` (module docstring).

    Args:
        posterior: a fit of ``observation`` in physical units (:func:`fit_virtual_patient`).
        observation: the patient (its grid and vessel seed; its own schedule is not used).
        schedules: ``{label: schedule}``; each needs a dose, whose day is the baseline.
        horizon_days, every_days: the response is followed from the baseline to ``horizon_days`` after it,
            every ``every_days`` (a whole number of them).
        n_draws, seed: posterior draws (resampled by weight) and their seed.
        criteria: ``"recist"`` or ``"rano"`` (:func:`assess_response`).
        measurable_mm: the smallest longest diameter of a baseline target. None: twice the grid spacing (RECIST's
            "twice the slice thickness"; its 10 mm exceeds every tumour of the model's 1 cm domain).
        quantiles: the levels of the area quantiles, in [0, 1].
        parameters, max_time_step_days: the model's other constants and largest step, as in the fit.
        executor, chunk_size: how draws are simulated (:func:`personalize.executors.evaluate`).

    Raises:
        ValueError: an empty or dose-less schedule, a horizon that is not a whole number of intervals, a
            posterior without the model's parameters, bad quantiles or draws.
    """
    if not schedules:
        raise ValueError("give at least one candidate schedule")
    if criteria not in CRITERIA:
        raise ValueError(f"criteria must be one of {sorted(CRITERIA)}, got {criteria!r}")
    for label, schedule in schedules.items():
        if not isinstance(schedule, Schedule) or not schedule.doses:
            raise ValueError(f"schedule {label!r} has no doses: the response is measured from the first dose")
    steps = round(horizon_days / every_days) if every_days > 0 else 0
    if steps < 1 or abs(steps * every_days - horizon_days) > 1e-9 * max(1.0, horizon_days):
        raise ValueError(f"horizon_days ({horizon_days}) must be a positive whole number of every_days ({every_days})")
    levels = tuple(float(q) for q in quantiles)
    if not levels or not all(0 <= q <= 1 for q in levels):
        raise ValueError(f"quantiles must lie in [0, 1], got {list(quantiles)}")
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    names = check_names(posterior.parameter_names)
    if not set(names) & set(PARAMETER_FIELDS):
        raise ValueError(f"the posterior holds none of the model's parameters {', '.join(PARAMETER_FIELDS)}")
    measurable = 2.0 * observation.spacing_mm if measurable_mm is None else float(measurable_mm)
    theta = torch.from_numpy(posterior.resample(n_draws, seed=seed).samples)
    initial = observation.initial_state(parameters)
    cell_mm2 = observation.spacing_mm**2
    responses = []
    for label, schedule in schedules.items():
        baseline = schedule.doses[0].day
        days = tuple(baseline + k * every_days for k in range(steps + 1))
        simulator = DensitySimulator(initial, schedule, days, names, parameters, max_time_step_days)
        masks = evaluate(simulator, theta, executor=executor, chunk_size=chunk_size).numpy() > TUMOUR_THRESHOLD
        areas = masks.sum(axis=(2, 3)) * cell_mm2
        labels = [final_class(draw, observation.spacing_mm, criteria, measurable) for draw in masks]
        classes = {name: labels.count(name) / len(labels) for name in (*CLASSES, NOT_EVALUABLE)}
        groups = {group: 0.0 for group in dict.fromkeys(GROUPS.values())} | {NOT_EVALUABLE: classes[NOT_EVALUABLE]}
        for name in CLASSES:
            groups[GROUPS[name]] += classes[name]
        responses.append(ScheduleResponse(
            label=label, schedule=schedule, criteria=criteria, days=days, quantile_levels=levels,
            tumour_area_mm2=tuple(tuple(float(v) for v in row) for row in np.quantile(areas, levels, axis=0)),
            class_probabilities=classes, group_probabilities=groups, n_draws=n_draws, measurable_mm=measurable))
    return tuple(responses)


def final_class(masks: np.ndarray, spacing_mm: float, criteria: str, measurable_mm: float) -> str:
    """The response class (:data:`~personalize.predictive.response.CLASSES`) of the last of ``masks`` ``[T, X, Y]``
    (bool, baseline first, the earlier ones setting the nadir), or ``"NE"`` when the baseline holds no target of
    at least ``measurable_mm`` by ``criteria``."""
    spacing = (spacing_mm, spacing_mm)
    if target_sum(masks[0], spacing, criteria=criteria, measurable_mm=measurable_mm) == 0:
        return NOT_EVALUABLE
    return assess_response(list(masks), spacing, criteria=criteria, measurable_mm=measurable_mm).final
