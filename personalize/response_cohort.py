"""Simulated cohorts for the response classifier (:mod:`personalize.response_classifier`): virtual patients drawn
from the prior, their pre-treatment maps and their response class under one fixed schedule, stored in resumable
chunks; and more draws of the under-represented classes by rejection (Dimou et al.'s synthetic balancing).

A case (:meth:`CohortDesign.draw`) is a virtual patient of :mod:`personalize.virtual_patient`: its vessel seed and its
four model parameters drawn from the log-uniform prior (``bounds``, default :data:`DEFAULT_BOUNDS`), every draw seeded
by ``(seed, case index)`` alone, so a case is the same whichever chunk, worker or call simulates it. It grows
untreated to the schedule's first dose (``start_day``; DENT's protocol, :func:`protocol_schedule`), where the input
is taken: channel 0 the vessel density m (the perfusion image), channel 1 the tumour density n. It is then treated
to ``horizon_days`` after that day; the tumour (n > 0.5) is recorded every ``every_days`` and classified at the last
day by :func:`personalize.predictive.schedules.final_class` (baseline first, earlier days setting the nadir) — the
same simulation and the same rule as :func:`personalize.predictive.schedules.predict_response`, so a cohort case and
a posterior draw of the same parameters get the same class. Cases without a measurable baseline ("NE") are kept
on disk, counted, and left out of training and testing.

Criteria: RANO by default. With these millimetre tumours RECIST's progression, which also needs the sum of
longest diameters to grow by 5 mm, does not happen within a week (a tumour about 2.5 mm across at day 14 would have
to triple its diameter), so RECIST has no non-responsive class: measured on 64 cases (15 × 15 cells of 0.5 mm, step
1/12 day, DENT's protocol at level 1) RECIST gave 3 responsive, 61 stable, 0 non-responsive; RANO (no absolute
minimum) gives all three (:mod:`personalize.predictive.schedules` measured the same on single patients).

Natural class proportions by RANO (cases 0–63, same small grid): at level 1 (the default) 3 responsive, 15
stable, 46 non-responsive, so the responsive and stable classes are the minorities and get the synthetic cases;
at level 2 of both agents 19 / 27 / 18. On the default grid (41 × 41 cells of 0.25 mm, step 1/24 day, seed 0,
cases 0–319, level 1): 24 responsive (7.5 %), 74 stable (23.1 %), 222 non-responsive (69.4 %), none NE. The
geometric mean of d_r is 1.70, 1.16 and 0.46 per class (r_n 0.17, 0.17, 0.22; α_mn 0.06, 0.09, 0.11): the class
is mostly the drug's kill rate, which no pre-treatment map shows, so a classifier of those maps has a ceiling.

Storage: chunks of ``chunk_size`` consecutive case indices, one compressed ``.npz`` each (written whole or not at
all), in a folder claimed by ``cohort.json`` (the design's settings; a folder of other settings is refused).
Cost: about 0.6 s per case on the default 41 × 41 grid (1 s on the loaded 2-core machine), 0.3 s on 15 × 15.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from personalize.microenvironment_run import TUMOUR_THRESHOLD
from personalize.predictive.response import CRITERIA, GROUPS
from personalize.predictive.schedules import NOT_EVALUABLE, final_class
from personalize.virtual_patient import (
    DEFAULT_BOUNDS,
    DEFAULT_GRID,
    DEFAULT_SPACING_MM,
    DEFAULT_TIME_STEP_DAYS,
    PARAMETER_FIELDS,
    protocol_schedule,
    states_on_days,
)
from simulators.microenvironment import MicroenvironmentParameters, initial_state
from simulators.nifti import atomic_output
from simulators.treatment import Schedule

GROUP_NAMES = tuple(dict.fromkeys(GROUPS.values()))
"""The three classes, in the order of the classifier's outputs: responsive, stable, non-responsive."""
INPUT_CHANNELS = ("m", "n")
"""The input maps at the first dose day: vessel density (the perfusion image), tumour density."""
COHORT_PARAMETERS = tuple(PARAMETER_FIELDS)
DESIGN_FILE = "cohort.json"

@dataclass(frozen=True, eq=False)
class CohortDesign:
    """How every case of a cohort is drawn and simulated (module docstring).

    Attributes:
        bounds: log-uniform prior bounds ``{name: (low, high)}`` of the four model parameters.
        seed: with the case index, seeds each case's draw.
        start_day, antiangiogenic, chemotherapy: the fixed schedule (:func:`protocol_schedule`).
        horizon_days, every_days: the response is followed from the first dose to ``horizon_days`` after it.
        criteria: ``"rano"`` (default, module docstring) or ``"recist"``.
        measurable_mm: the smallest baseline target; None: twice the grid spacing (as ``predict_response``).
        grid, spacing_mm, max_time_step_days, parameters: the simulation (square grid).
        chunk_size: cases per stored file.
    """

    bounds: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: {name: DEFAULT_BOUNDS[name] for name in COHORT_PARAMETERS})
    seed: int = 0
    start_day: float = 14.0
    antiangiogenic: float = 1.0
    chemotherapy: float = 1.0
    horizon_days: float = 7.0
    every_days: float = 1.0
    criteria: str = "rano"
    measurable_mm: float | None = None
    grid: int = DEFAULT_GRID
    spacing_mm: float = DEFAULT_SPACING_MM
    max_time_step_days: float = DEFAULT_TIME_STEP_DAYS
    parameters: MicroenvironmentParameters = MicroenvironmentParameters()
    chunk_size: int = 16

    def __post_init__(self) -> None:
        if set(self.bounds) != set(COHORT_PARAMETERS):
            raise ValueError(f"bounds must name exactly {', '.join(COHORT_PARAMETERS)}, got {sorted(self.bounds)}")
        bounds = {}
        for name in COHORT_PARAMETERS:
            low, high = (float(value) for value in self.bounds[name])
            if not 0 < low < high < math.inf:
                raise ValueError(f"bounds of {name} must satisfy 0 < low < high < inf, got ({low}, {high})")
            bounds[name] = (low, high)
        object.__setattr__(self, "bounds", bounds)
        if self.criteria not in CRITERIA:
            raise ValueError(f"criteria must be 'rano' or 'recist', got {self.criteria!r}")
        steps = round(self.horizon_days / self.every_days) if self.every_days > 0 else 0
        if steps < 1 or abs(steps * self.every_days - self.horizon_days) > 1e-9 * max(1.0, self.horizon_days):
            raise ValueError(f"horizon_days ({self.horizon_days}) must be a positive whole number of every_days "
                             f"({self.every_days})")
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 5:
            raise ValueError(f"grid must be an integer of at least 5 cells, got {self.grid!r}")
        if not (self.spacing_mm > 0 and self.max_time_step_days > 0 and self.start_day >= 0):
            raise ValueError("spacing_mm and max_time_step_days must be positive, start_day non-negative")
        if self.measurable_mm is not None and not self.measurable_mm > 0:
            raise ValueError(f"measurable_mm must be positive, got {self.measurable_mm}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")

    @property
    def measurable(self) -> float:
        return 2.0 * self.spacing_mm if self.measurable_mm is None else float(self.measurable_mm)

    @property
    def days(self) -> tuple[float, ...]:
        """The first dose day (the baseline, where the input is taken) and the follow-up days."""
        steps = round(self.horizon_days / self.every_days)
        return tuple(self.start_day + k * self.every_days for k in range(steps + 1))

    def schedule(self) -> Schedule:
        return protocol_schedule(self.start_day, self.antiangiogenic, self.chemotherapy)

    def draw(self, index: int) -> tuple[int, dict[str, float]]:
        """Case ``index``'s vessel seed and model parameters, from ``(seed, index)`` alone."""
        rng = np.random.default_rng([self.seed, index])
        vessel_seed = int(rng.integers(2**31 - 1))
        u = rng.random(len(COHORT_PARAMETERS))
        return vessel_seed, {name: math.exp(math.log(low) + ui * (math.log(high) - math.log(low)))
                             for ui, (name, (low, high)) in zip(u, self.bounds.items())}

    def simulate(self, vessel_seed: int, theta: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray, str]:
        """One virtual patient: its inputs ``[2, X, Y]`` (m, n at the first dose day, float32), its tumour masks
        ``[T, X, Y]`` on :attr:`days` and its response class (or ``"NE"``); ``theta`` holds model parameters of
        :data:`COHORT_PARAMETERS` (the others keep ``parameters``' values)."""
        if not set(theta) <= set(COHORT_PARAMETERS):
            raise ValueError(f"theta may hold only {', '.join(COHORT_PARAMETERS)}, got {sorted(theta)}")
        parameters = replace(self.parameters, **{PARAMETER_FIELDS[name]: float(value) for name, value in theta.items()})
        initial = initial_state((self.grid, self.grid), seed=vessel_seed, parameters=self.parameters,
                                spacing_mm=self.spacing_mm)
        states = list(states_on_days(initial, self.schedule(), self.days, parameters, self.max_time_step_days))
        inputs = np.stack([states[0].m, states[0].n]).astype(np.float32)
        masks = np.stack([state.n > TUMOUR_THRESHOLD for state in states])
        return inputs, masks, final_class(masks, self.spacing_mm, self.criteria, self.measurable)

    def settings(self) -> dict:
        """What fixes a case's content (a cohort folder's ``cohort.json``)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True, eq=False)
class Cohort:
    """Simulated cases, row by row: ``index`` (case indices), ``vessel_seed``, ``theta`` ``[N, 4]``
    (:data:`COHORT_PARAMETERS`), ``inputs`` ``[N, 2, X, Y]`` float32, ``masks`` ``[N, T, X, Y]`` bool, ``response``
    (CR, PR, SD, PD or NE) and ``group`` (a :data:`GROUP_NAMES` entry or NE)."""

    index: np.ndarray
    vessel_seed: np.ndarray
    theta: np.ndarray
    inputs: np.ndarray
    masks: np.ndarray
    response: np.ndarray
    group: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        """The class of each case as its position in :data:`GROUP_NAMES`, −1 for NE."""
        return np.array([GROUP_NAMES.index(g) if g in GROUP_NAMES else -1 for g in self.group], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        """Cases per class and NE."""
        return {name: int(np.sum(self.group == name)) for name in (*GROUP_NAMES, NOT_EVALUABLE)}

    def subset(self, rows: np.ndarray | Sequence[int]) -> Cohort:
        rows = np.asarray(rows, dtype=np.int64)
        return Cohort(*(getattr(self, name)[rows] for name in _COHORT_FIELDS))

    def evaluable(self) -> Cohort:
        """The cases with a measurable baseline."""
        return self.subset(np.flatnonzero(self.labels >= 0))

    @classmethod
    def concatenate(cls, parts: Sequence[Cohort]) -> Cohort:
        return cls(*(np.concatenate([getattr(part, name) for part in parts]) for name in _COHORT_FIELDS))


_COHORT_FIELDS = ("index", "vessel_seed", "theta", "inputs", "masks", "response", "group")


@dataclass(frozen=True, eq=False)
class _ChunkWriter:
    """Simulates the cases of one chunk and writes them as one ``.npz`` (picklable for a process pool)."""

    design: CohortDesign
    out_dir: Path

    def __call__(self, cases: range) -> int:
        rows = [(index, *self.design.draw(index)) for index in cases]
        simulated = [self.design.simulate(seed, theta) for _, seed, theta in rows]
        arrays = {
            "index": np.array([index for index, _, _ in rows], dtype=np.int64),
            "vessel_seed": np.array([seed for _, seed, _ in rows], dtype=np.int64),
            "theta": np.array([[theta[name] for name in COHORT_PARAMETERS] for _, _, theta in rows]),
            "inputs": np.stack([inputs for inputs, _, _ in simulated]),
            "masks": np.stack([masks for _, masks, _ in simulated]),
            "response": np.array([label for _, _, label in simulated], dtype=str),
            "group": np.array([GROUPS.get(label, NOT_EVALUABLE) for _, _, label in simulated], dtype=str),
        }
        with atomic_output(_chunk_path(self.out_dir, cases)) as temporary:
            np.savez_compressed(temporary, **arrays)
        return len(cases)


def simulate_cohort(design: CohortDesign, out_dir: str | os.PathLike[str], cases: range, *,
                    executor: Executor | None = None, progress: bool = True) -> tuple[Cohort, int]:
    """The cases ``cases`` (a range of case indices) of ``design``, simulating those not yet in ``out_dir``.

    Cases are stored in chunks of ``design.chunk_size`` consecutive indices from ``cases.start``, one compressed
    ``.npz`` per chunk written whole or not at all; a chunk already on disk is read, not simulated (resumable).
    Chunks are simulated by ``executor`` (None: in this process).

    Returns:
        The cohort in index order, and the number of cases this call simulated.

    Raises:
        ValueError: an empty or stepped range, or ``out_dir`` holding a cohort of other settings.
    """
    if not isinstance(cases, range) or len(cases) == 0 or cases.step != 1 or cases.start < 0:
        raise ValueError(f"cases must be a non-empty range of non-negative indices with step 1, got {cases!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim(out_dir, design)
    chunks = [range(start, min(start + design.chunk_size, cases.stop))
              for start in range(cases.start, cases.stop, design.chunk_size)]
    pending = [chunk for chunk in chunks if not _chunk_path(out_dir, chunk).exists()]
    writer = _ChunkWriter(design, out_dir)
    simulated = 0
    with tqdm(total=sum(map(len, pending)), disable=not progress, desc="cohort", unit="case") as bar:
        for done in (map(writer, pending) if executor is None else executor.map(writer, pending)):
            simulated += done
            bar.update(done)
    return Cohort.concatenate([_read_chunk(_chunk_path(out_dir, chunk)) for chunk in chunks]), simulated


def minority_cases(design: CohortDesign, out_dir: str | os.PathLike[str], wanted: Mapping[str, int], *,
                   first_index: int, max_cases: int, executor: Executor | None = None,
                   progress: bool = True) -> tuple[Cohort, int]:
    """Synthetic cases of under-represented classes by rejection: prior draws ``first_index``, ``first_index + 1``,
    … are simulated (and stored, resumably) until each class of ``wanted`` has ``wanted[class]`` cases, or
    ``max_cases`` draws were spent; the first cases of each wanted class by index are kept, the others dropped.

    Returns:
        The kept cases (only classes of ``wanted``, at most ``wanted[class]`` each, in index order) and the number
        of draws spent (simulated now or before).

    Raises:
        ValueError: an unknown class, a negative count, ``max_cases`` < 1.
    """
    unknown = sorted(set(wanted) - set(GROUP_NAMES))
    if unknown or any(count < 0 for count in wanted.values()):
        raise ValueError(f"wanted must map classes among {GROUP_NAMES} to counts >= 0, got {dict(wanted)}")
    if max_cases < 1:
        raise ValueError(f"max_cases must be >= 1, got {max_cases}")
    block = design.chunk_size * max(1, getattr(executor, "_max_workers", 1))
    spent, kept = 0, None
    while True:
        spent = min(spent + block, max_cases)
        cohort, _ = simulate_cohort(design, out_dir, range(first_index, first_index + spent), executor=executor,
                                    progress=progress)
        rows = np.concatenate([np.flatnonzero(cohort.group == name)[:count] for name, count in wanted.items()]
                              + [np.zeros(0, dtype=np.int64)])
        kept = cohort.subset(np.sort(rows))
        reached = all(np.sum(kept.group == name) >= count for name, count in wanted.items())
        if reached or spent >= max_cases:
            return kept, spent


def _chunk_path(out_dir: Path, cases: range) -> Path:
    return out_dir / f"cases_{cases.start:07d}_{cases.stop:07d}.npz"


def _read_chunk(path: Path) -> Cohort:
    with np.load(path) as data:
        return Cohort(*(data[name] for name in _COHORT_FIELDS))


def _claim(out_dir: Path, design: CohortDesign) -> None:
    """Write ``cohort.json`` into a new cohort folder, or refuse one simulated with other settings."""
    path, settings = out_dir / DESIGN_FILE, design.settings()
    if not path.exists():
        if any(out_dir.glob("cases_*.npz")):
            raise ValueError(f"{out_dir} holds case files but no {DESIGN_FILE}: use another folder")
        with atomic_output(path) as temporary:
            temporary.write_text(json.dumps(settings, indent=2) + "\n")
        return
    stored = json.loads(path.read_text())
    if stored != settings:
        changed = sorted(key for key in settings.keys() | stored.keys() if settings.get(key) != stored.get(key))
        raise ValueError(f"{out_dir} holds a cohort of other settings ({', '.join(changed)} differ): use another "
                         "folder")
