# SageMaker-compatible DeepAR: `docker run IMAGE train` / `docker run IMAGE serve`.
#   docker build --network host -t sagemaker-deepar .
# Build arguments:
#   BASE_IMAGE       Debian bookworm (python3 is 3.11); docker/build_base_image.sh makes it offline.
#   TORCH_INDEX_URL  extra index with torch's CPU build (PyPI's Linux torch is the multi-GB CUDA build);
#                    empty to use only docker/wheels/ and PyPI.
#   WHEELS_DIR       folder in the build context (un-ignore it in .dockerignore) with wheels to install first (air-gapped builds;
#                    CI: the CPU torch wheel); default docker/wheels/, which may stay empty
#   CA_DIR           folder in the build context with extra CA certificates (*.crt) to trust, for
#                    TLS-intercepting proxies; default docker/ca/, which may stay empty
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELS_DIR=docker/wheels
ARG CA_DIR=docker/ca
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

COPY ${CA_DIR}/ /usr/local/share/ca-certificates/extra/
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates libgomp1 libquadmath0 nginx \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# Dependencies first (cached across code changes): runtime pins from pyproject, versions from the lock.
COPY pyproject.toml requirements.lock /tmp/build/
COPY ${WHEELS_DIR}/ /tmp/wheels/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/build/runtime.txt \
 && pip install --find-links /tmp/wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -c /tmp/build/requirements.lock -r /tmp/build/runtime.txt \
 && rm -rf /tmp/wheels /tmp/build

# Code lives outside /opt/ml, which SageMaker mounts over.
COPY pyproject.toml README.md /opt/program/
COPY sagemaker_deepar /opt/program/sagemaker_deepar
# Byte-compile now: at run time nothing is written (PYTHONDONTWRITEBYTECODE) and cold starts stay short.
# A few of torch's test files use newer syntax and do not compile; they are never imported.
RUN pip install --no-deps /opt/program \
 && python -m compileall -q /opt/program/sagemaker_deepar \
 && (python -m compileall -q -j 0 /opt/venv/lib > /dev/null || true)
COPY container /opt/program/container
WORKDIR /opt/program
ENTRYPOINT ["/opt/program/container/entrypoint"]
