# tasks — developer entry points. `make run` and `make test` work on a fresh Debian machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
TOOLS  := $(CURDIR)/.tools
BIN    := $(TOOLS)/bin
export PATH := $(BIN):$(PATH)
export GOFLAGS ?= -buildvcs=false

# Pinned tool versions (Go module proxy).
HELM_VERSION       := v3.21.4
HELM4_VERSION      := v4.3.1
KUSTOMIZE_VERSION  := v5.8.2
ACTIONLINT_VERSION := v1.7.12
# Default Kubernetes version helm assumes offline (`template`, `lint`): its client-go minor.
HELM_K8S_MINOR     := 36

# Debian packages the test suite needs: a real Redis, wrk for bench/, buildah + debootstrap for
# the image tests.
APT_PACKAGES := redis-server wrk buildah debootstrap openssl

.PHONY: help
help: ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# --- python environment ---

$(VENV)/.installed: requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create .venv from the hashed lock

.PHONY: lock
lock: ## re-resolve the locks (universal: valid on every Python >= 3.11 and platform)
	uv pip compile pyproject.toml --universal --generate-hashes --python-version 3.11 \
	  --custom-compile-command "make lock" -q -o requirements.lock
	uv pip compile pyproject.toml --extra dev --universal --generate-hashes --python-version 3.11 \
	  --custom-compile-command "make lock" -q -o requirements-dev.lock

# --- system packages ---

.PHONY: system-deps
system-deps: ## apt-get install what the tests need, when missing
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# --- pinned tools in .tools/bin ---

$(BIN)/helm-$(HELM_VERSION):
	GOBIN=$(BIN) go install -ldflags "\
	  -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
	  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$(HELM_K8S_MINOR) \
	  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
	  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(HELM_K8S_MINOR)" \
	  helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	touch $@

$(BIN)/helm4-$(HELM4_VERSION):
	GOBIN=$(TOOLS)/helm4 go install -ldflags "-X helm.sh/helm/v4/internal/version.version=$(HELM4_VERSION)" \
	  helm.sh/helm/v4/cmd/helm@$(HELM4_VERSION)
	ln -sf $(TOOLS)/helm4/helm $(BIN)/helm4
	touch $@

$(BIN)/kustomize-$(KUSTOMIZE_VERSION):
	GOBIN=$(BIN) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	touch $@

$(BIN)/actionlint-$(ACTIONLINT_VERSION):
	GOBIN=$(BIN) go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)
	touch $@

.PHONY: tools
tools: $(BIN)/helm-$(HELM_VERSION) $(BIN)/helm4-$(HELM4_VERSION) \
       $(BIN)/kustomize-$(KUSTOMIZE_VERSION) $(BIN)/actionlint-$(ACTIONLINT_VERSION) ## build pinned helm, helm 4, kustomize, actionlint

# --- everyday targets ---

.PHONY: run
run: venv ## serve on :8080 with the in-memory store
	$(VENV)/bin/python -m service

.PHONY: test
test: venv system-deps tools ## install what the tests need and run them (real Redis, helm, buildah)
	$(VENV)/bin/pytest -m "not e2e" $(PYTEST_ARGS)

.PHONY: lint
lint: venv ## ruff and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: fmt
fmt: venv ## format the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: bench
bench: venv system-deps ## load and startup benchmarks (prints figures, never fails on them)
	$(VENV)/bin/python bench/run.py

.PHONY: clean
clean: ## remove caches (keeps .tools)
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
