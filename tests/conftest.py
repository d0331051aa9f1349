"""Shared fixtures: synthetic anatomies, and a table of measured figures printed after the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simulators.anatomy import Anatomy

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_MEASURED: list[tuple[str, str]] = []


@pytest.fixture
def measured(request):
    """Record a measured figure under the test's name; all are printed in the terminal summary."""

    def record(label: str, value: object) -> None:
        _MEASURED.append((f"{request.node.name}: {label}", str(value)))

    return record


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module, restored afterwards: small networks and per-row simulations gain nothing
    from threads, and on a loaded 2-core machine two threads per process slowed an MDN's training tenfold
    (measured: 156 s against 19 s) and small CNNs thirty-fold. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_numba_thread():
    """The Fisher-Kolmogorov solver's numba kernel on one thread for a module (the machine is shared), restored
    afterwards; modules opt in as for :func:`one_torch_thread`."""
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter):
    if _MEASURED:
        terminalreporter.section("measured properties")
        for label, value in _MEASURED:
            terminalreporter.write_line(f"{label} = {value}")


def phantom(n: int = 32, spacing_mm: float = 4.0, affine: np.ndarray | None = None) -> Anatomy:
    """An asymmetric brain-like phantom: WM core, GM shell, a CSF ventricle off the midline, background."""
    grid = (np.indices((n, n, n)).transpose(1, 2, 3, 0) + 0.5) / n - 0.5  # in [-0.5, 0.5)
    radius = np.linalg.norm(grid / np.array([0.46, 0.40, 0.36]), axis=-1)
    ventricle = np.linalg.norm((grid - np.array([0.10, 0.05, 0.0])) / np.array([0.08, 0.18, 0.08]), axis=-1) < 1
    brain = radius < 1
    wm = ((radius < 0.75) & ~ventricle).astype(np.float32)
    gm = (brain & (radius >= 0.75) & ~ventricle).astype(np.float32)
    # smooth partial-volume rim between WM and GM, as probabilistic maps have
    rim = brain & ~ventricle & (np.abs(radius - 0.75) < 0.06)
    wm[rim] = np.clip(0.5 - (radius[rim] - 0.75) / 0.12, 0, 1)
    gm[rim] = 1 - wm[rim]
    csf = (ventricle | ((radius >= 1) & (radius < 1.08))).astype(np.float32)
    if affine is None:
        affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
        affine[:3, 3] = -spacing_mm * n / 2
    return Anatomy(wm=wm, gm=gm, csf=csf, affine=affine)


def world_mm(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates (RAS mm) of every voxel centre, shape ``(*shape, 3)``."""
    return np.indices(shape).transpose(1, 2, 3, 0) @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture
def brain() -> Anatomy:
    return phantom()
