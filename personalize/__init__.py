"""The personalization pipeline: I/O, priors, inference engines, outputs and the `personalize` command."""

__version__ = "0.1.0"
