# syntax=docker/dockerfile:1
#
# The streamcp consumer service.
#
#   docker build -t streamcp:0.1.0 .
#   docker run --rm -v "$PWD/streamcp.toml:/etc/streamcp/config.toml:ro" \
#       -e STREAMCP_REDIS__URL=redis://redis:6379/0 streamcp:0.1.0
#
# Configuration comes from the TOML file mounted at /etc/streamcp/config.toml
# and from STREAMCP_<SECTION>__<FIELD> environment variables set at run time.
# Nothing secret is built into the image: pass the Redis URL and SASL
# credentials as environment variables (from a Kubernetes Secret, say).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: install streamcp and its dependencies into a virtualenv ----------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# confluent-kafka and redis come as binary wheels: no compiler is needed.
RUN python -m venv /opt/streamcp

WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamcp ./streamcp
RUN /opt/streamcp/bin/pip install . \
    && /opt/streamcp/bin/pip uninstall --yes pip \
    && /opt/streamcp/bin/python -m compileall -q /opt/streamcp/lib

# -- runtime: the virtualenv and an unprivileged user, nothing else ----------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="streamcp" \
      org.opencontainers.image.description="Kafka consumers with checkpoints in Redis, committed only after the handler succeeded." \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 streamcp \
    && useradd --system --uid 10001 --gid streamcp --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin streamcp \
    && mkdir -p /etc/streamcp

COPY --from=build /opt/streamcp /opt/streamcp

ENV PATH=/opt/streamcp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The service writes nothing to disk: the root filesystem may be read-only.
WORKDIR /opt/streamcp
USER 10001:10001

# /metrics, /healthz and /readyz (metrics.address; bind 0.0.0.0:9400 in the
# mounted configuration so that they are reachable from outside).
EXPOSE 9400

# SIGTERM stops the service gracefully: it drains in-flight events for up
# to consumer.drain_timeout_s and commits what succeeded.
STOPSIGNAL SIGTERM
ENTRYPOINT ["streamcp"]
CMD ["run", "--config", "/etc/streamcp/config.toml"]
