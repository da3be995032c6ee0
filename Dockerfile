# The worker and the CLI (generate, topics, watch) in one image.
FROM python:3.11-slim-bookworm
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY scoring ./scoring
COPY stream ./stream
COPY config ./config
RUN pip install --no-cache-dir ".[fast]"
ENV HEALTHSCORE_WEB_HOST=0.0.0.0 \
    HEALTHSCORE_DATA_DIR=/var/lib/healthscore
EXPOSE 6066
ENTRYPOINT ["healthscore"]
CMD ["worker"]
