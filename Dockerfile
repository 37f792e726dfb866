# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY src ./src
COPY alembic ./alembic
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 notify && mkdir /data && chown notify /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER notify
WORKDIR /data
# The SQLite database and its secret key live here: mount a volume (`-v notify-data:/data`) or
# they go with the container. Every process answers /healthz on NOTIFY_METRICS_PORT too, the
# `worker` only there; publish NOTIFY_PORT alone (set NOTIFY_METRICS_TOKEN to guard /metrics).
VOLUME /data
ENV NOTIFY_HOST=0.0.0.0 \
    NOTIFY_PORT=8000 \
    NOTIFY_METRICS_PORT=9100 \
    NOTIFY_DATABASE_URL=sqlite:////data/notify-server.db \
    NOTIFY_SECRET_KEY_FILE=/data/notify-server.key
EXPOSE 8000 9100
# Follows NOTIFY_PORT and NOTIFY_METRICS_PORT, for `serve` and `worker` alike. OCI-format builds
# (podman's default) drop this: docker-compose.yml and deploy/kubernetes/ declare their own.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s \
  CMD ["python3", "-m", "notify_server.healthcheck"]
CMD ["notify-server", "serve"]
