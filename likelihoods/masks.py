"""Thresholded Bernoulli likelihood of a binary tumour mask (T1Gd, FLAIR) given a simulated density.

A voxel with simulated density u is seen as tumour with detection probability α(u), and a mask y is a
product of independent Bernoulli draws (Lipkova et al., IEEE TMI 2019; Lipkova, PhD thesis, Eq. 6):

    log p(y | u) = Σ_i  y_i·log α(u_i) + (1 − y_i)·log(1 − α(u_i)).

Two forms of α are available, selected by ``convention``; both write α = 0.5 + 0.5·sign(d)·(1 − e^(−w)),
d = u − u_c, and differ only in the exponent w:

- ``"thesis"`` (Eq. 6): w = d² / σ_α². α(u_c) = 0.5, α rises smoothly through the threshold, α → 1 far
  above and → 0 far below it; σ_α sets how sharp the mask's edge is.
- ``"gliomasolver"``: GliomaSolver's published code (``slitvinov/GliomaSolver``, ``lib_c.c``, function
  ``TiLogLikelihood``, called by ``brain_likelihood``): ω² = 1 where d > 0, else d², and w = ω² / slope.
  Above the threshold α is the constant 0.5 + 0.5·(1 − e^(−1/slope)) (≈ 0.697 at its default slope 2),
  below it α falls to 0.5·e^(−d²/slope). Here ``slope = sigma_alpha²``, so GliomaSolver's slope 2 is
  ``sigma_alpha = √2``. Its defaults: u_c 0.7 for T1Gd, 0.25 for FLAIR, slope 2 (``fun.py``,
  ``likelihood/main.c``). It counts a voxel positive only where the mask equals 1 (``data[i] == 1``); the
  masks here are binary, so that is every positive voxel. Because α above u_c does not grow with the
  distance from u_c while background voxels gain from any larger u_c, its u_c is not identifiable from a
  mask at slope 2: on a smooth synthetic tumour with true u_c 0.25 the likelihood over u_c peaks at the
  top of the grid, 0.95 (``tests/test_likelihoods.py``); GliomaSolver fixes u_c. Infer thresholds under ``"thesis"``.

Numerics. With s = log(0.5) − w, the side of α that is at most 0.5 is e^s and the other side is
1 − e^s; log(1 − e^s) = log1p(−e^s) is accurate because e^s ≤ 0.5. A voxel contributes s where the mask
disagrees with the side of the threshold its density is on (y = 1 with d ≤ 0, or y = 0 with d > 0), and
log1p(−e^s) where it agrees. No log of a rounded α is ever taken, so the result is finite and accurate in
float32 for any d; at d = 0 both sides give log 0.5.

Clamp. α is kept in [ε, 1 − ε] (``clamp=ε``, default :data:`DEFAULT_CLAMP` = 1e-4), i.e. s ≥ log ε. Without
it a single voxel mislabelled by the segmentation, or a density a few σ_α on the wrong side, costs −d²/σ_α²,
which for small σ_α outweighs every correctly explained voxel and makes the posterior chase segmentation
noise. With ε = 1e-4 one such voxel costs at most log ε ≈ −9.2 nats: the clamp binds only where the
unclamped α would be below 1e-4, i.e. where |d| > σ_α·√log(0.5/ε) ≈ 2.9·σ_α, so the likelihood keeps its
full shape (and gradient) within about 3σ_α of the threshold, where the information about u_c and σ_α
lies, while a correctly explained voxel still costs only log(1 − ε) ≈ −1e-4. ε = 1e-4 is also far above
float32's spacing near 1 (6e-8), so α = 1 − ε is represented distinctly from 1.
``clamp=0`` gives the unclamped formula. Under ``"gliomasolver"`` with u in [0, 1], w ≤ 1/slope,
so the clamp binds only for slope < 1/log(0.5/ε) ≈ 0.12 (never at its default slope 2).
"""

from __future__ import annotations

import math

import torch

CONVENTIONS = ("thesis", "gliomasolver")
DEFAULT_CLAMP = 1e-4
_LOG_HALF = math.log(0.5)


def check_convention(convention: str) -> None:
    """Raise ValueError unless ``convention`` is one of :data:`CONVENTIONS`."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; expected one of {CONVENTIONS}")


def check_clamp(clamp: float) -> None:
    """Raise ValueError unless 0 ≤ ``clamp`` < 0.5 (α is kept in [clamp, 1 − clamp])."""
    if not 0.0 <= clamp < 0.5:
        raise ValueError(f"clamp must lie in [0, 0.5), got {clamp}")


def per_sample(value: torch.Tensor | float, density: torch.Tensor, name: str) -> torch.Tensor:
    """``value`` (a number, a 0-d tensor or a ``Tensor[B]``) as a ``Tensor[B, 1, 1, 1]`` on the density's
    device and dtype, broadcastable against ``density`` of shape ``(B, X, Y, Z)``."""
    batch = density.shape[0]
    tensor = torch.as_tensor(value, dtype=density.dtype, device=density.device)
    if tensor.ndim == 0:
        tensor = tensor.expand(batch)
    if tensor.shape != (batch,):
        raise ValueError(f"{name} must be a number or a tensor of shape ({batch},), got {tuple(tensor.shape)}")
    return tensor.view(batch, *([1] * (density.ndim - 1)))


def check_positive(value: torch.Tensor, name: str) -> None:
    """Raise ValueError unless every entry of ``value`` is finite and > 0."""
    if not bool(torch.all(torch.isfinite(value) & (value > 0))):
        raise ValueError(f"{name} must be finite and > 0, got {value.flatten().tolist()}")


def check_density(density: torch.Tensor) -> None:
    """Raise ValueError unless ``density`` is a floating ``Tensor[B, X, Y, Z]``."""
    if not isinstance(density, torch.Tensor) or density.ndim != 4 or not density.is_floating_point():
        shape = tuple(density.shape) if isinstance(density, torch.Tensor) else type(density).__name__
        raise ValueError(f"density must be a floating tensor of shape (B, X, Y, Z), got {shape}")


def binary_mask(mask: torch.Tensor, grid: tuple[int, ...], name: str) -> torch.Tensor:
    """``mask`` as a bool tensor, after checking it is binary (0/1) and has shape ``grid`` (X, Y, Z)."""
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) != tuple(grid):
        raise ValueError(f"shape mismatch: {name} mask has shape {tuple(mask.shape)}, density grid is {tuple(grid)}")
    if mask.dtype == torch.bool:
        return mask
    if not bool(torch.all((mask == 0) | (mask == 1))):
        raise ValueError(f"{name} mask must be binary (0/1); map segmentation labels to 0/1 first")
    return mask == 1


def _log_minor_side(
    diff: torch.Tensor, sigma_alpha: torch.Tensor, convention: str, clamp: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """From ``diff`` = u − u_c (consumed: overwritten in place), return ``(s, above)``: s = log of the side
    of α that is ≤ 0.5, i.e. max(log 0.5 − w, log clamp), and ``above`` = d > 0 (α > 0.5 there)."""
    above = diff > 0
    omega2 = diff.square_()
    if convention == "gliomasolver":
        omega2.masked_fill_(above, 1.0)
    s = omega2.div_(sigma_alpha.square()).neg_().add_(_LOG_HALF)
    if clamp > 0:
        s.clamp_min_(math.log(clamp))
    return s, above


def _log_minor_side_checked(
    density: torch.Tensor,
    u_c: torch.Tensor | float,
    sigma_alpha: torch.Tensor | float,
    convention: str,
    clamp: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_log_minor_side` of ``density − u_c`` after checking every argument."""
    check_convention(convention)
    check_clamp(clamp)
    check_density(density)
    u_c = per_sample(u_c, density, "u_c")
    sigma_alpha = per_sample(sigma_alpha, density, "sigma_alpha")
    check_positive(sigma_alpha, "sigma_alpha")
    return _log_minor_side(density - u_c, sigma_alpha, convention, clamp)


def detection_probability(
    density: torch.Tensor,
    u_c: torch.Tensor | float,
    sigma_alpha: torch.Tensor | float,
    *,
    convention: str = "thesis",
    clamp: float = DEFAULT_CLAMP,
) -> torch.Tensor:
    """α(u) of Lipkova's thesis Eq. 6 (or GliomaSolver's ``TiLogLikelihood``), clamped to [clamp, 1 − clamp].

    Args:
        density: ``Tensor[B, X, Y, Z]`` simulated tumour cell density in [0, 1].
        u_c: detection threshold per sample (``Tensor[B]`` or a number).
        sigma_alpha: width σ_α per sample (> 0); under ``"gliomasolver"`` slope = σ_α².
        convention: ``"thesis"`` or ``"gliomasolver"`` (see the module docstring).
        clamp: ε, α is kept in [ε, 1 − ε].

    Returns:
        ``Tensor[B, X, Y, Z]`` of α.
    """
    s, above = _log_minor_side_checked(density, u_c, sigma_alpha, convention, clamp)
    minor = s.exp_()
    return torch.where(above, 1.0 - minor, minor)


def mask_log_likelihood(
    density: torch.Tensor,
    mask: torch.Tensor,
    u_c: torch.Tensor | float,
    sigma_alpha: torch.Tensor | float,
    *,
    convention: str = "thesis",
    clamp: float = DEFAULT_CLAMP,
) -> torch.Tensor:
    """log p(mask | density) = Σ_i y_i·log α(u_i) + (1 − y_i)·log(1 − α(u_i)) (thesis Eq. 6; GliomaSolver
    ``lib_c.c: TiLogLikelihood``), computed stably from log 0.5 − w (see the module docstring).

    Args:
        density: ``Tensor[B, X, Y, Z]`` simulated tumour cell density in [0, 1].
        mask: ``Tensor[X, Y, Z]``, bool or 0/1: the voxels seen as tumour.
        u_c: detection threshold per sample (``Tensor[B]`` or a number).
        sigma_alpha: width σ_α per sample (> 0); under ``"gliomasolver"`` slope = σ_α².
        convention: ``"thesis"`` or ``"gliomasolver"``.
        clamp: ε, α is kept in [ε, 1 − ε]; 0 for none.

    Returns:
        ``Tensor[B]`` of log-likelihoods (nats), on ``density.device``.

    Memory: two float temporaries the size of ``density`` and one bool one.
    """
    positive = binary_mask(mask, density.shape[1:], "mask").to(density.device)
    s, disagree = _log_minor_side_checked(density, u_c, sigma_alpha, convention, clamp)
    disagree.logical_xor_(positive)  # mask says the opposite of the side of u_c the density is on
    major = torch.exp(s).neg_().log1p_()  # log of the side of α that is ≥ 0.5
    major.masked_fill_(disagree, 0.0)
    s.masked_fill_(disagree.logical_not_(), 0.0)
    dims = tuple(range(1, density.ndim))
    return major.sum(dim=dims) + s.sum(dim=dims)
