# BookVerse Recommendations server image.
# Runs the same install script as the README, so CI exercises its steps.
FROM python:3.11-slim-bookworm

WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY protos ./protos
COPY models ./models
COPY server ./server
COPY training ./training
COPY scripts ./scripts
RUN PYTHON=python3 bash scripts/install.sh train

ENV PATH="/app/.venv/bin:$PATH" \
    BOOKVERSE_ARTIFACTS=/app/artifacts \
    BOOKVERSE_EVENTS_DB=/app/var/events.db \
    BOOKVERSE_HOST=0.0.0.0 \
    BOOKVERSE_PORT=50051
EXPOSE 50051 9464
# Bundles are published into /app/artifacts by `bookverse-train train`
# (mount a volume there); the server hot-reloads each new one.
CMD ["bookverse-serve", "--metrics-port", "9464"]
