# syntax=docker/dockerfile:1
# Vigil images. Targets (README "Run with Docker"):
#   serve    (the default, last stage) the scoring service: the project without extras, onnxruntime-gpu with its
#            CUDA 13 runtime libraries from pip wheels, no torch. On a host without a usable GPU, ONNX Runtime
#            falls back to its CPU provider (VIGIL_PROVIDER=auto); /readyz and vigil_model_info say which is used.
#   trainer  one-shot: trains the demo TVNet into /models unless a bundle is already there (torch, CPU wheel).
# Both run as the unprivileged user vigil (uid 10001), which owns /models, so a fresh named volume mounted
# there is writable by the trainer.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 vigil \
    && useradd --system --uid 10001 --gid vigil --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin vigil \
    && install -d -o vigil -g vigil -m 0755 /models

# The sources pip builds the project from (the .dockerignore keeps everything else out of the context). The
# serving image is built without training/: `vigil` (service/cli.py) finds the training commands only where that
# package is installed, and the service imports nothing of it.
FROM base AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service

FROM source AS source-train
COPY training ./training

# Serving virtualenv: `pip install .` (no extras) plus the CUDA 13 and cuDNN 9 wheels that onnxruntime-gpu
# 1.31 loads (libcublasLt.so.13, libcudart.so.13, libcudnn.so.9, ...); its extras name them. Built here and
# copied, so the serving image holds neither the sources nor pip's build environment.
FROM source AS serve-build
ARG ORT_VERSION=1.31.1
RUN python -m venv /opt/venv \
    && pip install . "onnxruntime-gpu[cuda,cudnn]==${ORT_VERSION}"

# "./[train]" is the path-with-extras form of ".[train]" (hadolint reads the latter as an unpinned package).
FROM source-train AS trainer
ARG TORCH_VERSION=2.13.0
RUN python -m venv /opt/venv \
    && pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" \
    && pip install "./[train]"
ENV HOME=/tmp \
    VIGIL_MODELS_DIR=/models \
    VIGIL_DEMO_TRAIN_DATA=/opt/vigil/data/train.txt.gz
COPY data/smd-machine-1-2/train.txt.gz /opt/vigil/data/train.txt.gz
COPY --chmod=0755 deploy/docker/train-demo.sh /usr/local/bin/vigil-train-demo
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["vigil-train-demo"]

FROM base AS serve
ARG PYTHON_VERSION
COPY --from=serve-build /opt/venv /opt/venv
# The pip CUDA wheels put their libraries under site-packages/nvidia (CUDA 13: one nvidia/cu13/lib folder);
# ONNX Runtime's CUDA provider finds them through LD_LIBRARY_PATH. libcuda.so.1 comes from the host driver
# through the NVIDIA Container Toolkit (driver >= 580 for CUDA 13).
ENV LD_LIBRARY_PATH=/opt/venv/lib/python${PYTHON_VERSION}/site-packages/nvidia/cu13/lib:/opt/venv/lib/python${PYTHON_VERSION}/site-packages/nvidia/cudnn/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    VIGIL_HOST=0.0.0.0 \
    VIGIL_PORT=8000 \
    VIGIL_MODELS_DIR=/models \
    VIGIL_PROVIDER=auto
VOLUME ["/models"]
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('VIGIL_PORT', '8000') + '/healthz', timeout=2)"]
ENTRYPOINT ["vigil"]
CMD ["serve"]
