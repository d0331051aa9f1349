"""Treatment schedules: dated doses of an anti-angiogenic agent and a chemotherapy drug, and the plasma
concentrations they produce.

A :class:`Schedule` is a sorted tuple of :class:`Dose` (day, agent, amount). After each injection the plasma
concentration of its agent jumps by ``amount`` and decays exponentially (Yonucu et al., PLoS Comput Biol
13(9):e1005724, 2017; Koyuncu et al., Sci Rep 12:2187, 2022):

    c_agent(t) = Σ_{doses of the agent with day ≤ t} amount · exp(−(t − day) / τ),

where τ is the plasma **e-folding time** (the concentration falls by a factor e in τ days), not a half-life
(a half-life is τ·ln 2). Amounts are in units of the plasma concentration; days count from the start of the
simulation.

A schedule reads from a small TOML file, one ``[[dose]]`` table per injection::

    [[dose]]
    day = 14.0
    agent = "antiangiogenic"
    amount = 1.0
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from simulators.toml_file import read_toml

Agent = Literal["antiangiogenic", "chemotherapy"]
AGENTS: tuple[str, ...] = get_args(Agent)
DOSE_TIME_TOLERANCE_DAYS = 1e-9
"""Relative slack with which a time counts as at or after a dose day (absorbs the rounding of time loops)."""
_DOSE_KEYS = {"day", "agent", "amount"}


@dataclass(frozen=True)
class Dose:
    """One injection: ``amount`` (plasma concentration units) of ``agent`` on ``day`` (days from the start)."""

    day: float
    agent: Agent
    amount: float

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ValueError(f"unknown agent {self.agent!r}: the agents are {', '.join(AGENTS)}")
        for name in ("day", "amount"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"dose {name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"dose {name} must be finite and non-negative, got {value}")
            object.__setattr__(self, name, float(value))


@dataclass(frozen=True)
class Schedule:
    """Doses sorted by day (a schedule given out of order sorts itself; the order of equal days is kept).

    ``Schedule()`` is no treatment.
    """

    doses: tuple[Dose, ...] = ()

    def __post_init__(self) -> None:
        doses = tuple(self.doses)
        if not all(isinstance(dose, Dose) for dose in doses):
            raise ValueError("a schedule holds Dose objects only")
        object.__setattr__(self, "doses", tuple(sorted(doses, key=lambda dose: dose.day)))

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Schedule:
        """The schedule of a TOML file of ``[[dose]]`` tables with keys ``day``, ``agent``, ``amount``.

        Raises:
            ValueError: the file is missing or not valid TOML, holds no ``[[dose]]`` array, or a dose with missing,
                unknown or invalid keys; the message names the file and the dose.
        """
        entries = read_toml(path).get("dose")
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise ValueError(f"{path}: no [[dose]] tables (expected e.g. '[[dose]]' then 'day = 14.0', "
                             "'agent = \"chemotherapy\"', 'amount = 1.0')")
        doses = []
        for number, entry in enumerate(entries, start=1):
            missing, unknown = sorted(_DOSE_KEYS - set(entry)), sorted(set(entry) - _DOSE_KEYS)
            if missing or unknown:
                problems = [f"{kind} {', '.join(keys)}" for kind, keys in (("missing", missing), ("unknown", unknown))
                            if keys]
                raise ValueError(f"{path}: dose {number}: {'; '.join(problems)}")
            try:
                doses.append(Dose(entry["day"], entry["agent"], entry["amount"]))
            except ValueError as error:
                raise ValueError(f"{path}: dose {number}: {error}") from None
        return cls(tuple(doses))

    def plasma_concentration(self, agent: Agent, t: float | np.ndarray,
                             plasma_time_constant_days: float) -> float | np.ndarray:
        """Plasma concentration of ``agent`` at time(s) ``t`` (days): Σ amount·exp(−(t − day)/τ) over the
        agent's doses given at or before t, τ = ``plasma_time_constant_days`` the e-folding time. "At" allows for
        rounding: a time that a time loop computes as one ulp below a dose day (14.899999999999999 for 14.9) counts
        as that day, within :data:`DOSE_TIME_TOLERANCE_DAYS`·max(1, |t|)."""
        if agent not in AGENTS:
            raise ValueError(f"unknown agent {agent!r}: the agents are {', '.join(AGENTS)}")
        if not plasma_time_constant_days > 0:
            raise ValueError(f"plasma_time_constant_days must be positive, got {plasma_time_constant_days}")
        times = np.asarray(t, dtype=np.float64)
        total = np.zeros_like(times)
        for dose in self.doses:
            if dose.agent == agent:
                elapsed = times - dose.day
                given = elapsed >= -DOSE_TIME_TOLERANCE_DAYS * np.maximum(1.0, np.abs(times))
                total += np.where(given, dose.amount * np.exp(-np.where(given, np.maximum(elapsed, 0.0), 0.0)
                                                              / plasma_time_constant_days), 0.0)
        return float(total) if total.ndim == 0 else total
