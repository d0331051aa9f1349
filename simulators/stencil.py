"""Finite-volume diffusion–reaction step on a padded box, fused into one pass per time step.

Space: cell-centred finite volumes. The flux between neighbouring voxels i and j along an axis with
spacing h is k_ij·(u_j − u_i) with k_ij = H(d_i, d_j) / h², H the harmonic mean
(H(a, b) = 2ab / (a + b), 0 when either is 0) of the normalised diffusivity d = D / D_w. Faces touching a
voxel without tissue (d = 0) carry no flux, which is the no-flux condition at the tissue boundary; the
scheme conserves Σu exactly without reaction (telescoping fluxes).

Time: Strang splitting of reaction and diffusion. Diffusion takes a forward-Euler step, which keeps u in
[0, 1] (a convex combination) while dt·D_w·Σk ≤ 1. The logistic reaction du/dt = ρu(1 − u) is integrated
exactly: u ↦ uE / (1 + u(E − 1)), E = exp(ρ·dt). One step applies u ← R(u + s·Lu) with s = dt·D_w and R the
exact logistic map over the sample's growth factor (a half step at the ends of the run).

Layout: the state is ``u[B, X+2, Y+2, Z+2]`` (one ghost layer that stays 0); face coefficients
``kx[X+1, Y, Z]``, ``ky[X, Y+1, Z]``, ``kz[X, Y, Z+1]`` list every face of the box, the outer ones 0.
The CPU kernel is compiled with numba and runs in parallel over batch × x-planes; the torch kernel runs
the same arithmetic on any device (CUDA).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange


def harmonic_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise harmonic mean 2ab/(a+b), zero where either argument is zero."""
    total = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(total > 0, 2.0 * a * b / np.where(total > 0, total, 1.0), 0.0)
    return mean.astype(np.float32)


def face_coefficients(
    d_box: np.ndarray, spacing_mm: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face coefficients k = H(d_i, d_j)/h² of every face of a box, with zero flux through its walls.

    Args:
        d_box: normalised diffusivity on the box plus a one-voxel rim of the surrounding grid,
            shape ``(X+2, Y+2, Z+2)``; the rim supplies the neighbours of faces on the box walls and must
            hold zeros where the box touches the edge of the grid.
        spacing_mm: voxel edge lengths along the three axes.

    Returns:
        ``kx[X+1, Y, Z]``, ``ky[X, Y+1, Z]``, ``kz[X, Y, Z+1]`` in 1/mm². Faces on the box walls are set to
        zero: the box is closed, and it grows before anything reaches its walls.
    """
    hx, hy, hz = spacing_mm
    kx = harmonic_mean(d_box[:-1, 1:-1, 1:-1], d_box[1:, 1:-1, 1:-1]) / np.float32(hx * hx)
    ky = harmonic_mean(d_box[1:-1, :-1, 1:-1], d_box[1:-1, 1:, 1:-1]) / np.float32(hy * hy)
    kz = harmonic_mean(d_box[1:-1, 1:-1, :-1], d_box[1:-1, 1:-1, 1:]) / np.float32(hz * hz)
    kx[0] = kx[-1] = 0.0
    ky[:, 0] = ky[:, -1] = 0.0
    kz[:, :, 0] = kz[:, :, -1] = 0.0
    return kx, ky, kz


@njit(parallel=True, cache=True, fastmath={"contract", "nnan", "ninf", "nsz"}, nogil=True)
def _step_numba(u, base, out, kx, ky, kz, scale, growth, keep):  # pragma: no cover - compiled
    batch, nx2, ny2, nz2 = u.shape
    nx, ny, nz = nx2 - 2, ny2 - 2, nz2 - 2
    one = np.float32(1.0)
    move = one - keep
    for plane in prange(batch * nx):
        b = plane // nx
        i = plane % nx + 1
        s = scale[b]
        e = growth[b]
        em1 = e - one
        for j in range(1, ny + 1):
            for k in range(1, nz + 1):
                c = u[b, i, j, k]
                flux = (
                    kx[i - 1, j - 1, k - 1] * (u[b, i - 1, j, k] - c)
                    + kx[i, j - 1, k - 1] * (u[b, i + 1, j, k] - c)
                    + ky[i - 1, j - 1, k - 1] * (u[b, i, j - 1, k] - c)
                    + ky[i - 1, j, k - 1] * (u[b, i, j + 1, k] - c)
                    + kz[i - 1, j - 1, k - 1] * (u[b, i, j, k - 1] - c)
                    + kz[i - 1, j - 1, k] * (u[b, i, j, k + 1] - c)
                )
                v = keep * base[b, i, j, k] + move * (c + s * flux)
                out[b, i, j, k] = v * e / (one + v * em1)


def _step_torch(
    u: torch.Tensor,
    base: torch.Tensor,
    out: torch.Tensor,
    kx: torch.Tensor,
    ky: torch.Tensor,
    kz: torch.Tensor,
    scale: torch.Tensor,
    growth: torch.Tensor,
    keep: float,
) -> None:
    c = u[:, 1:-1, 1:-1, 1:-1]
    flux = (
        kx[:-1] * (u[:, :-2, 1:-1, 1:-1] - c)
        + kx[1:] * (u[:, 2:, 1:-1, 1:-1] - c)
        + ky[:, :-1] * (u[:, 1:-1, :-2, 1:-1] - c)
        + ky[:, 1:] * (u[:, 1:-1, 2:, 1:-1] - c)
        + kz[..., :-1] * (u[:, 1:-1, 1:-1, :-2] - c)
        + kz[..., 1:] * (u[:, 1:-1, 1:-1, 2:] - c)
    )
    s = scale.view(-1, 1, 1, 1)
    e = growth.view(-1, 1, 1, 1)
    v = keep * base[:, 1:-1, 1:-1, 1:-1] + (1.0 - keep) * (c + s * flux)
    out[:, 1:-1, 1:-1, 1:-1] = v * e / (1.0 + v * (e - 1.0))


def diffusion_reaction_step(
    u: torch.Tensor,
    out: torch.Tensor,
    coefficients: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    scale: torch.Tensor,
    growth: torch.Tensor,
    backend: str,
    base: torch.Tensor | None = None,
    keep: float = 0.0,
) -> None:
    """Write R(keep·base + (1 − keep)·(u + s·Lu)) into ``out`` (interior only; ghosts must be 0).

    With ``keep = 0`` this is a forward-Euler step followed by the reaction; with ``keep = ½`` and
    ``base`` the state at the start of the step it is the second stage of Heun's method (SSP-RK2,
    Shu & Osher 1988), a convex combination of Euler steps that keeps positivity and the maximum
    principle under the same time-step bound.

    Args:
        u, out: padded states ``[B, X+2, Y+2, Z+2]`` (float32, same device).
        base: padded state combined with weight ``keep`` (ignored when ``keep`` is 0).
        coefficients: ``(kx, ky, kz)`` from :func:`face_coefficients`, as tensors on that device.
        scale: ``[B]``, dt·D_w per sample (0 freezes a sample).
        growth: ``[B]``, E = exp(ρ·Δt) of the reaction sub-step per sample (1: no growth).
        backend: ``"numba"`` (CPU tensors) or ``"torch"`` (any device).
    """
    kx, ky, kz = coefficients
    base = u if base is None else base
    if backend == "numba":
        _step_numba(u.numpy(), base.numpy(), out.numpy(), kx.numpy(), ky.numpy(), kz.numpy(), scale.numpy(),
                    growth.numpy(), np.float32(keep))
    elif backend == "torch":
        _step_torch(u, base, out, kx, ky, kz, scale, growth, keep)
    else:
        raise ValueError(f"unknown backend {backend!r}; expected 'numba' or 'torch'")


def logistic(u: torch.Tensor, growth: torch.Tensor) -> torch.Tensor:
    """Exact solution of du/dt = ρu(1 − u) after time Δt, with ``growth`` = exp(ρΔt) per sample ``[B]``."""
    e = growth.view(-1, *([1] * (u.dim() - 1)))
    return u * e / (1.0 + u * (e - 1.0))


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in the numba kernel and in torch (None: leave as configured)."""
    if threads is not None:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        torch.set_num_threads(threads)
