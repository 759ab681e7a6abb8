"""sashimi-jax: SaShiMi autoregressive raw-audio models in JAX/Flax, with stereo as data."""

__version__ = "0.1.0"
