# petseg images, two targets from the same code (docs/container.md):
#   inference  (default, last stage) grand-challenge algorithm: `python process.py`
#              reads /input, writes /output; weights baked in from weights/, or read
#              from /opt/ml/model when the platform mounts a model there.
#   train      the `petseg` command line (training, evaluation, prediction).
# Build with ./build.sh (tags with the version from pyproject.toml).
#
# BASE_IMAGE: official PyTorch runtime image with requirements.txt's torch (2.13.0), pinned
# by digest; CUDA 12.6 runs on drivers from R525 on (CUDA 13 needs R580+). It ships
# Ubuntu 24.04's Python 3.12, not the 3.11 of the local environment (no 2.13.0 image has
# 3.11); every pin in requirements.txt has 3.12 wheels. `./build.sh --cpu` swaps in a
# local Debian bookworm (Python 3.11) base where no registry is reachable; nothing else
# in this file changes.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime@sha256:6acf597eeb8e376a96580dde4952f37cc017fef732bb40bfc73f28f25e3f64b4

# ---- base: environment and the unprivileged user ----------------------------------------
FROM ${BASE_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PYTHONPATH=/opt/petseg \
    PATH=/opt/petseg/bin:/opt/venv/bin:$PATH
# uid/gid 10001 clash with no account of the base images. /output is created owned by
# the user, so a fresh named volume mounted there is writable.
# USER/LOGNAME: `docker run --user UID` gives a uid without an account, whose name
# getpass.getuser() (MONAI) then cannot find; petseg also replaces an unwritable HOME.
ENV USER=user LOGNAME=user
RUN groupadd --system --gid 10001 user \
    && useradd --system --no-log-init --create-home --uid 10001 --gid user user \
    && mkdir -p /opt/app /input /output \
    && chown user:user /output

# ---- deps: pinned dependencies in a virtual environment ----------------------------------
# The venv sees the base image's packages, so the base's CUDA torch 2.13.0 satisfies the
# torch pin and is not downloaded again. `.wh[l]` copies the git-ignored folder `.whl/`
# when present (local wheels, e.g. the CPU torch wheel for the local test image) and
# nothing otherwise.
FROM base AS deps
COPY requirements.txt .wh[l] /tmp/deps/
RUN python3 -m venv --system-site-packages --without-pip "$VIRTUAL_ENV" \
    && python -m pip install --find-links /tmp/deps --requirement /tmp/deps/requirements.txt \
    && rm -rf /tmp/deps

# ---- package: petseg itself, installed on its own so code changes leave deps cached ----
FROM deps AS package
COPY pyproject.toml README.md /tmp/src/
COPY petseg /tmp/src/petseg
RUN python -m pip install --no-deps --no-build-isolation --target /opt/petseg /tmp/src \
    && rm -rf /tmp/src

# ---- runtime: dependencies without the build inputs --------------------------------------
FROM base AS runtime
COPY --from=deps /opt/venv /opt/venv
WORKDIR /opt/app

# ---- train: `docker run petseg-train:VERSION train ...` -----------------------------------
FROM runtime AS train
COPY --from=package /opt/petseg /opt/petseg
USER 10001:10001
ENTRYPOINT ["petseg"]
CMD ["--help"]

# ---- weights: readable by every uid -----------------------------------------------------
# WEIGHTS_DIR: another weights folder of the build context (the test uses one). Files saved
# with private modes (0600) are opened up here, in a stage of their own, so the image runs
# under `--user` any uid and still stores the weights once (the legacy builder has no
# `COPY --chmod`, and a `RUN chmod` in the final stage would store them twice).
FROM base AS weights
ARG WEIGHTS_DIR=weights
COPY ${WEIGHTS_DIR}/ /opt/app/weights/
RUN chmod -R a+rX,go-w /opt/app/weights

# ---- inference (default): the grand-challenge algorithm ----------------------------------
# Weights come before the code so that code changes do not copy the weights again.
FROM runtime AS inference
COPY --from=weights /opt/app/weights/ /opt/app/weights/
COPY --chown=10001:10001 resources/ /opt/app/resources/
COPY --from=package /opt/petseg /opt/petseg
COPY process.py /opt/app/
# 1: built as the interactive algorithm (autoPET IV/V): every mask goes to the interactive
# slug, with or without a click file (docs/container.md); `docker run -e` overrides it
ARG PETSEG_INTERACTIVE=0
ENV PETSEG_INTERACTIVE=${PETSEG_INTERACTIVE}
USER 10001:10001
ENTRYPOINT ["python", "process.py"]
