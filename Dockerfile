# syntax=docker/dockerfile:1
# One image for both processes: `entitlements-service` (default command), `entitlements-gateway`,
# and `entitlements-service migrate` (the migration Job). Every dependency, transitive ones and
# the build backend included, comes from the hashed lock requirements/runtime.lock (`make lock`).

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/runtime.lock requirements/runtime.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.lock
COPY pyproject.toml README.md LICENSE ./
COPY clients/python clients/python
COPY entitlements_common entitlements_common
COPY entitlements_cli entitlements_cli
COPY service service
COPY webhook_gateway webhook_gateway
# The project and its client distribution, resolving nothing more; the build backend
# (setuptools, from the lock) is not needed at run time.
RUN pip install --no-cache-dir --no-deps --no-build-isolation ./clients/python . \
    && pip uninstall --yes setuptools \
    && python -m compileall -q /opt/venv

FROM python:3.11-slim AS runtime
LABEL org.opencontainers.image.title="plan-entitlements" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 entitlements \
    && useradd --system --uid 10001 --gid entitlements --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin entitlements
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENTITLEMENTS_LISTEN=0.0.0.0:50051 \
    ENTITLEMENTS_TARGET=entitlements-service:50051 \
    GATEWAY_LISTEN=0.0.0.0:8080 \
    ENTITLEMENTS_DATA_DIR=/tmp/entitlements
WORKDIR /tmp
USER 10001:10001
# 50051 gRPC, 8081 Connect / gRPC-Web (ENTITLEMENTS_HTTP_LISTEN), 9464 metrics: the service; 8080: the gateway.
EXPOSE 50051 8080 8081 9464
# Kubernetes probes gRPC health itself (deploy/k8s); compose.yaml has its own healthchecks.
HEALTHCHECK NONE
CMD ["entitlements-service"]
