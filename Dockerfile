# The worker and the CLI (generate, topics, watch) in one image.
FROM python:3.11-slim-bookworm
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml setup.py README.md ./
COPY scoring ./scoring
COPY stream ./stream
COPY config ./config
# A C compiler for the install only: setup.py compiles the model with mypyc (a quarter
# faster per event); without one it would install as pure Python.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir . \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && healthscore version
ENV HEALTHSCORE_WEB_HOST=0.0.0.0 \
    HEALTHSCORE_DATA_DIR=/var/lib/healthscore
EXPOSE 6066
ENTRYPOINT ["healthscore"]
CMD ["worker"]
