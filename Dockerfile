# The worker and the CLI (generate, topics, watch, replay, ...) in one image.
#
# Two stages: the first builds the wheel, with the model compiled by mypyc (gcc) and the
# Rust kernel (cargo); the second installs that wheel on a slim Python without compilers
# and runs as an unprivileged user. The configuration is read from
# /etc/healthscore/healthscore.toml (HEALTHSCORE_CONFIG): mount your own file there, or
# set HEALTHSCORE_* environment variables. State that must survive lives in Kafka; the
# data directory only holds Faust's local files.

FROM python:3.11-slim-bookworm AS build
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
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --home-dir /var/lib/healthscore --shell /usr/sbin/nologin healthscore \
    && install -d -o healthscore -g healthscore -m 0750 /var/lib/healthscore
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --only-binary :all: --find-links /wheels healthscore && rm -rf /wheels
COPY config/healthscore.toml /etc/healthscore/healthscore.toml
ENV HEALTHSCORE_CONFIG=/etc/healthscore/healthscore.toml \
    HEALTHSCORE_DATA_DIR=/var/lib/healthscore \
    HEALTHSCORE_WEB_HOST=0.0.0.0
USER 10001:10001
# Fails the build if the model is not compiled or the Rust kernel is missing.
RUN healthscore version && healthscore version | grep -q "compiled, Rust kernel built"
EXPOSE 6066
ENTRYPOINT ["healthscore"]
CMD ["worker"]
