# The worker and the CLI (generate, topics, watch, replay, ingest, deliver, ...) in one image.
#
# Two stages: the first builds the wheels, with the model compiled by mypyc (gcc) and the
# Rust kernel (cargo); the second installs them on a Python without compilers, from the
# wheels alone (--no-index), and runs as an unprivileged user. The configuration is read
# from /etc/healthscore/healthscore.toml (HEALTHSCORE_CONFIG): mount your own file there,
# or set HEALTHSCORE_* environment variables. State that must survive lives in Kafka; the
# data directory only holds Faust's local files.
#
# Build arguments (docs/deploy.md, "The image"):
#   BASE_IMAGE  the Python both stages start from (python:3.11-slim-bookworm); any Debian
#               bookworm with python3 and python3-venv will do (scripts/image-build.sh makes
#               one with debootstrap where Docker Hub cannot be reached).
#   WHEELS      "build": the build stage below makes the wheels (needs the network for
#               rustup and PyPI); "host": they come from .image-wheels/ in the build
#               context, built on the host by scripts/image-build.sh.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG WHEELS=build

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY scoring ./scoring
COPY stream ./stream
COPY native ./native
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels/project . \
    && python3 -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" >requirements.txt \
    && mkdir -p /wheels/deps && cp requirements.txt /wheels/deps/ \
    && pip wheel --no-cache-dir --wheel-dir /wheels/deps -r requirements.txt

FROM scratch AS wheels-host
COPY .image-wheels/ /wheels/

FROM build AS wheels-build

FROM wheels-${WHEELS} AS wheels

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --home-dir /var/lib/healthscore --shell /usr/sbin/nologin healthscore \
    && install -d -o healthscore -g healthscore -m 0750 /var/lib/healthscore
# The dependencies first, in a layer of their own: a build whose dependencies did not change
# takes it from the cache and installs only the project's wheel.
COPY --from=wheels /wheels/deps /wheels/deps
# A virtual environment: Debian's own python3 refuses installs into the system (PEP 668).
RUN python3 -m venv /opt/healthscore \
    && /opt/healthscore/bin/pip install --no-cache-dir --no-index --only-binary :all: --find-links /wheels/deps -r /wheels/deps/requirements.txt \
    && rm -rf /wheels
COPY --from=wheels /wheels/project /wheels/project
RUN /opt/healthscore/bin/pip install --no-cache-dir --no-index --only-binary :all: --no-deps /wheels/project/*.whl \
    && /opt/healthscore/bin/pip check \
    && rm -rf /wheels
COPY config/healthscore.toml /etc/healthscore/healthscore.toml
ENV PATH=/opt/healthscore/bin:$PATH \
    HEALTHSCORE_CONFIG=/etc/healthscore/healthscore.toml \
    HEALTHSCORE_DATA_DIR=/var/lib/healthscore \
    HEALTHSCORE_WEB_HOST=0.0.0.0
USER 10001:10001
# Fails the build if the model is not compiled or the Rust kernel is missing.
RUN healthscore version && healthscore version | grep -q "compiled, Rust kernel built"
EXPOSE 6066 6067 6068
ENTRYPOINT ["healthscore"]
CMD ["worker"]
