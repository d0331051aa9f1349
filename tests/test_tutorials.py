"""Every tutorial runs to the end with its small settings, as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=lambda path: path.stem)
def test_tutorial_runs_with_quick_settings(tutorial, tmp_path):
    completed = subprocess.run([sys.executable, str(tutorial), "--quick", "--out", str(tmp_path)],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summaries = list(tmp_path.rglob("summary.json"))
    assert summaries, "the tutorial wrote no fit"
    summary = json.loads(summaries[0].read_text())
    assert summary["n_simulations"] > 0 and "mu_1" in summary["parameters"]
