"""Learn-Morph-Infer (Ezhov et al., Medical Image Analysis 83:102672, 2023, arXiv:2111.04090): a network that
maps a tumour's T1Gd and FLAIR masks in atlas space to its growth and seed in one pass.

- :mod:`personalize.lmi.parameters`: μ₁ = √(D_w·T), μ₂ = √(ρ·T) and back at a fixed front speed; the scaling of
  (μ₁, μ₂, x, y, z) to [−1, 1].
- :mod:`personalize.lmi.inputs`: the network input 0.666·T1Gd + 0.333·FLAIR, stored as one byte a voxel.
- :mod:`personalize.lmi.dataset`: simulated training data in resumable, reproducible shards
  (``python -m personalize.lmi.dataset``).
- :mod:`personalize.lmi.network`: the 3D ResNet.
- :mod:`personalize.lmi.train`: training with checkpoints and early stopping (``python -m personalize.lmi.train``).
- :mod:`personalize.lmi.metrics`: test-set errors of the outputs and of the densities they imply.
- :mod:`personalize.lmi.weights`: weights with a JSON record and a SHA-256 check on loading.
"""
