"""Training of the geometry-aware surrogate (:mod:`simulators.surrogates.geometry_aware`; Ezhov et al., IEEE TMI
2022, arXiv:2009.04240).

- :mod:`personalize.surrogate.anatomies`: the anatomies simulated in, each with its role (train, validation, test).
- :mod:`personalize.surrogate.dataset`: solver runs cut to the cube at the seed, in resumable, reproducible shards
  (``python -m personalize.surrogate.dataset``).
"""
