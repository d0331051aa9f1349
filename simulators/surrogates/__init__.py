"""Learned surrogates of the forward models."""
