# The CUDA image: the pipeline's GPU steps (rollout, score_rewards, the three training stages, evaluate) and the
# Kubeflow Trainer runtime of `htgrpo train` (infra/components/trainer-runtime).
#
#   docker build -f images/cuda.Dockerfile -t REGISTRY/htgrpo-cuda:0.1.0 .  (or: make images)
#
# The base is NVIDIA's minimal CUDA image (its `base` flavour: the CUDA runtime entry point and the
# NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES settings the container toolkit reads). torch==2.13.0 from
# PyPI brings its own CUDA libraries (cuBLAS, cuDNN, NCCL) as wheels, so a `runtime` or `cudnn` flavour would only
# duplicate them. The node's driver must support the CUDA version of the torch wheel.
# Pinned by tag here; in production pin it by digest as your registry reports it (nvidia/cuda:...@sha256:...), and
# refer to the pushed image by digest too. No credential is baked in.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04

# --- build -------------------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
# empty: PyPI's default Linux torch wheel (a CUDA build); or e.g. a PyTorch index URL for another CUDA version
ARG TORCH_INDEX_URL=
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
WORKDIR /src
COPY images/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY src ./src
ARG EXTRAS=mlops,hf
RUN pip install --constraint /tmp/constraints.txt ".[${EXTRAS}]" \
    && pip check

# --- runtime -----------------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE}
LABEL org.opencontainers.image.title="htgrpo (CUDA)" \
      org.opencontainers.image.description="HT-GRPO rollout, reward scoring, training and evaluation on GPUs" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 htgrpo \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/htgrpo --shell /usr/sbin/nologin htgrpo
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY configs ./configs
COPY checkpoints/base ./checkpoints/base
RUN mkdir -p /app/.cache && chown htgrpo:htgrpo /app/.cache
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NCCL_DEBUG=WARN
USER 10001:10001
CMD ["htgrpo", "--help"]
