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
ENV NOTIFY_HOST=0.0.0.0 \
    NOTIFY_PORT=8000 \
    NOTIFY_DATABASE_URL=sqlite:////data/notify-server.db \
    NOTIFY_SECRET_KEY_FILE=/data/notify-server.key
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["notify-server", "serve"]
