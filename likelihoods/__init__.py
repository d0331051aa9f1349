"""How a simulated tumour density explains an observation (masks, PET).

- :mod:`likelihoods.masks`: thresholded Bernoulli likelihood of a binary mask (T1Gd, FLAIR).
- :mod:`likelihoods.pet`: Gaussian likelihood of a PET map.
- :mod:`likelihoods.joint`: their sum over the scans present, with named imaging parameters.
"""

from likelihoods.joint import (
    GLIOMASOLVER_DEFAULTS,
    IMAGING_PARAMETER_NAMES,
    ImageObservation,
    JointLikelihood,
)
from likelihoods.masks import CONVENTIONS, DEFAULT_CLAMP, detection_probability, mask_log_likelihood
from likelihoods.pet import pet_log_likelihood

__all__ = [
    "CONVENTIONS",
    "DEFAULT_CLAMP",
    "GLIOMASOLVER_DEFAULTS",
    "IMAGING_PARAMETER_NAMES",
    "ImageObservation",
    "JointLikelihood",
    "detection_probability",
    "mask_log_likelihood",
    "pet_log_likelihood",
]
