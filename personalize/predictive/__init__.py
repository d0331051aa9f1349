"""What a fitted model predicts about the tumour.

- :mod:`personalize.predictive.maps`: posterior-predictive maps, the mean density and the probability of
  exceeding a level in every voxel.
- :mod:`personalize.predictive.response`: tumour response from masks over time, by RECIST 1.1 and RANO.
- :mod:`personalize.predictive.schedules`: a fitted virtual patient's tumour area and response class under
  candidate treatment schedules.
"""

from personalize.predictive.maps import DEFAULT_THRESHOLDS, check_thresholds, posterior_predictive

__all__ = ["DEFAULT_THRESHOLDS", "check_thresholds", "posterior_predictive"]
