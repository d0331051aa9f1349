"""The one interface every forward model satisfies, numerical or learned."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from simulators.anatomy import Anatomy


@runtime_checkable
class Simulator(Protocol):
    """A batched, deterministic forward model of tumour cell density on an anatomy.

    ``simulate(params, anatomy)`` takes ``params``, a ``torch.Tensor[B, P]`` in physical units whose
    columns follow ``parameter_names``, and returns a ``torch.Tensor[B, *anatomy.shape]`` of densities in
    [0, 1] on the device of ``params``.
    """

    parameter_names: tuple[str, ...]

    def simulate(self, params: torch.Tensor, anatomy: Anatomy) -> torch.Tensor: ...
