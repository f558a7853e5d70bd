# SageMaker-compatible DeepAR: `docker run IMAGE train` / `docker run IMAGE serve`.
#   docker build --network host -t sagemaker-deepar .        (works with and without BuildKit)
# Two stages: `venv` installs and trims the Python stack (pip, wheels, binutils stay there); the
# runtime image copies the result in one layer per heavy dependency, so nothing it ships is dead.
# Build arguments:
#   BASE_IMAGE       Debian bookworm (python3 is 3.11); docker/build_base_image.sh makes it offline.
#   TORCH_INDEX_URL  extra index with torch's CPU build (PyPI's Linux torch is the multi-GB CUDA build);
#                    empty to use only docker/wheels/ and PyPI.
#   WHEELS_DIR       folder in the build context (un-ignore it in .dockerignore) with wheels to install first (air-gapped builds;
#                    CI: the CPU torch wheel); default docker/wheels/, which may stay empty
#   CA_DIR           folder in the build context with extra CA certificates (*.crt) the venv stage trusts
#                    (pip behind a TLS-intercepting proxy); default docker/ca/, which may stay empty.
#                    The runtime stage never copies them.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS venv
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELS_DIR=docker/wheels
ARG CA_DIR=docker/ca
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
COPY ${CA_DIR}/ /usr/local/share/ca-certificates/extra/
# binutils: strip. libgomp1/libquadmath0: torch and mxnet load them (the trim step imports both).
# python3-distutils: gluonts.mx imports distutils, which setuptools' shim provided (setuptools is not shipped).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-distutils ca-certificates binutils libgomp1 libquadmath0 \
 && update-ca-certificates \
 && python3 -m venv /opt/venv
# Dependencies first (cached across code changes): runtime pins from pyproject, versions from the lock.
COPY pyproject.toml requirements.lock /tmp/build/
COPY ${WHEELS_DIR}/ /tmp/wheels/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/build/runtime.txt \
 && pip install --find-links /tmp/wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -c /tmp/build/requirements.lock -r /tmp/build/runtime.txt
COPY docker/slim_venv.sh docker/split_venv.py /tmp/build/
# The code is found through a .pth (no pip in the runtime image); it lives outside /opt/ml, which SageMaker mounts over.
RUN /tmp/build/slim_venv.sh /opt/venv \
 && echo /opt/program > /opt/venv/lib/python3.11/site-packages/sagemaker_deepar.pth \
 && python /tmp/build/split_venv.py /opt/venv /layers \
        torch=torch mxnet=mxnet sympy=sympy,mpmath,networkx pyarrow=pyarrow scipy=scipy pandas=pandas numpy=numpy

FROM ${BASE_IMAGE}
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
# Multi-model endpoints (CreateModel Mode=MultiModel): SageMaker then sets SAGEMAKER_MULTI_MODEL=true (README, "Multi-model endpoints").
LABEL com.amazonaws.sagemaker.capabilities.multi-models=true
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# No CA_DIR here: the build host's extra CA (a TLS-intercepting proxy's) is for pip in the venv stage only;
# the shipped image trusts Debian's CA set and nothing else (#23, tests/test_image.py). apt reads http://.
COPY docker/dpkg-nodoc.cfg /etc/dpkg/dpkg.cfg.d/nodoc
# >>> Runtime system packages: the one apt-get line of the runtime image (add packages here). <<<
# libgomp1/libquadmath0: torch, mxnet. python3-distutils: gluonts.mx.
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-distutils ca-certificates libgomp1 libquadmath0 nginx \
 && update-ca-certificates && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log
# One layer per heavy dependency (see `docker history`, README "Docker image"); the rest layer holds
# the venv itself and the small distributions (gluonts, lightning, flask, gunicorn, ...).
COPY --from=venv /layers/torch/ /
COPY --from=venv /layers/mxnet/ /
COPY --from=venv /layers/sympy/ /
COPY --from=venv /layers/pyarrow/ /
COPY --from=venv /layers/scipy/ /
COPY --from=venv /layers/pandas/ /
COPY --from=venv /layers/numpy/ /
COPY --from=venv /layers/rest/ /
# Byte-compiled now: at run time nothing is written (PYTHONDONTWRITEBYTECODE) and cold starts stay short.
COPY sagemaker_deepar /opt/program/sagemaker_deepar
RUN python -m compileall -q /opt/program/sagemaker_deepar
COPY container /opt/program/container
WORKDIR /opt/program
ENTRYPOINT ["/opt/program/container/entrypoint"]
