"""The training data of DENT (Koyuncu et al., Sci Rep 12:2187, 2022): virtual patients × therapy start days ×
dose combinations, simulated by :mod:`simulators.microenvironment`, and the Diffuser and Elapser pairs cut from
them.

The paper's protocol: each virtual patient grows untreated until therapy starts on day t0 (14 to 21); an
anti-angiogenic dose is given at the end of days t0, t0 + 2, t0 + 4 and t0 + 6 and a nanoparticle chemotherapy
dose at the end of days t0 + 2, t0 + 4 and t0 + 6, each agent at one of three dose levels, so 3 × 3 = 9 dose
combinations; five start days give 45 cases per patient, and the maps are recorded for seven days. "The end of
day t" is t days after the virtual patient's day 0 (as in ``tutorials/schedules/dent_example.toml``).

Choices made here (the paper prints neither its start days nor its dose levels):

- start days 14, 15, 17, 19, 21: five days spanning the paper's 14–21;
- dose levels 0.5, 1 and 2 (plasma concentration units) for both agents: half, once and twice the example
  schedule's amount 1.0, a factor of four between the weakest and the strongest dose. They span growth to
  shrinkage: for patient 0 from day 14 (anti-angiogenic level 0.5), the tumour burden goes from 4.7 mm² to
  8.1 mm² by day 7 at chemotherapy level 0.5 and to 5.4 mm² at level 2, its tumour cell density (mean n over
  n > 0.5) to 0.78 and 0.63;
- eight virtual patients (seeds 0–7), the paper's five for training and three for testing.

One case is one ``.npz`` file (:func:`generate_cases`; read it with :func:`load_case`). The model's
anti-angiogenic agent and drug are quasi-steady, so an injection changes A and d at once: at an injection
time the file holds the state just *before* the injection (``before_injection``) apart from the recorded one,
which already holds the new dose (the model's convention: a dose given on day t acts from t on). Stored are

- ``fields`` float32 ``[T, 5, X, Y]`` (channels in :data:`simulators.microenvironment.FIELDS` order) at
  ``times`` (days, ``[T]``): every ``output_every_days`` from t0 to t0 + horizon, and one hour after each
  injection (:data:`DIFFUSER_SPAN_DAYS`), whatever the output interval;
- ``before_injection`` float32 ``[K, 5, X, Y]`` at ``injection_days`` (``[K]``, the distinct dose days);
- ``seed``, ``start_day``, ``antiangiogenic_level``, ``chemotherapy_level``, ``spacing_mm``, and the schedule as
  ``dose_day``, ``dose_agent``, ``dose_amount`` (``[J]`` each). No pickle is needed to read it.

Pairs (:func:`extract_pairs`), chosen so that a rollout — the Diffuser on an injection day, then the Elapser to
the next day — meets every state exactly where it was trained:

- Diffuser: the state just before an injection → the state one hour after it (the paper's "one hour apart
  across an injection"), with the injected amounts as doses.
- Elapser: day k → day k + 1 of the treatment (k = 0 … horizon − 1), to the state at day k + 1 just before any
  injection of that day. Where day k has an injection, ``before`` is what the rollout holds after the Diffuser:
  n, m and P just before the injection and A, d one hour after it. Taking the whole state one hour later instead
  would hand the Elapser an n, m, P the rollout never has: vessels fall by up to 0.09 in the hour after an
  anti-angiogenic dose (a quarter to a third of the day's change), an error floor of 0.3 % in day-7 tumour
  density even with perfect networks (measured). No injection falls inside a pair.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from simulators.microenvironment import (
    DEFAULT_SPACING_MM,
    FIELDS,
    MicroenvironmentParameters,
    MicroenvironmentState,
    grow,
    initial_state,
    simulate_microenvironment,
    time_step_days,
)
from simulators.surrogates.pairs import AGENTS, DIFFUSED, DentPairs
from simulators.treatment import Dose, Schedule

DIFFUSER_SPAN_DAYS = 1.0 / 24.0
"""One hour: a Diffuser pair runs from just before an injection to this long after it (Koyuncu et al. 2022)."""
DESIGN_FILE = "design.json"
"""The simulation settings of a dataset folder, written by the first :func:`generate_cases` into it."""
_TIME_TOLERANCE_DAYS = 1e-6


@dataclass(frozen=True)
class DatasetDesign:
    """What to simulate: every patient × start day × anti-angiogenic level × chemotherapy level is one case.

    Args:
        patients: virtual patients (seeds of :func:`simulators.microenvironment.initial_state`).
        start_days: therapy start days t0 (days after the patient's day 0).
        antiangiogenic_levels, chemotherapy_levels: amounts (plasma concentration units) of every dose of the
            agent in one case.
        antiangiogenic_days, chemotherapy_days: dose days after t0, whole days below ``horizon_days``.
        grid: cells per side of the square grid; spacing_mm: cell size (mm). Defaults: DENT's 151 × 151
            over 1 cm.
        horizon_days: days recorded after t0, a whole number (DENT: 7).
        output_every_days: interval of the stored maps, a divisor of one day that is a multiple or a divisor
            of one hour. DENT recorded every 30 minutes (1/48); DENT's pairs only use states one day apart and
            one hour after injections, which are stored whatever this is, so the default is one day: a
            full-size case then holds 16 maps, 6.2 MB, instead of 341, 131 MB. It hardly changes the run time
            (about 12 s per full-size case, 60 % of it in the sparse solves): the model steps every 30
            minutes regardless.
        parameters: the model's constants.

    The defaults are the paper's protocol with the choices of the module docstring: 8 × 5 × 3 × 3 = 360 cases.
    """

    patients: tuple[int, ...] = tuple(range(8))
    start_days: tuple[float, ...] = (14.0, 15.0, 17.0, 19.0, 21.0)
    antiangiogenic_levels: tuple[float, ...] = (0.5, 1.0, 2.0)
    chemotherapy_levels: tuple[float, ...] = (0.5, 1.0, 2.0)
    antiangiogenic_days: tuple[float, ...] = (0.0, 2.0, 4.0, 6.0)
    chemotherapy_days: tuple[float, ...] = (2.0, 4.0, 6.0)
    grid: int = 151
    spacing_mm: float = DEFAULT_SPACING_MM
    horizon_days: float = 7.0
    output_every_days: float = 1.0
    parameters: MicroenvironmentParameters = MicroenvironmentParameters()

    def __post_init__(self) -> None:
        for name in ("patients", "start_days", "antiangiogenic_levels", "chemotherapy_levels",
                     "antiangiogenic_days", "chemotherapy_days"):
            values = tuple(getattr(self, name))
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat a value, got {values}")
            object.__setattr__(self, name, values)
        if not self.patients or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in self.patients):
            raise ValueError(f"patients must be non-negative integer seeds, got {self.patients}")
        if not (self.start_days and self.antiangiogenic_levels and self.chemotherapy_levels):
            raise ValueError("start_days, antiangiogenic_levels and chemotherapy_levels must not be empty")
        for name in ("start_days", "antiangiogenic_levels", "chemotherapy_levels"):
            if not all(math.isfinite(value) and value >= 0 for value in getattr(self, name)):
                raise ValueError(f"{name} must be finite and non-negative, got {getattr(self, name)}")
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 3:
            raise ValueError(f"grid must be an integer of at least 3 cells, got {self.grid!r}")
        if not (math.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        if not (self.horizon_days >= 1 and _is_whole(self.horizon_days)):
            raise ValueError(f"horizon_days must be a whole number of days, at least 1, got {self.horizon_days}")
        if not (self.antiangiogenic_days or self.chemotherapy_days):
            raise ValueError("a design needs at least one dose day")
        for name in ("antiangiogenic_days", "chemotherapy_days"):
            if not all(_is_whole(day) and 0 <= day < self.horizon_days for day in getattr(self, name)):
                raise ValueError(f"{name} must be whole days from 0 to horizon_days - 1, got {getattr(self, name)}")
        every = self.output_every_days
        if not (every > 0 and _is_whole(1.0 / every)
                and (_is_whole(DIFFUSER_SPAN_DAYS / every) or _is_whole(every / DIFFUSER_SPAN_DAYS))):
            raise ValueError(f"output_every_days must divide one day and divide or be a multiple of one hour, got "
                             f"{every}")

    @property
    def record_every_days(self) -> float:
        """The model's output interval: the stored interval, or one hour where that is coarser."""
        return min(self.output_every_days, DIFFUSER_SPAN_DAYS)

    def cases(self) -> tuple[Case, ...]:
        """Every case, patient by patient, then by start day, anti-angiogenic and chemotherapy level."""
        return tuple(Case(patient, start, aa, chemo) for patient in self.patients for start in self.start_days
                     for aa in self.antiangiogenic_levels for chemo in self.chemotherapy_levels)

    def schedule(self, case: Case) -> Schedule:
        """The doses of ``case``, days counted from the patient's day 0."""
        return Schedule(tuple(Dose(case.start_day + day, "antiangiogenic", case.antiangiogenic_level)
                              for day in self.antiangiogenic_days)
                        + tuple(Dose(case.start_day + day, "chemotherapy", case.chemotherapy_level)
                                for day in self.chemotherapy_days))

    def simulation_settings(self) -> dict:
        """What fixes a case's content beyond its name (everything but the choice of cases): the content of a
        dataset folder's ``design.json``."""
        chosen = {"patients", "start_days", "antiangiogenic_levels", "chemotherapy_levels"}
        return {key: value for key, value in asdict(self).items() if key not in chosen}


@dataclass(frozen=True)
class Case:
    """One simulation: virtual patient ``patient`` treated from ``start_day`` at one level per agent."""

    patient: int
    start_day: float
    antiangiogenic_level: float
    chemotherapy_level: float

    @property
    def file_name(self) -> str:
        return (f"patient{self.patient:03d}_start{_exact(self.start_day)}_aa{_exact(self.antiangiogenic_level)}"
                f"_chemo{_exact(self.chemotherapy_level)}.npz")


@dataclass(frozen=True, eq=False)
class CaseRecord:
    """One case file in memory (see the module docstring for the fields)."""

    fields: np.ndarray
    times: np.ndarray
    before_injection: np.ndarray
    injection_days: np.ndarray
    injection_doses: np.ndarray
    seed: int
    start_day: float
    horizon_days: int

    def state_at(self, day: float) -> np.ndarray:
        """The stored maps ``[5, X, Y]`` at ``day`` (after any injection at that time)."""
        return self.fields[_index_of(self.times, day)]

    def injected_on(self, day: float) -> bool:
        """Whether a dose was given at ``day``."""
        return bool(np.any(np.abs(self.injection_days - day) < _TIME_TOLERANCE_DAYS))

    def daily_states(self) -> np.ndarray:
        """``[horizon + 1, 5, X, Y]``: the maps at t0, t0 + 1, …, t0 + horizon, each just before any injection of
        that day — what a rollout holds when a day begins (t0 gives the untreated state)."""
        days = self.start_day + np.arange(self.horizon_days + 1)
        return np.stack([self.before_injection[_index_of(self.injection_days, day)] if self.injected_on(day)
                         else self.state_at(day) for day in days])


@dataclass(frozen=True)
class GeneratedCases:
    """The design's case files in :meth:`DatasetDesign.cases` order, and those this call wrote."""

    files: tuple[Path, ...]
    written: tuple[Path, ...]


def generate_cases(design: DatasetDesign, out_dir: str | os.PathLike[str], progress: bool = True) -> GeneratedCases:
    """Simulate every case of ``design`` not yet in ``out_dir`` and write one compressed ``.npz`` per case.

    Resumable: a case whose file exists is skipped, and each file is written under a temporary name and renamed
    when complete, so an interrupted run leaves whole files only (and perhaps a hidden ``.*.tmp``). The untreated
    growth before therapy is shared: each patient grows once, from day 0 through its start days in order, and
    every case starting on a day continues from that state (identical to growing each case from day 0).

    Raises:
        ValueError: ``out_dir`` holds a dataset of other simulation settings (its ``design.json``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim_folder(out_dir, design)
    cases = design.cases()
    files = tuple(out_dir / case.file_name for case in cases)
    pending = [case for case, path in zip(cases, files) if not path.exists()]
    step = time_step_days(design.spacing_mm, design.parameters)
    written = []
    with tqdm(total=len(pending), disable=not progress, desc="DENT cases", unit="case") as bar:
        for patient in design.patients:
            state, day = None, 0.0
            for start in sorted(design.start_days):
                starting = [case for case in pending if case.patient == patient and case.start_day == start]
                if not starting:
                    continue
                if state is None:
                    state = initial_state((design.grid, design.grid), seed=patient, parameters=design.parameters,
                                          spacing_mm=design.spacing_mm)
                state, day = grow(state, Schedule(), start, design.parameters, from_day=day,
                                  max_time_step_days=step), start
                for case in starting:
                    path = out_dir / case.file_name
                    _write_atomically(path, _simulate_case(design, case, state, step))
                    written.append(path)
                    bar.update()
    return GeneratedCases(files=files, written=tuple(written))


def load_case(path: str | os.PathLike[str]) -> CaseRecord:
    """A case file written by :func:`generate_cases`."""
    with np.load(path) as data:
        injection_days = data["injection_days"]
        amounts = np.zeros((len(injection_days), len(AGENTS)), dtype=np.float32)
        for day, agent, amount in zip(data["dose_day"], data["dose_agent"], data["dose_amount"]):
            amounts[_index_of(injection_days, day), AGENTS.index(str(agent))] += amount
        return CaseRecord(fields=data["fields"], times=data["times"], before_injection=data["before_injection"],
                          injection_days=injection_days, injection_doses=amounts, seed=int(data["seed"]),
                          start_day=float(data["start_day"]), horizon_days=int(data["horizon_days"]))


def extract_pairs(case_files: list[str | os.PathLike[str]] | tuple[str | os.PathLike[str], ...],
                  ) -> tuple[DentPairs, DentPairs]:
    """The Diffuser pairs and the Elapser pairs of ``case_files`` (see the module docstring), case by case.

    Diffuser: ``before`` just before each injection, ``after`` one hour later, ``doses`` the amounts injected
    (``[antiangiogenic, chemotherapy]``), ``day`` the injection day. Elapser: ``before`` at day k of the treatment
    (with A and d one hour after its injection, if any), ``after`` at day k + 1 before any injection, ``doses``
    zero, ``day`` day k. The arrays are allocated once (a full-size pair takes 0.9 MB).
    """
    files = list(case_files)
    if not files:
        raise ValueError("no case files to cut pairs from")
    injections = horizon = 0
    for path in files:
        with np.load(path) as data:
            injections += len(data["injection_days"])
            horizon += int(data["horizon_days"])
    diffuser, elapser = _PairArrays(injections), _PairArrays(horizon)
    no_dose = np.zeros(len(AGENTS), dtype=np.float32)
    diffused = [FIELDS.index(name) for name in DIFFUSED]
    for path in files:
        case = load_case(path)
        daily = case.daily_states()
        for index, day in enumerate(case.injection_days):
            diffuser.add(case.before_injection[index], case.state_at(day + DIFFUSER_SPAN_DAYS),
                         case.injection_doses[index], case.seed, day)
        for k in range(case.horizon_days):
            day = case.start_day + k
            begin = daily[k]
            if case.injected_on(day):
                begin = begin.copy()
                begin[diffused] = case.state_at(day + DIFFUSER_SPAN_DAYS)[diffused]
            elapser.add(begin, daily[k + 1], no_dose, case.seed, day)
    return diffuser.pairs(), elapser.pairs()


def split_by_patient(pairs: DentPairs, test_patients: tuple[int, ...] | list[int]) -> tuple[DentPairs, DentPairs]:
    """``(train, test)``: the pairs of ``test_patients`` and those of every other patient, so that no virtual
    patient is in both (the paper's split: five patients to train, three to test).

    Raises:
        ValueError: a test patient has no pair, or no pair is left to train on.
    """
    missing = sorted(set(test_patients) - set(pairs.patient.tolist()))
    if missing:
        raise ValueError(f"test patients {missing} have no pairs; the pairs' patients are "
                         f"{sorted(set(pairs.patient.tolist()))}")
    test = np.isin(pairs.patient, list(test_patients))
    if test.all():
        raise ValueError("every pair belongs to a test patient: nothing is left to train on")
    return pairs.subset(~test), pairs.subset(test)


def _simulate_case(design: DatasetDesign, case: Case, grown: MicroenvironmentState,
                   step: float) -> dict[str, np.ndarray]:
    """The arrays of one case file, from ``grown`` (the untreated patient at the start day).

    The treatment runs in segments from one injection day to the next, each under the doses given before its
    end: a segment's last state is the state just before the next injection, and the next segment starts from
    it with the new dose. Times are counted in model outputs (``record_every_days``) from t0.
    """
    schedule = design.schedule(case)
    record = design.record_every_days
    per_day = round(1.0 / record)
    end = round(design.horizon_days) * per_day
    injections = sorted({round(dose.day - case.start_day) * per_day for dose in schedule.doses})
    kept = (set(range(0, end + 1, round(design.output_every_days / record)))
            | {injection + round(DIFFUSER_SPAN_DAYS / record) for injection in injections})
    frames: dict[int, np.ndarray] = {}
    before = {0: _maps(grown)} if 0 in injections else {}  # untreated until t0: A = d = 0
    state = grown
    bounds = sorted({0, end, *injections})
    for first, last in zip(bounds[:-1], bounds[1:]):
        stop = case.start_day + last * record
        given = Schedule(tuple(dose for dose in schedule.doses if dose.day < stop - _TIME_TOLERANCE_DAYS))
        trajectory = simulate_microenvironment(state, given, (last - first) * record, design.parameters,
                                               output_every_days=record, start_day=case.start_day + first * record,
                                               max_time_step_days=step)
        state = trajectory.state(-1)
        for offset in range(last - first):
            if first + offset in kept:
                frames[first + offset] = _maps(trajectory.state(offset))
        if last == end:
            frames[end] = _maps(state)
        else:
            before[last] = _maps(state)
    order = sorted(frames)
    return {
        "fields": np.stack([frames[index] for index in order]),
        "times": case.start_day + record * np.array(order, dtype=np.float64),
        "before_injection": np.stack([before[index] for index in injections]),
        "injection_days": case.start_day + record * np.array(injections, dtype=np.float64),
        "seed": np.int64(case.patient),
        "start_day": np.float64(case.start_day),
        "horizon_days": np.int64(round(design.horizon_days)),
        "antiangiogenic_level": np.float64(case.antiangiogenic_level),
        "chemotherapy_level": np.float64(case.chemotherapy_level),
        "spacing_mm": np.float64(design.spacing_mm),
        "dose_day": np.array([dose.day for dose in schedule.doses], dtype=np.float64),
        "dose_agent": np.array([dose.agent for dose in schedule.doses], dtype=str),
        "dose_amount": np.array([dose.amount for dose in schedule.doses], dtype=np.float64),
    }


def _maps(state: MicroenvironmentState) -> np.ndarray:
    return np.stack([getattr(state, name) for name in FIELDS]).astype(np.float32)


class _PairArrays:
    """Pairs filled row by row into arrays allocated at the first row (its maps fix the shape)."""

    def __init__(self, count: int) -> None:
        self.count, self.filled = count, 0
        self.doses = np.zeros((count, len(AGENTS)), dtype=np.float32)
        self.patient = np.zeros(count, dtype=np.int64)
        self.day = np.zeros(count, dtype=np.float64)
        self.before = self.after = None

    def add(self, before: np.ndarray, after: np.ndarray, doses: np.ndarray, patient: int, day: float) -> None:
        if self.before is None:
            self.before = np.empty((self.count, *before.shape), dtype=np.float32)
            self.after = np.empty((self.count, *before.shape), dtype=np.float32)
        row = self.filled
        self.before[row], self.after[row], self.doses[row] = before, after, doses
        self.patient[row], self.day[row] = patient, day
        self.filled += 1

    def pairs(self) -> DentPairs:
        return DentPairs(before=self.before, after=self.after, doses=self.doses, patient=self.patient, day=self.day)


def _claim_folder(out_dir: Path, design: DatasetDesign) -> None:
    """Write ``design.json`` into a new dataset folder, or refuse one whose settings differ from ``design``'s."""
    settings = json.loads(json.dumps(design.simulation_settings()))
    path = out_dir / DESIGN_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != settings:
            changed = sorted(key for key in settings.keys() | stored.keys() if settings.get(key) != stored.get(key))
            raise ValueError(f"{out_dir} holds cases simulated with other settings ({', '.join(changed)} differ): "
                             "use another folder")
    elif any(out_dir.glob("*.npz")):
        raise ValueError(f"{out_dir} holds case files but no {DESIGN_FILE}: their settings are unknown; use another "
                         "folder")
    else:
        path.write_text(json.dumps(settings, indent=2) + "\n")


def _write_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as a compressed ``.npz`` at ``path``, written under a hidden temporary name, then renamed."""
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before it has its name: a crash never leaves a named half file
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _exact(value: float) -> str:
    """``value`` short (``14``, ``0.5``) where that reads back exactly, else in full: distinct values never share a
    file name."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def _index_of(times: np.ndarray, day: float) -> int:
    matches = np.flatnonzero(np.abs(np.asarray(times) - day) < _TIME_TOLERANCE_DAYS)
    if matches.size != 1:
        raise ValueError(f"no stored state at day {day:g}")
    return int(matches[0])


def _is_whole(value: float) -> bool:
    return math.isfinite(value) and abs(value - round(value)) < 1e-9 * max(1.0, abs(value))
