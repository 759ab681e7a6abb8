# sashimi-jax image for CPU, TPU or NVIDIA GPU hosts.
#
#   docker build -t sashimi-jax .                                   # CPU (default)
#   docker build --build-arg ACCELERATOR=tpu -t sashimi-jax:tpu .     # Cloud TPU VM
#   docker build --build-arg ACCELERATOR=cuda12 -t sashimi-jax:gpu .  # NVIDIA GPU, CUDA 12
#
#   docker run --rm sashimi-jax                                     # prints launch.py --help
#   docker run --rm -v "$PWD/runs:/app/runs" sashimi-jax \
#       python launch.py --config=configs/stereo_temporal.py:tiny --workdir=runs/demo
#   (TPU: docker run --privileged --net=host ...; GPU: docker run --gpus all ...)
#
# jax[cuda12] brings CUDA and cuDNN as pip wheels, so only the host's NVIDIA driver is needed;
# jax[tpu] brings libtpu. The bundled demo music (sashimi_jax/demo_data/*.flac) ships inside the
# installed package.
FROM python:3.11-slim

ARG ACCELERATOR=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# soundfile's wheels bundle libsndfile on common platforms; the system library covers the rest.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .

# The jax extra is installed in the same resolve as the package, so jax and jaxlib/libtpu/the
# CUDA plugin come out at matching versions.
RUN case "${ACCELERATOR}" in \
      cpu) JAX_EXTRA="" ;; \
      tpu) JAX_EXTRA="jax[tpu]" ;; \
      cuda12) JAX_EXTRA="jax[cuda12]" ;; \
      *) echo "ACCELERATOR must be one of cpu, tpu, cuda12; got '${ACCELERATOR}'" >&2; exit 1 ;; \
    esac \
    && pip install . ${JAX_EXTRA:+"${JAX_EXTRA}"} \
    && python -c "import jax, sashimi_jax; print('jax', jax.__version__)"

# The default command trains the tiny demo (absl exits 1 after --help, which would look like a failure).
CMD ["python", "launch.py", "--config=configs/stereo_temporal.py:tiny", "--workdir=/tmp/sashimi_demo"]
