"""One ``personalize predict-response`` run: a virtual patient's maps on disk → the posterior of its growth and
drug-response parameters → the response it predicts under candidate schedules, written to a folder.

    observation.npz + schedule.toml ──► fit_virtual_patient (TMCMC or sequential NPE) ──► Posterior
                                        (or a fit folder written before: read_fit)
    Posterior ──► predict_response (one per candidate) ──► tumour area and response class per schedule

Files a virtual patient is read from (and :func:`write_virtual_patient` writes):

- ``observation.npz``: ``days`` (float ``[D]``, strictly increasing, on the schedule's clock), ``maps`` (float
  ``[D, X, Y]``, observed tumour-cell density n in [0, 1]), ``spacing_mm`` (a positive scalar) and ``seed``
  (the vessel seed of :func:`simulators.microenvironment.initial_state`, a non-negative integer scalar); read
  with ``np.load`` and no pickle;
- ``schedule.toml``: the doses the patient received, ``[[dose]]`` tables as :meth:`Schedule.from_toml` reads
  (``dose = []`` for none);
- ``truth.json`` (synthetic patients only): ``{name: {"value", "unit"}}`` as ``personalize synth`` writes it.

A candidate is DENT's protocol (:func:`personalize.virtual_patient.protocol_schedule`: the anti-angiogenic agent
on days t0, t0 + 2, t0 + 4, t0 + 6 and chemotherapy on t0 + 2, t0 + 4, t0 + 6) from a start day t0 at two dose
levels, ``LABEL=START_DAY:ANTIANGIOGENIC:CHEMOTHERAPY``, or any schedule, ``LABEL=FILE.toml``. Each candidate is
simulated from day 0 as the patient's whole treatment (:mod:`personalize.predictive.schedules`), so candidates
compare what the fitted patient would do under each from the same start. Default (:func:`default_candidates`):
no treatment (the protocol's dose days at amount 0, so the response has the same baseline) and the protocol at
levels 1 and 2 of both agents, from the patient's own first dose day, or, for an untreated patient, from its
last observed day.

The output folder holds ``posterior.nc`` (arviz), ``summary.json`` (:func:`run_summary`) and ``figures/``:
``observation.png`` (the maps, one panel per day), ``pairs.png`` (the posterior) and ``response.png`` (per
candidate the tumour area's quantile bands over time and the response-class probabilities).

The fit alone is ``personalize fit --model microenvironment`` (:func:`run_fit_virtual_patient`: the same folder
without ``response.png`` and candidates, a checkpoint after each TMCMC stage or NPE round); ``personalize
predict-response --fit FOLDER`` then predicts from that posterior (:func:`read_fit`, which checks that the fit
is of the same maps, days, grid, vessel seed and schedule), so candidates can be tried without fitting again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from personalize.executors import local_executor  # noqa: E402
from personalize.fit import truth_from_json  # noqa: E402
from personalize.microenvironment_run import schedule_doses  # noqa: E402
from personalize.posterior import Posterior  # noqa: E402
from personalize.predictive.response import CLASSES  # noqa: E402
from personalize.predictive.schedules import NOT_EVALUABLE, ScheduleResponse, predict_response  # noqa: E402
from personalize.report import _save, plot_pairs  # noqa: E402
from personalize.virtual_patient import (  # noqa: E402
    DEFAULT_BOUNDS,
    NOISE,
    PARAMETER_FIELDS,
    UNITS,
    VirtualPatientFitSettings,
    VirtualPatientObservation,
    check_names,
    fit_virtual_patient,
    protocol_schedule,
)
from simulators.nifti import atomic_output  # noqa: E402
from simulators.treatment import Schedule  # noqa: E402

OBSERVATION_FILE = "observation.npz"
SCHEDULE_FILE = "schedule.toml"
TRUTH_FILE = "truth.json"
POSTERIOR_FILE = "posterior.nc"
SUMMARY_FILE = "summary.json"
OBSERVATION_KEYS = ("days", "maps", "spacing_mm", "seed")
CRITERIA = ("recist", "rano")
_FORMAT = "days [D], maps [D, X, Y] in [0, 1], spacing_mm (mm) and seed (an integer)"


def schedule_toml(schedule: Schedule) -> str:
    """``schedule`` as the TOML text :meth:`Schedule.from_toml` reads back unchanged (``dose = []`` for none)."""
    if not schedule.doses:
        return "dose = []\n"
    tables = [f"[[dose]]\nday = {dose.day!r}\nagent = \"{dose.agent}\"\namount = {dose.amount!r}\n"
              for dose in schedule.doses]
    return "\n".join(tables)


def write_observation(observation: VirtualPatientObservation, path: str | os.PathLike[str]) -> Path:
    """The observation's days, maps, spacing and seed as an ``.npz`` (atomically; its schedule is not in it)."""
    path = Path(path)
    with atomic_output(path) as temporary:
        np.savez_compressed(temporary, days=np.asarray(observation.days, dtype=np.float64),
                            maps=np.asarray(observation.maps, dtype=np.float64),
                            spacing_mm=np.float64(observation.spacing_mm), seed=np.int64(observation.seed))
    return path


def maps_digest(observation: VirtualPatientObservation) -> str:
    """SHA-256 of the observed maps (float64, C order): recorded in a fit's summary, so a fit is matched to the
    maps it was fitted to."""
    return hashlib.sha256(np.ascontiguousarray(observation.maps, dtype=np.float64).tobytes()).hexdigest()


def read_observation(path: str | os.PathLike[str], schedule_path: str | os.PathLike[str]) -> VirtualPatientObservation:
    """The virtual patient of an ``.npz`` (module docstring) treated by the schedule of a TOML file.

    Raises:
        ValueError: a missing or unreadable file, a missing key, a value of the wrong shape or type, or anything
            :class:`VirtualPatientObservation` refuses; the message names the file.
    """
    schedule = Schedule.from_toml(schedule_path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (OSError, EOFError, ValueError):
        raise ValueError(f"{path}: not a readable .npz archive (expected {_FORMAT})") from None
    if not hasattr(archive, "files"):
        raise ValueError(f"{path}: a single array, not an .npz archive of {_FORMAT}")
    with archive:
        missing = [key for key in OBSERVATION_KEYS if key not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)} (an observation holds {_FORMAT})")
        try:
            arrays = {key: archive[key] for key in OBSERVATION_KEYS}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: cannot read its arrays ({' '.join(str(error).split()[:12])})") from None
    days, maps = arrays["days"], arrays["maps"]
    if days.ndim != 1 or not np.issubdtype(days.dtype, np.number):
        raise ValueError(f"{path}: days must be a 1-D array of numbers, got shape {days.shape} ({days.dtype})")
    if maps.ndim != 3 or maps.shape[0] != days.shape[0] or not np.issubdtype(maps.dtype, np.number):
        raise ValueError(f"{path}: maps must be numbers of shape [days, X, Y] with one map per day "
                         f"({days.shape[0]}), got shape {maps.shape} ({maps.dtype})")
    for key, kind in (("spacing_mm", np.number), ("seed", np.integer)):
        if arrays[key].shape != () or not np.issubdtype(arrays[key].dtype, kind):
            expected = "an integer" if kind is np.integer else "a number"
            raise ValueError(f"{path}: {key} must be {expected} (a scalar), got shape {arrays[key].shape} "
                             f"({arrays[key].dtype})")
    try:
        return VirtualPatientObservation(days=tuple(days.tolist()), maps=maps, spacing_mm=float(arrays["spacing_mm"]),
                                         seed=int(arrays["seed"]), schedule=schedule)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def read_truth(path: str | os.PathLike[str]) -> dict[str, float]:
    """``{name: value}`` of a ``truth.json`` (``{name: {"value": ...}}``); names outside the model's refused.

    Raises:
        ValueError: a missing or malformed file, or an unknown name; the message names the file.
    """
    try:
        truth = truth_from_json(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: expected {{name: {{\"value\": number}}}} ({type(error).__name__}: "
                         f"{error})") from None
    try:
        check_names(list(truth))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return truth


def write_virtual_patient(observation: VirtualPatientObservation, truth: Mapping[str, float],
                          out: str | os.PathLike[str]) -> dict[str, Path]:
    """``observation.npz``, ``schedule.toml`` and ``truth.json`` of a synthetic patient in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"observation": write_observation(observation, out / OBSERVATION_FILE),
             "schedule": out / SCHEDULE_FILE, "truth": out / TRUTH_FILE}
    with atomic_output(files["schedule"]) as temporary:
        temporary.write_text(schedule_toml(observation.schedule))
    record = {name: {"value": float(value), "unit": UNITS[name]} for name, value in truth.items()}
    with atomic_output(files["truth"]) as temporary:
        temporary.write_text(json.dumps(record, indent=2) + "\n")
    return files


def parse_candidate(text: str) -> tuple[str, Schedule]:
    """One candidate ``LABEL=START_DAY:ANTIANGIOGENIC:CHEMOTHERAPY`` (DENT's protocol from the start day at those
    dose levels) or ``LABEL=FILE.toml`` (a schedule file).

    Raises:
        ValueError: a malformed item, numbers that are not finite and non-negative, or a schedule without doses.
    """
    label, sep, value = str(text).partition("=")
    label, value = label.strip(), value.strip()
    if value.endswith(".toml") and label and sep:
        schedule = Schedule.from_toml(value)
        if not schedule.doses:
            raise ValueError(f"candidate {label!r}: {value} has no doses (the response is measured from the first "
                             "dose; give the dose days at amount 0 for no treatment)")
        return label, schedule
    fields = value.split(":")
    if not sep or not label or len(fields) != 3:
        raise ValueError(f"--candidate {text!r} must read LABEL=START_DAY:ANTIANGIOGENIC:CHEMOTHERAPY (e.g. "
                         "high=14:2:2) or LABEL=FILE.toml")
    try:
        start, antiangiogenic, chemotherapy = (float(field) for field in fields)
    except ValueError:
        raise ValueError(f"--candidate {text!r}: start day and dose levels must be numbers, as in high=14:2:2") \
            from None
    if not all(math.isfinite(v) and v >= 0 for v in (start, antiangiogenic, chemotherapy)):
        raise ValueError(f"--candidate {text!r}: start day and dose levels must be finite and non-negative")
    return label, protocol_schedule(start, antiangiogenic, chemotherapy)


def parse_candidates(items: Iterable[str]) -> dict[str, Schedule]:
    """``{label: schedule}`` of :func:`parse_candidate` items, in order; a label given twice is a ValueError."""
    pairs = [parse_candidate(item) for item in items]
    labels = [label for label, _ in pairs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"--candidate {', '.join(map(repr, repeated))} given twice")
    return dict(pairs)


def candidate_start_day(observation: VirtualPatientObservation) -> float:
    """Where default candidates start: the patient's first dose day, or its last observed day when untreated."""
    return observation.schedule.doses[0].day if observation.schedule.doses else observation.days[-1]


def default_candidates(observation: VirtualPatientObservation) -> dict[str, Schedule]:
    """No treatment and DENT's protocol at levels 1 and 2 of both agents from :func:`candidate_start_day`."""
    start = candidate_start_day(observation)
    return {"untreated": protocol_schedule(start, 0.0, 0.0), "level-1": protocol_schedule(start, 1.0, 1.0),
            "level-2": protocol_schedule(start, 2.0, 2.0)}


def fit_bounds(parameters: Sequence[str] = tuple(PARAMETER_FIELDS)) -> dict[str, tuple[float, float]]:
    """The default log-uniform bounds of ``parameters`` (model parameters; the noise is always inferred).

    Raises:
        ValueError: an unknown or repeated name, or none of the model's parameters.
    """
    names = check_names([name for name in parameters if name != NOISE])
    if not names:
        raise ValueError(f"infer at least one of {', '.join(PARAMETER_FIELDS)}")
    return {name: DEFAULT_BOUNDS[name] for name in (*names, NOISE)}


def parameter_summary(posterior: Posterior, truth: Mapping[str, float] | None = None) -> dict[str, dict]:
    """:meth:`Posterior.summary` per parameter, with ``truth`` and whether the 90 % interval ``covered`` it where
    the truth is known."""
    summary = posterior.summary()
    for name, entry in summary.items():
        if truth is not None and name in truth:
            entry["truth"] = float(truth[name])
            entry["covered"] = bool(entry["q05"] <= truth[name] <= entry["q95"])
    return summary


def run_summary(posterior: Posterior, responses: Sequence[ScheduleResponse] | None,
                observation: VirtualPatientObservation, *, settings: Mapping[str, object], wall_s: float,
                truth: Mapping[str, float] | None = None, sources: Mapping[str, str] | None = None) -> dict[str, object]:
    """The content of ``summary.json``: the fit (method, simulations, wall time, log-evidence, per parameter MAP,
    mean, 90 % interval, unit, and truth where known), the observation, the run's settings, and, where a run
    predicted (``responses`` not None), each candidate's :meth:`ScheduleResponse.to_dict`."""
    summary = {
        "method": posterior.method,
        "simulator": "microenvironment",
        "n_simulations": int(posterior.n_simulations),
        "wall_s": float(wall_s),
        "fit_wall_s": float(posterior.wall_s),
        "log_evidence": posterior.log_evidence,
        "parameters": parameter_summary(posterior, truth),
        "observation": {**dict(sources or {}), "days": list(observation.days), "grid": list(observation.shape),
                        "spacing_mm": observation.spacing_mm, "seed": observation.seed,
                        "maps_sha256": maps_digest(observation), "schedule": schedule_doses(observation.schedule)},
        "settings": dict(settings),
    }
    if responses is not None:
        summary["candidates"] = [response.to_dict() for response in responses]
    return summary


def plot_observation(observation: VirtualPatientObservation, path: str | os.PathLike[str], title: str = "") -> Path:
    """The observed maps, one panel per day on one colour scale [0, 1], x to the right and y up, in mm."""
    h = observation.spacing_mm
    extent = (0.0, observation.shape[0] * h, 0.0, observation.shape[1] * h)
    count = len(observation.days)
    figure, axes = plt.subplots(1, count, figsize=(3.2 * count + 1.0, 3.4), squeeze=False, constrained_layout=True)
    for axis, day, values in zip(axes[0], observation.days, observation.maps):
        image = axis.imshow(values.T, origin="lower", extent=extent, vmin=0.0, vmax=1.0, cmap="viridis")
        axis.set_title(f"day {day:g}", fontsize=9)
        axis.set_xlabel("x (mm)", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("y (mm)", fontsize=8)
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="observed tumour cells n")
    doses = ", ".join(f"{dose.agent} {dose.amount:g} on day {dose.day:g}" for dose in observation.schedule.doses)
    figure.suptitle(title or f"virtual patient {observation.seed}: {doses or 'untreated'}", fontsize=9)
    return _save(figure, path)


def plot_responses(responses: Sequence[ScheduleResponse], path: str | os.PathLike[str], title: str = "") -> Path:
    """Left: per candidate the median tumour area (mm², n > 0.5) over time with its outer and inner quantile bands
    (e.g. 5-95 % and 25-75 %); right: the probability of each response class, candidates side by side."""
    figure, (area, bars) = plt.subplots(1, 2, figsize=(12, 4.4), constrained_layout=True)
    colours = plt.get_cmap("tab10")
    classes = (*CLASSES, NOT_EVALUABLE)
    width = 0.8 / max(1, len(responses))
    for index, response in enumerate(responses):
        colour = colours(index % 10)
        values = np.asarray(response.tumour_area_mm2)
        levels = response.quantile_levels
        middle = len(levels) // 2
        for low, alpha in ((0, 0.15), (1, 0.3)):
            high = len(levels) - 1 - low
            if low < high:
                area.fill_between(response.days, values[low], values[high], color=colour, alpha=alpha, linewidth=0)
        area.plot(response.days, values[middle], color=colour, marker="o", markersize=3,
                  label=f"{response.label} (q{round(100 * levels[middle]):02d})")
        offsets = np.arange(len(classes)) + (index - (len(responses) - 1) / 2) * width
        bars.bar(offsets, [response.class_probabilities[name] for name in classes], width=width, color=colour,
                 label=response.label)
    if responses:
        levels = responses[0].quantile_levels
        area.set_title(f"tumour area over {responses[0].n_draws} posterior draws; bands "
                       f"q{round(100 * levels[0]):02d}-q{round(100 * levels[-1]):02d}"
                       + (f", q{round(100 * levels[1]):02d}-q{round(100 * levels[-2]):02d}" if len(levels) > 3 else ""),
                       fontsize=9)
        bars.set_title(f"response class at day {responses[0].days[-1]:g} ({responses[0].criteria.upper()})",
                       fontsize=9)
    area.set_xlabel("day")
    area.set_ylabel("tumour area (mm², n > 0.5)")
    area.legend(fontsize=8)
    bars.set_xticks(np.arange(len(classes)), classes)
    bars.set_ylim(0, 1)
    bars.set_ylabel("probability")
    bars.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


@dataclass(frozen=True)
class VirtualPatientFit:
    """What ``personalize fit --model microenvironment`` produced and where it wrote it.

    Attributes:
        posterior: the fit, in physical units.
        summary: the content of ``summary.json``.
        files: ``posterior``, ``summary``, ``observation_figure``, ``pairs_figure``.
        wall_s: the whole run's wall time.
    """

    posterior: Posterior
    summary: dict[str, object]
    files: dict[str, Path]
    wall_s: float


@dataclass(frozen=True)
class ResponseRun:
    """What a ``personalize predict-response`` run produced and where it wrote it.

    Attributes:
        posterior: the fit, in physical units.
        responses: one per candidate, in the order given.
        summary: the content of ``summary.json``.
        files: ``posterior``, ``summary``, ``observation_figure``, ``pairs_figure``, ``response_figure``.
        wall_s: the whole run's wall time.
    """

    posterior: Posterior
    responses: tuple[ScheduleResponse, ...]
    summary: dict[str, object]
    files: dict[str, Path]
    wall_s: float


def _write_posterior(posterior: Posterior, observation: VirtualPatientObservation, out: Path, *, seed: int,
                     truth: Mapping[str, float] | None) -> dict[str, Path]:
    """``posterior.nc`` and the figures ``observation.png`` and ``pairs.png`` (truth and MAP marked) in ``out``."""
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    files = {"posterior": out / POSTERIOR_FILE}
    with atomic_output(files["posterior"]) as temporary:
        posterior.to_inference_data().to_netcdf(str(temporary))
    files["observation_figure"] = plot_observation(observation, figures / "observation.png")
    draws = posterior.resample(min(len(posterior.samples), 4000), seed=seed).samples
    best = posterior.samples[posterior.map_index()] if posterior.log_density is not None else None
    files["pairs_figure"] = plot_pairs(draws, posterior.parameter_names, figures / "pairs.png",
                                       units=posterior.units, truth=dict(truth) if truth else None, best=best)
    return files


def _write_summary(summary: Mapping[str, object], out: Path) -> Path:
    path = out / SUMMARY_FILE
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def _check_method(method: str) -> None:
    if method not in ("tmcmc", "npe"):
        raise ValueError(f"method must be 'tmcmc' or 'npe', got {method!r}")


def _fit_record(method: str, bounds: Mapping[str, tuple[float, float]],
                settings: VirtualPatientFitSettings) -> dict[str, object]:
    return {"method": method, "parameters": list(bounds), "bounds": {k: list(v) for k, v in bounds.items()},
            "fit": asdict(settings)}


def run_fit_virtual_patient(
    observation: VirtualPatientObservation,
    out: str | os.PathLike[str],
    *,
    method: str = "tmcmc",
    settings: VirtualPatientFitSettings = VirtualPatientFitSettings(),
    parameters: Sequence[str] = tuple(PARAMETER_FIELDS),
    truth: Mapping[str, float] | None = None,
    sources: Mapping[str, str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> VirtualPatientFit:
    """Fit ``observation`` and write ``posterior.nc``, ``summary.json`` and the figures ``observation.png`` and
    ``pairs.png`` into ``out``: what ``personalize fit --model microenvironment`` does, readable later by
    :func:`read_fit` (``personalize predict-response --fit``).

    The engine checkpoints into ``out/checkpoint`` after each TMCMC stage or NPE round; ``resume`` continues
    from there. Arguments as :func:`run_predict_response`'s.

    Raises:
        ValueError: bad settings or parameters, before any simulation.
    """
    began = time.perf_counter()
    _check_method(method)
    bounds = fit_bounds(parameters)
    out = Path(out)
    posterior = fit_virtual_patient(observation, method, settings, bounds=bounds, checkpoint_dir=str(out / "checkpoint"),
                                    resume=resume, progress=progress)
    files = _write_posterior(posterior, observation, out, seed=settings.seed, truth=truth)
    wall_s = time.perf_counter() - began
    summary = run_summary(posterior, None, observation, settings=_fit_record(method, bounds, settings), wall_s=wall_s,
                          truth=truth, sources=sources)
    files["summary"] = _write_summary(summary, out)
    return VirtualPatientFit(posterior=posterior, summary=summary, files=files, wall_s=wall_s)


def read_fit(folder: str | os.PathLike[str], observation: VirtualPatientObservation) -> tuple[Posterior, float]:
    """The posterior of a fit folder written by :func:`run_fit_virtual_patient` (or by a predict-response run) and
    the simulations' largest step it was fitted with, after checking it fitted ``observation``.

    Raises:
        ValueError: a missing or unreadable file, a fit of another model, or of another observation (days,
            grid, spacing, vessel seed or maps differ); the message names the folder.
    """
    folder = Path(folder)
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
        posterior = Posterior.from_netcdf(folder / POSTERIOR_FILE)
    except FileNotFoundError as error:
        raise ValueError(f"{folder}: not a fit folder ({Path(error.filename).name} missing)") from None
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{folder}: unreadable fit ({type(error).__name__}: {' '.join(str(error).split()[:12])})") \
            from None
    if summary.get("simulator") != "microenvironment":
        raise ValueError(f"{folder}: a fit of {summary.get('simulator')!r}, not of the micro-environment model")
    recorded = summary.get("observation", {})
    expected = {"days": list(observation.days), "grid": list(observation.shape), "spacing_mm": observation.spacing_mm,
                "seed": observation.seed, "maps_sha256": maps_digest(observation),
                "schedule": schedule_doses(observation.schedule)}
    differing = [key for key, value in expected.items() if recorded.get(key) != value]
    if differing:
        raise ValueError(f"{folder}: fitted another observation ({', '.join(differing)} differ)")
    if posterior.parameter_names[-1:] != (NOISE,):
        raise ValueError(f"{folder}: the posterior's parameters {list(posterior.parameter_names)} are not a virtual "
                         f"patient's (model parameters, then {NOISE})")
    check_names(posterior.parameter_names)
    return posterior, float(summary["settings"]["fit"]["max_time_step_days"])


def run_predict_response(
    observation: VirtualPatientObservation,
    out: str | os.PathLike[str],
    *,
    candidates: Mapping[str, Schedule] | None = None,
    method: str = "tmcmc",
    settings: VirtualPatientFitSettings = VirtualPatientFitSettings(),
    parameters: Sequence[str] = tuple(PARAMETER_FIELDS),
    criteria: str = "recist",
    horizon_days: float = 7.0,
    n_draws: int = 64,
    truth: Mapping[str, float] | None = None,
    sources: Mapping[str, str] | None = None,
    fitted: Posterior | None = None,
    progress: bool = True,
) -> ResponseRun:
    """Fit ``observation`` (or take its posterior ``fitted``), predict its response to each candidate, and write the
    outputs into ``out``.

    Args:
        observation: the virtual patient.
        out: the output folder (module docstring); each file appears whole, ``summary.json`` last.
        candidates: ``{label: schedule}``, each with a dose (None: :func:`default_candidates`).
        method: ``"tmcmc"`` or ``"npe"`` (:func:`fit_virtual_patient`); settings: the fit's, whose ``seed`` also
            seeds the posterior draws and whose ``workers``, ``chunk_size`` and ``max_time_step_days`` serve the
            predictions too.
        parameters: the model parameters inferred (:func:`fit_bounds`); the others stay at their defaults.
        criteria, horizon_days, n_draws: :func:`predict_response`'s (response followed every day).
        truth: the truth of a synthetic patient, marked in the summary and the pair plot.
        sources: input file names recorded under ``observation`` in the summary.
        fitted: a posterior of this observation (:func:`read_fit`): no fit is run, and ``method`` and
            ``parameters`` are ignored.
        progress: progress bars.

    Raises:
        ValueError: bad settings, parameters, criteria or candidates, before any simulation.
    """
    began = time.perf_counter()
    if criteria not in CRITERIA:
        raise ValueError(f"criteria must be one of {', '.join(CRITERIA)}, got {criteria!r}")
    _check_method(method)
    if n_draws < 1 or not (math.isfinite(horizon_days) and horizon_days >= 1 and float(horizon_days).is_integer()):
        raise ValueError(f"draws must be >= 1 and the horizon a positive whole number of days, got {n_draws} "
                         f"and {horizon_days}")
    bounds = fit_bounds(parameters if fitted is None else fitted.parameter_names)
    candidates = default_candidates(observation) if candidates is None else dict(candidates)
    for label, schedule in candidates.items():
        if not schedule.doses:
            raise ValueError(f"candidate {label!r} has no doses: the response is measured from the first dose")

    posterior = fit_virtual_patient(observation, method, settings, bounds=bounds, progress=progress) \
        if fitted is None else fitted
    executor = local_executor(settings.workers)
    try:
        responses = tuple(
            predict_response(posterior, observation, {label: schedule}, horizon_days=horizon_days, n_draws=n_draws,
                             seed=settings.seed, criteria=criteria, max_time_step_days=settings.max_time_step_days,
                             executor=executor, chunk_size=settings.chunk_size)[0]
            for label, schedule in tqdm(candidates.items(), desc="candidate schedules", unit="schedule",
                                        disable=not progress))  # one seed: every candidate sees the same draws
    finally:
        if executor is not None:
            executor.shutdown()

    out = Path(out)
    files = _write_posterior(posterior, observation, out, seed=settings.seed, truth=truth)
    files["response_figure"] = plot_responses(
        responses, out / "figures" / "response.png",
        title=f"{posterior.method}: {posterior.n_simulations} simulations; {len(candidates)} candidate schedules")
    settings_record = {**_fit_record(posterior.method if fitted is not None else method, bounds, settings),
                       "criteria": criteria, "horizon_days": float(horizon_days), "n_draws": int(n_draws),
                       "fitted_before": fitted is not None}
    wall_s = time.perf_counter() - began
    summary = run_summary(posterior, responses, observation, settings=settings_record, wall_s=wall_s, truth=truth,
                          sources=sources)
    files["summary"] = _write_summary(summary, out)
    return ResponseRun(posterior=posterior, responses=responses, summary=summary, files=files, wall_s=wall_s)
