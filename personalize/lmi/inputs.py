"""The network's input: one channel combining the T1Gd and FLAIR masks (Ezhov et al., Learn-Morph-Infer,
Med Image Anal 83:102672, 2023, arXiv:2111.04090):

    input = 0.666 · T1Gd + 0.333 · FLAIR,

the weights of LMI's published data loader. Since T1Gd ⊂ FLAIR for masks thresholded from one density
(u > u_t1gd implies u > u_flair), the input is 0 outside the tumour, 0.333 in oedema and 0.999 in the
enhancing core. The masks are kept as one uint8 code per voxel (bit 0: FLAIR, bit 1: T1Gd), one byte a voxel
on disk and in memory, decoded to float32 when a batch is formed.
"""

from __future__ import annotations

import numpy as np
import torch

T1GD_WEIGHT = 0.666
FLAIR_WEIGHT = 0.333


def encode_masks(t1gd: np.ndarray | torch.Tensor, flair: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 codes ``flair + 2·t1gd`` of two binary masks of one shape (values > 0.5 are tumour)."""
    t1gd, flair = (np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m) for m in (t1gd, flair))
    if t1gd.shape != flair.shape:
        raise ValueError(f"T1Gd and FLAIR masks must share a shape, got {t1gd.shape} and {flair.shape}")
    return ((flair > 0.5).astype(np.uint8) | ((t1gd > 0.5).astype(np.uint8) << 1)).astype(np.uint8)


def network_input(codes: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float32 ``0.666·T1Gd + 0.333·FLAIR`` of :func:`encode_masks` codes, same shape, on the codes' device."""
    codes = torch.as_tensor(codes)
    if codes.dtype != torch.uint8:
        raise ValueError(f"mask codes must be uint8 (encode_masks), got {codes.dtype}")
    t1gd = ((codes >> 1) & 1).to(torch.float32)
    flair = (codes & 1).to(torch.float32)
    return T1GD_WEIGHT * t1gd + FLAIR_WEIGHT * flair
