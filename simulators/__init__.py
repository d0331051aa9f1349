"""Forward models of tumour growth on brain anatomy, behind one batched interface."""

from simulators.anatomy import Anatomy

__all__ = ["Anatomy"]
