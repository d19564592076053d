# syntax=docker/dockerfile:1.7
# kubegraft images, one Dockerfile with two targets:
#
#   docker build --target operator -t ghcr.io/kubegraft/operator:0.1.0 .
#   docker build --target trainer  -t ghcr.io/kubegraft/trainer:0.1.0 .
#
# `operator` is a slim Python image with only `kubegraft[operator]` (kopf, kubernetes client, no TensorFlow).
# `trainer` is TensorFlow's GPU image of the pinned TensorFlow version with `kubegraft[trainer]` on top; the
# base already holds TensorFlow (with CUDA), so the wheel's `tensorflow-cpu` requirement is left out there.
# Both run as uid 1000 and never as root. Every base image is pinned by version.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG TENSORFLOW_IMAGE=tensorflow/tensorflow:2.21.0-gpu

# --- build: the kubegraft wheel and the requirement lists of each role -------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api/ api/
COPY operator/ operator/
COPY trainer/ trainer/
# The wheel (pure Python) plus two requirement lists read from pyproject.toml, so that the final stages
# install dependencies in their own layer. The trainer list drops tensorflow*: its base image provides it.
RUN pip wheel --no-deps --wheel-dir /dist . \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
open('/dist/requirements-operator.txt', 'w').write('\n'.join(p['dependencies'] + extras['operator']) + '\n'); \
open('/dist/requirements-trainer.txt', 'w').write('\n'.join(p['dependencies'] + [d for d in extras['trainer'] if not d.startswith('tensorflow')]) + '\n')"

# --- operator: kopf operator, no TensorFlow ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="kubegraft-operator" \
      org.opencontainers.image.description="kubegraft operator: reconciles TransferJobs into batch/v1 Jobs" \
      org.opencontainers.image.source="https://github.com/kubegraft/kubegraft" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --gid 1000 kubegraft \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kubegraft
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    pip install --requirement /dist/requirements-operator.txt \
 && pip install --no-deps /dist/kubegraft-*.whl
# 8080: Prometheus metrics (/metrics); 8081: kopf liveness (/healthz).
EXPOSE 8080 8081
USER 1000:1000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=4)"]
ENTRYPOINT ["kubegraft", "operator"]

# --- trainer: TensorFlow GPU image + kubegraft[trainer] -------------------------------------------------
FROM ${TENSORFLOW_IMAGE} AS trainer
LABEL org.opencontainers.image.title="kubegraft-trainer" \
      org.opencontainers.image.description="kubegraft trainer: freeze-then-finetune transfer learning with Keras" \
      org.opencontainers.image.source="https://github.com/kubegraft/kubegraft" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/scratch \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# PIP_BREAK_SYSTEM_PACKAGES: the base installs TensorFlow into the system Python, and so do we (no venv: the
# base's TensorFlow and CUDA libraries must stay importable); Ubuntu 24.04 bases would refuse it otherwise.
# HOME is /scratch, as in the pods the operator renders (read-only root, emptyDirs on /scratch and /tmp):
# Keras keeps downloaded weights in $HOME/.keras there.
# uid 1000 may already exist in the base (Ubuntu's `ubuntu` user): reuse it, else create `kubegraft`.
RUN if ! getent passwd 1000 >/dev/null; then \
      useradd --uid 1000 --user-group --no-create-home --home-dir /scratch --shell /usr/sbin/nologin kubegraft; \
    fi \
 && mkdir -p /scratch \
 && chown 1000:1000 /scratch
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    python3 -m pip install --requirement /dist/requirements-trainer.txt \
 && python3 -m pip install --no-deps /dist/kubegraft-*.whl
# 9090 (named `progress` in the pod): GET /progress and GET /metrics while training.
EXPOSE 9090
WORKDIR /scratch
USER 1000:1000
ENTRYPOINT ["kubegraft"]
CMD ["train"]
