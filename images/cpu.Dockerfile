# The CPU image: the pipeline's light steps (prepare_data, plan_shards, register), the Helm chart's submitter
# (`htgrpo pipeline submit`) and its optional MLflow server, light evaluation, and the test suite's dependencies.
#
#   docker build -f images/cpu.Dockerfile -t REGISTRY/htgrpo:0.1.0 .        (or: make images)
#
# Base images are pinned by tag here. In production, pin them by digest as your registry reports it
# (python:3.11-slim-bookworm@sha256:...), and refer to the pushed image by digest too (chart: image.digest).
# No credential is baked in: S3, MLflow and database credentials come from Kubernetes secrets at run time.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with torch (CPU build), the project and the pinned dependencies ----------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
# the CPU-only torch wheels (PyPI's default Linux wheel is the multi-GB CUDA build)
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its own index, so that nothing pulls a CUDA build in later
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY images/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY src ./src
# EXTRAS=mlops,dev,hf gives an image that can also run the test suite (mount the repository and run pytest)
ARG EXTRAS=mlops
RUN pip install --constraint /tmp/constraints.txt ".[${EXTRAS}]" psycopg2-binary \
    && pip check

# --- runtime: the venv, the shipped configs and base checkpoint, a non-root user --------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="htgrpo (CPU)" \
      org.opencontainers.image.description="HT-GRPO light pipeline steps, scheduled submitter, MLflow server" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 htgrpo \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/htgrpo --shell /usr/sbin/nologin htgrpo
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# default run parameters name configs/tiny.yaml and checkpoints/base relative to /app
COPY configs ./configs
COPY checkpoints/base ./checkpoints/base
# the checkpoint-store download cache (storage.cache_dir, relative) is the only thing written under /app
RUN mkdir -p /app/.cache && chown htgrpo:htgrpo /app/.cache
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    MALLOC_MMAP_MAX_=0 \
    MALLOC_TRIM_THRESHOLD_=100000000000
USER 10001:10001
# KFP runs lightweight components with `python3 -m kfp.dsl.executor_main` and the chart runs `htgrpo ...`
CMD ["htgrpo", "--help"]
