"""Fast solves of five-point linear systems (the 2D quasi-steady equations of :mod:`simulators.microenvironment`).

A matrix whose non-zeros lie on the diagonals at offsets 0, ±1 and ±w (every five-point operator on a grid of
rows of w cells, in C order) is stored as its five bands and solved by a Krylov iteration — conjugate gradients
(Hestenes & Stiefel 1952) for a symmetric matrix, BiCGSTAB (van der Vorst 1992) otherwise — preconditioned by a
modified incomplete LU factorisation (MILU: ILU(0) with the dropped fill moved onto the diagonal, which keeps
column sums; Gustafsson 1978), all in compiled loops without BLAS (whose spinning threads slowed a loaded
machine 30×). Measurements and the alternatives tried are in :mod:`simulators.microenvironment`'s Numerics.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from scipy import sparse

_MAX_ITERATIONS = 2000
_RESTARTS = 3


def five_bands(matrix: sparse.spmatrix) -> tuple[np.ndarray, int] | None:
    """``(bands [5, N], w)``: the diagonals of ``matrix`` at offsets −w, −1, 0, 1, w (``bands[k][i]`` is the
    entry of row i; zero where the column falls outside), or None where a non-zero lies elsewhere."""
    csr = sparse.csr_matrix(matrix)
    bands = np.zeros((5, csr.shape[0]))
    width = _fill_bands(csr.indptr, csr.indices, csr.data.astype(np.float64, copy=False), bands)
    return (bands, width) if width > 0 else None


def is_m_matrix(bands: np.ndarray, width: int) -> bool:
    """Whether the five-diagonal matrix is a Z-matrix (off-diagonals ≤ 0) with non-negative column sums (to
    rounding): then, being non-singular, it is an M-matrix and its inverse is non-negative."""
    if np.any(bands[[0, 1, 3, 4]] > 0):
        return False
    columns = bands[2].copy()
    columns[:-1] += bands[1][1:]
    columns[1:] += bands[3][:-1]
    columns[:-width] += bands[0][width:]
    columns[width:] += bands[4][:-width]
    return bool(np.all(columns >= -1e-12 * np.abs(bands[2])))


def krylov_solve(bands: np.ndarray, width: int, source: np.ndarray, tolerance: float) -> np.ndarray | None:
    """u with ‖source − A·u‖ ≤ ``tolerance``·‖source‖ for the five-diagonal matrix A = ``bands`` (width ``width``),
    from u = 0: conjugate gradients where A is symmetric, BiCGSTAB otherwise, both preconditioned by the modified
    incomplete LU factorisation; None where it fails (a non-positive pivot, or no convergence)."""
    if not np.any(source):
        return np.zeros_like(source)
    lower, inverse, upper = _milu(*bands, width)
    if not np.all(np.isfinite(inverse)):
        return None
    symmetric = (np.array_equal(bands[1][1:], bands[3][:-1])
                 and np.array_equal(bands[0][width:], bands[4][:-width]))
    iterate = _conjugate_gradients if symmetric else _bicgstab
    target = tolerance * np.linalg.norm(source)
    u, product = np.zeros_like(source), np.empty_like(source)
    for _ in range(_RESTARTS):  # the recursive residual drifts from the true one: check it, restart if needed
        if iterate(*bands, width, lower, inverse, upper, source, u, target, _MAX_ITERATIONS) < 0:
            return None
        _multiply(*bands, width, u, product)
        if np.linalg.norm(source - product) <= target:
            return u
    return None


_NUMBA = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")  # no exceptions: −1 on failure
_FAST = dict(_NUMBA, fastmath={"contract", "reassoc"})  # fused multiply-adds, vectorised sums


@njit(**_NUMBA)
def _fill_bands(indptr, indices, data, bands):  # pragma: no cover - compiled
    """Adds the entries of a CSR matrix into ``bands`` (see :func:`_five_bands`); returns w, or 0 where a
    non-zero lies off the five diagonals."""
    size = bands.shape[1]
    width = 0
    for row in range(size):
        for k in range(indptr[row], indptr[row + 1]):
            offset = abs(indices[k] - row)
            if offset > 1 and data[k] != 0 and offset > width:
                width = offset
    if width == 0:
        width = size
    for row in range(size):
        for k in range(indptr[row], indptr[row + 1]):
            offset = indices[k] - row
            if offset == -width:
                bands[0, row] += data[k]
            elif -1 <= offset <= 1:
                bands[offset + 2, row] += data[k]
            elif offset == width:
                bands[4, row] += data[k]
            elif data[k] != 0:
                return 0
    return width


@njit(**_NUMBA)
def _milu(s, w, c, e, n, width, relax=1.0):  # pragma: no cover - compiled
    """M = (D + L) D⁻¹ (D + U) for the five-diagonal matrix (s, w, c, e, n at offsets −width, −1, 0, 1, width;
    L and U its strict lower and upper parts), with D such that M and the matrix have equal column sums (the fill
    that ILU(0) drops goes onto the diagonal; ``relax`` = 0 would be ILU(0)). Returns the factors as the
    preconditioner applies them: (w/D_{i−1}, s/D_{i−width}) stacked, 1/D, and (e/D, n/D) stacked; 1/D is NaN
    at a non-positive pivot."""
    size = c.size
    inverse = np.empty(size)
    for i in range(size):
        pivot = c[i]
        if i >= 1:
            below = s[i + width - 1] if i + width - 1 < size else 0.0
            pivot -= e[i - 1] * (w[i] + relax * below) * inverse[i - 1]
        if i >= width:
            pivot -= n[i - width] * (s[i] + relax * w[i - width + 1]) * inverse[i - width]
        if not pivot > 0:
            inverse[:] = np.nan
            break
        inverse[i] = 1.0 / pivot
    lower = np.zeros((2, size))
    upper = np.zeros((2, size))
    for i in range(size):
        if i >= 1:
            lower[0, i] = w[i] * inverse[i - 1]
        if i >= width:
            lower[1, i] = s[i] * inverse[i - width]
        upper[0, i] = e[i] * inverse[i]
        upper[1, i] = n[i] * inverse[i]
    return lower, inverse, upper


@njit(**_FAST)
def _precondition(width, lower, inverse, upper, r, z):  # pragma: no cover - compiled
    """z = M⁻¹ r: forward substitution with I + L D⁻¹, then backward with D + U. The running value stays in a
    register (the recurrences are latency-bound), and the loops index views from 0 (numba's handling of
    negative indices, such as i − width, would cost a branch per access)."""
    size = r.size
    lw, ls, ue, un = lower[0], lower[1], upper[0], upper[1]
    head = min(width, size)
    previous = r[0]
    z[0] = previous
    for i in range(1, head):
        previous = r[i] - lw[i] * previous
        z[i] = previous
    far, near = z[:size - width], z[width:]
    r_near, lw_near, ls_near = r[width:], lw[width:], ls[width:]
    for j in range(size - width):
        previous = r_near[j] - ls_near[j] * far[j] - lw_near[j] * previous
        near[j] = previous
    previous = z[size - 1] * inverse[size - 1]
    z[size - 1] = previous
    for i in range(size - 2, size - head - 1, -1):
        previous = z[i] * inverse[i] - ue[i] * previous
        z[i] = previous
    for j in range(size - width - 1, -1, -1):
        previous = far[j] * inverse[j] - un[j] * near[j] - ue[j] * previous
        far[j] = previous


@njit(**_FAST)
def _multiply(s, w, c, e, n, width, x, y):  # pragma: no cover - compiled
    """y = matrix · x (the rows with all five neighbours in one loop over views, which vectorises)."""
    size = x.size
    for i in range(min(width, size)):
        y[i] = _row(s, w, c, e, n, width, x, i)
    for i in range(max(size - width, width), size):
        y[i] = _row(s, w, c, e, n, width, x, i)
    if size <= 2 * width:
        return
    end = size - width
    y_, c_, w_, e_, s_, n_ = y[width:end], c[width:end], w[width:end], e[width:end], s[width:end], n[width:end]
    x_, x_south, x_north = x[width:end], x[:end - width], x[2 * width:]
    x_west, x_east = x[width - 1:end - 1], x[width + 1:end + 1]
    for j in range(end - width):
        y_[j] = (c_[j] * x_[j] + w_[j] * x_west[j] + e_[j] * x_east[j] + s_[j] * x_south[j]
                 + n_[j] * x_north[j])


@njit(**_FAST)
def _row(s, w, c, e, n, width, x, i):  # pragma: no cover - compiled
    """Row i of matrix · x, wherever it lies."""
    size = x.size
    value = c[i] * x[i]
    if i >= 1:
        value += w[i] * x[i - 1]
    if i + 1 < size:
        value += e[i] * x[i + 1]
    if i >= width:
        value += s[i] * x[i - width]
    if i + width < size:
        value += n[i] * x[i + width]
    return value


@njit(**_FAST)
def _dot(a, b):  # pragma: no cover - compiled
    total = 0.0
    for i in range(a.size):
        total += a[i] * b[i]
    return total


@njit(**_NUMBA)
def _conjugate_gradients(s, w, c, e, n, width, lower, inverse, upper, b, x, target,
                         iterations):  # pragma: no cover - compiled
    """Preconditioned conjugate gradients on x in place until ‖b − Ax‖ ≤ target (the recursive residual).
    Returns the iterations taken, or −1 at a breakdown (the matrix or the preconditioner not positive definite,
    a non-finite value) or without convergence."""
    size = b.size
    r, z, p, q = np.empty(size), np.empty(size), np.empty(size), np.empty(size)
    _multiply(s, w, c, e, n, width, x, q)
    for i in range(size):
        r[i] = b[i] - q[i]
    _precondition(width, lower, inverse, upper, r, z)
    p[:] = z
    rz = _dot(r, z)
    for iteration in range(iterations):
        rr = _dot(r, r)
        if rr <= target * target:
            return iteration
        if not (rz > 0 and np.isfinite(rr)):
            return -1
        _multiply(s, w, c, e, n, width, p, q)
        pq = _dot(p, q)
        if not pq > 0:
            return -1
        alpha = rz / pq
        for i in range(size):
            x[i] += alpha * p[i]
            r[i] -= alpha * q[i]
        _precondition(width, lower, inverse, upper, r, z)
        rz, previous = _dot(r, z), rz
        beta = rz / previous
        for i in range(size):
            p[i] = z[i] + beta * p[i]
    return -1


@njit(**_NUMBA)
def _bicgstab(s, w, c, e, n, width, lower, inverse, upper, b, x, target, iterations):  # pragma: no cover - compiled
    """Right-preconditioned BiCGSTAB (van der Vorst 1992) on x in place until ‖b − Ax‖ ≤ target (the recursive
    residual). Returns the iterations taken, or −1 at a breakdown (a zero denominator, a non-finite value) or
    without convergence."""
    size = b.size
    r, v, p = np.empty(size), np.zeros(size), np.zeros(size)
    p_hat, s_hat, t = np.empty(size), np.empty(size), np.empty(size)
    _multiply(s, w, c, e, n, width, x, t)
    for i in range(size):
        r[i] = b[i] - t[i]
    shadow = r.copy()
    rho = alpha = omega = 1.0
    for iteration in range(iterations):
        rr = _dot(r, r)
        if rr <= target * target:
            return iteration
        rho_next = _dot(shadow, r)
        if rho_next == 0.0 or omega == 0.0 or not np.isfinite(rr):
            return -1
        beta = (rho_next / rho) * (alpha / omega)
        rho = rho_next
        for i in range(size):
            p[i] = r[i] + beta * (p[i] - omega * v[i])
        _precondition(width, lower, inverse, upper, p, p_hat)
        _multiply(s, w, c, e, n, width, p_hat, v)
        shadow_v = _dot(shadow, v)
        if shadow_v == 0.0:
            return -1
        alpha = rho / shadow_v
        for i in range(size):
            r[i] -= alpha * v[i]
            x[i] += alpha * p_hat[i]
        if _dot(r, r) <= target * target:
            return iteration + 1
        _precondition(width, lower, inverse, upper, r, s_hat)
        _multiply(s, w, c, e, n, width, s_hat, t)
        tt = _dot(t, t)
        if tt == 0.0:
            return -1
        omega = _dot(t, r) / tt
        for i in range(size):
            x[i] += omega * s_hat[i]
            r[i] -= omega * t[i]
    return -1
