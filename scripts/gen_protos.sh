#!/usr/bin/env bash
# Regenerates the committed gRPC stubs (and .pyi) from protos/ into OUT (default: the client
# distribution, clients/python, where the client and the service both take them from).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-clients/python}
mkdir -p "$OUT"
PATH="$(dirname "$PY"):$PATH" "$PY" -m grpc_tools.protoc -Iprotos \
  --python_out="$OUT" --grpc_python_out="$OUT" \
  --mypy_out="$OUT" --mypy_grpc_out="$OUT" \
  protos/entitlements/v1/*.proto
# The Connect (HTTP/JSON, gRPC-Web) routes of EntitlementService and UsageService, for the
# service's ENTITLEMENTS_HTTP_LISTEN (service/entrypoints/connect_api.py); the client library
# never imports them.
PATH="$(dirname "$PY"):$PATH" "$PY" -m grpc_tools.protoc -Iprotos \
  --connectrpc_out="$OUT" --connectrpc_opt=protobuf=google,io=async \
  protos/entitlements/v1/entitlement_service.proto protos/entitlements/v1/usage_service.proto
