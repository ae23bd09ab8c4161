# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run demo shell bench h2load test test-chaos test-unit test-integration test-e2e check catalog-check lint typecheck stubs-check lock-check deploy-check protos lock clean tools buf-check ts-install ts-gen ts-check test-ts

# Every dependency, transitive ones included, comes from a hashed lock (requirements/*.lock,
# made by `make lock`); the project itself is installed without resolving anything more.
$(STAMP): pyproject.toml clients/python/pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e clients/python -e .
	touch $(STAMP)

install: $(STAMP)

# Node tools pinned in tools/package-lock.json (buf, protoc-gen-es), from the npm registry.
NPM   ?= npm
TOOLS := tools/node_modules/.installed
BUF   := tools/node_modules/.bin/buf
$(TOOLS): tools/package.json tools/package-lock.json
	cd tools && $(NPM) ci --no-audit --no-fund
	touch $(TOOLS)

tools: $(TOOLS)

# The TypeScript client (clients/typescript): its pinned dependencies, by `npm ci`.
TS       := clients/typescript
TS_STAMP := $(TS)/node_modules/.installed
$(TS_STAMP): $(TS)/package.json $(TS)/package-lock.json
	cd $(TS) && $(NPM) ci --no-audit --no-fund
	touch $(TS_STAMP)

ts-install: $(TS_STAMP)

## Regenerate the TypeScript client's code (clients/typescript/src/gen) after editing protos/.
ts-gen: $(TOOLS)
	$(BUF) generate

## The TypeScript client's e2e tests alone (node --test; they start a real service).
test-ts: $(STAMP) $(TS_STAMP)
	cd $(TS) && ENTITLEMENTS_PYTHON=$(CURDIR)/$(PY) $(NPM) test

## Start embedded PostgreSQL (unless DATABASE_URL is set), migrations, the service and the gateway.
run: $(STAMP)
	$(PY) scripts/run_dev.py

## With `make run` going: send a signed sample webhook and show the plan change.
demo: $(STAMP)
	@$(PY) scripts/send_demo_webhook.py

## With `make run` going: a shell ($$SHELL, else bash) with .venv/bin on PATH and the
## development secrets of .data/dev.env exported (`. scripts/dev_env.sh` does it in this shell).
shell: $(STAMP)
	@. scripts/dev_env.sh && exec "$${SHELL:-bash}"

## Benchmarks (starts everything itself; writes bench/results/latest.{json,png}).
bench: $(STAMP) h2load build/consume_load
	$(PY) -m pip install --quiet --require-hashes -r requirements/bench.lock
	$(PY) -m bench.run

# The benchmark's load generator: Debian's nghttp2-client, installed when h2load is missing
# (package lists refreshed only if the first attempt fails); a clear error if it cannot be.
h2load:
	@command -v h2load >/dev/null 2>&1 || { \
	  echo "h2load not found: installing Debian's nghttp2-client"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq nghttp2-client >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nghttp2-client >/dev/null 2>&1; }; \
	  command -v h2load >/dev/null 2>&1 || { \
	    echo "make bench needs h2load (Debian package nghttp2-client) and could not install it:" \
	      "run 'apt-get install nghttp2-client' as root, or put an h2load on PATH" >&2; exit 1; }; }

# The Consume load generator (bench/consume.py): nghttp2 in C, as h2load is, so it takes as
# little CPU beside the service; Debian's libnghttp2-dev and a C compiler installed if missing.
build/consume_load: bench/consume_load.c
	@{ command -v cc >/dev/null 2>&1 && [ -f /usr/include/nghttp2/nghttp2.h ]; } || { \
	  echo "installing Debian's libnghttp2-dev and gcc for the Consume load generator"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq libnghttp2-dev gcc libc6-dev >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && \
	      apt-get install -y -qq libnghttp2-dev gcc libc6-dev >/dev/null 2>&1; }; \
	  [ -f /usr/include/nghttp2/nghttp2.h ] || { \
	    echo "make bench needs libnghttp2-dev and a C compiler and could not install them:" \
	      "run 'apt-get install libnghttp2-dev gcc' as root" >&2; exit 1; }; }
	@mkdir -p build
	cc -O2 -Wall -Wextra -Werror -o $@ $< -lnghttp2

## The whole test suite against a real PostgreSQL (see tests/conftest.py).
test: $(STAMP) $(TOOLS) $(TS_STAMP)
	$(PY) -m pytest -m "not chaos"

## PostgreSQL, the service and the gateway killed -9 at random under a Svix-like sender.
test-chaos: $(STAMP)
	$(PY) -m pytest -m chaos -s tests/chaos

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration

test-e2e: $(STAMP) $(TOOLS) $(TS_STAMP)
	$(PY) -m pytest tests/e2e

## Lint, types, stale generated stubs, and the bundled catalog.
check: catalog-check lint typecheck stubs-check lock-check deploy-check buf-check ts-check

## The bundled plan catalog, checked offline as the service checks it at start.
catalog-check: $(STAMP)
	$(VENV)/bin/entitlements catalog validate service/default_catalog.toml

## buf lint (buf.yaml) and buf breaking against the previous commit (scripts/buf_breaking.sh).
buf-check: $(TOOLS)
	$(BUF) lint
	BUF=$(BUF) scripts/buf_breaking.sh

## The TypeScript client: generated code not stale, and it type-checks (tsc --noEmit).
ts-check: $(TOOLS) $(TS_STAMP)
	BUF=$(BUF) scripts/check_ts_gen.sh
	cd $(TS) && $(NPM) run --silent typecheck

## Every dependency named in pyproject.toml is pinned in the hashed locks, at the same version.
lock-check: $(STAMP)
	$(PY) scripts/check_lock.py pyproject.toml requirements/dev.lock requirements/bench.lock \
	  requirements/runtime.lock

## Deploy files: the Dockerfile linted (hadolint, every rule down to info); the image's build
## context resolved through .dockerignore, every COPY source in it, and what the image would
## install (runtime.lock + the packages, from that context alone) started in a fresh venv
## against the local PostgreSQL (scripts/check_image_context.py: no container engine here); the
## Kubernetes manifests against the API schemas kubernetes-validate ships (no network, no
## cluster; kustomization.yaml is not an API object: with kubectl installed, what
## `kubectl kustomize deploy/k8s` renders is validated too); compose.yaml parsed.
K8S_MANIFESTS := $(filter-out deploy/k8s/kustomization.yaml,$(wildcard deploy/k8s/*.yaml))
deploy-check: $(STAMP)
	$(VENV)/bin/hadolint --failure-threshold info --no-color Dockerfile
	$(PY) scripts/check_image_context.py
	$(VENV)/bin/kubernetes-validate --strict --quiet --kubernetes-version 1.30 \
	  $(K8S_MANIFESTS) deploy/k8s/examples/*.yaml
	@if command -v kubectl >/dev/null; then \
	  out=$$(mktemp -d) && trap 'rm -rf "$$out"' EXIT && \
	  kubectl kustomize deploy/k8s >"$$out/rendered.yaml" && \
	  $(VENV)/bin/kubernetes-validate --strict --quiet --kubernetes-version 1.30 "$$out/rendered.yaml" && \
	  echo "kubectl kustomize deploy/k8s: valid"; \
	else echo "kubectl not installed: the rendered kustomization is not validated"; fi
	$(PY) -c "import sys, yaml; yaml.safe_load(open(sys.argv[1]))['services']" compose.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

stubs-check: $(STAMP)
	PY=$(PY) scripts/check_stubs.sh

## Re-resolve the hashed locks after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(PY) -m pip install --quiet pip-tools==7.6.2
	for extras in dev,embedded dev,embedded,bench; do \
	  out=requirements/$$( [ $$extras = dev,embedded ] && echo dev || echo bench ).lock; \
	  PIP_CONSTRAINT= $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	    --strip-extras --no-emit-index-url --no-emit-find-links \
	    $$(echo $$extras | sed 's/\([a-z]*\)/--extra \1/g; s/,/ /g') -o $$out pyproject.toml; \
	done
	# The image's lock (Dockerfile): the project's own dependencies and its build backend, at
	# dev.lock's versions (seeded from it, so the image runs what the tests ran); no extras, so
	# not the embedded PostgreSQL.
	cp requirements/dev.lock requirements/runtime.lock
	PIP_CONSTRAINT= $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links --build-deps-for=wheel \
	  -o requirements/runtime.lock pyproject.toml

## Regenerate the committed stubs after editing protos/.
protos: $(STAMP)
	PY=$(PY) scripts/gen_protos.sh

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache tools/node_modules $(TS)/node_modules $(TS)/dist $(TS)/build-test
