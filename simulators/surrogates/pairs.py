"""Training pairs of the DENT surrogate (Koyuncu et al., Sci Rep 12:2187, 2022): a micro-environment state and
the state a fixed time later, with the doses injected in between."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulators.microenvironment import FIELDS

AGENTS = ("antiangiogenic", "chemotherapy")
"""Order of the dose columns."""
DIFFUSED = ("A", "d")
"""The channels an injection changes within the Diffuser's hour; n, m and P pass through it unchanged."""


@dataclass(frozen=True, eq=False)
class DentPairs:
    """``before[i]`` and ``after[i]`` are states of virtual patient ``patient[i]``, channels in
    :data:`simulators.microenvironment.FIELDS` order (n, m, P, A, d), float32 ``[N, 5, X, Y]``.

    Diffuser pairs are one hour apart across an injection of ``doses[i]`` (amounts of :data:`AGENTS`);
    Elapser pairs run from day k to day k + 1 with no injection in between (``doses`` all zero). On a day with an
    injection ``before`` is what a rollout holds after the Diffuser: n, m and P just before the injection and the
    :data:`DIFFUSED` maps one hour after it. ``day[i]`` is day k.
    """

    before: np.ndarray
    after: np.ndarray
    doses: np.ndarray
    patient: np.ndarray
    day: np.ndarray

    def __post_init__(self) -> None:
        count = len(self.before)
        if self.before.ndim != 4 or self.before.shape[1] != len(FIELDS) or self.after.shape != self.before.shape:
            raise ValueError(f"before and after must be [N, {len(FIELDS)}, X, Y] of one shape, got "
                             f"{self.before.shape} and {self.after.shape}")
        if self.doses.shape != (count, len(AGENTS)) or self.patient.shape != (count,) or self.day.shape != (count,):
            raise ValueError(f"doses must be [N, {len(AGENTS)}], patient and day [N], for N = {count}")

    def __len__(self) -> int:
        return len(self.before)

    def subset(self, rows: np.ndarray) -> DentPairs:
        """The pairs at ``rows`` (indices or a boolean mask)."""
        return DentPairs(self.before[rows], self.after[rows], self.doses[rows], self.patient[rows], self.day[rows])
