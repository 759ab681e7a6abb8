"""sashimi-jax: SaShiMi (S4 state-space autoregressive audio) in JAX/Flax, mono and stereo."""

import setuptools

setuptools.setup(
    name="sashimi-jax",
    version="0.1.0",
    description="SaShiMi autoregressive raw-audio model in JAX/Flax with stereo as data.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["sashimi_jax", "sashimi_jax.*"]),
    package_data={"sashimi_jax": ["demo_data/*.flac", "demo_data/*.md", "demo_data/*.json"]},
    # Ranges, not pins: Python 3.11 resolves jax 0.10, 3.12+ resolves newer releases.
    install_requires=[
        "jax>=0.6",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "ml_collections>=1.0",
        "absl-py>=2.1",
        "chex>=0.1.88",
        "numpy>=1.26",
        "scipy>=1.11",
        "soundfile>=0.12.1",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        # tensorflow-datasets + array_record: tests/test_tfds.py builds and reads a local TFDS
        # dataset (no TensorFlow needed).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100",
                 "tensorflow-datasets>=4.9", "array_record>=0.5"],
        "tfds": ["tensorflow-datasets>=4.9", "array_record>=0.5"],
        "tpu": ["jax[tpu]"],
        "demo-render": ["music21>=9"],
        # Viewing the logs: tensorboard --logdir WORKDIR/tensorboard
        "tensorboard": ["tensorboard>=2.15"],
    },
)
