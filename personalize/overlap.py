"""Overlap of two segmentations: the one Dice coefficient that fits, comparisons, the learned networks' test
tables and the tests use."""

from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Sørensen–Dice coefficient 2|A∩B| / (|A| + |B|) of two masks (1 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
