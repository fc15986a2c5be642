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
# skaffold v2 (wrapper module: its go.mod has replace lines) and kind, the user's kind loop (rung 6).
SKAFFOLD_DIR       := tests/e2e/skaffold
SKAFFOLD_VERSION   := $(shell sed -n 's/^require github.com\/GoogleContainerTools\/skaffold\/v2 \(v[0-9.]*\)/\1/p' $(SKAFFOLD_DIR)/go.mod)
KIND_VERSION       := v0.33.0
# Default Kubernetes version helm assumes offline (`template`, `lint`): its client-go minor.
HELM_K8S_MINOR     := 36

# Debian packages the test suite needs: a real Redis, wrk for bench/, buildah + debootstrap for
# the image tests, shellcheck for actionlint's run: checks, openssl for the control plane's certs.
APT_PACKAGES := redis-server wrk buildah debootstrap openssl shellcheck time
# Installed without recommends (docker.io's are needrestart, an apt hook that restarts services,
# apparmor, cgroupfs-mount and criu), and with services kept from starting: dockerd runs only in
# the private namespace `make docker-up` makes, never as the host's service (that one would
# rewrite the host's iptables and forwarding).
APT_PACKAGES_NO_RECOMMENDS := docker.io slirp4netns
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help
help: ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# --- python environment ---

$(VENV)/.installed: requirements-dev.lock
	@# Debian's python3 ships venv support as a separate package.
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || $(MAKE) --no-print-directory system-deps APT_PACKAGES=python3-venv
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
	@# The missing packages are listed on one line: the second list is spliced into an sh -c string.
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || printf '%s ' $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@missing=$$(for p in $(APT_PACKAGES_NO_RECOMMENDS); do dpkg -s $$p >/dev/null 2>&1 || printf '%s ' $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing (no recommends, no service started):" $$missing; \
	  $(SUDO) sh -ec 'rc=/usr/sbin/policy-rc.d; made=; \
	    if [ ! -e $$rc ]; then printf "#!/bin/sh\nexit 101\n" > $$rc; chmod 755 $$rc; made=1; fi; \
	    trap "[ -z \"$$made\" ] || rm -f $$rc" EXIT; \
	    apt-get update -qq; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends '"$$missing"' >/dev/null'; \
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

# Each test run writes a JUnit report here (factors as properties); `make factors` reads them.
REPORTS := $(CURDIR)/.cache/reports

.PHONY: test
test: venv system-deps tools ## install what the tests need and run them (real Redis, helm, buildah)
	@mkdir -p $(REPORTS) && rm -f $(REPORTS)/test.xml
	$(VENV)/bin/pytest -m "not e2e and not node and not kind" --junitxml=$(REPORTS)/test.xml $(PYTEST_ARGS)

.PHONY: factors
FACTOR_RUNS ?= test e2e e2e-node
factors: ## the twelve-factor scorecard over the reports of make test, e2e, e2e-node (FACTOR_RUNS=); fails on a gap
	$(PYTHON) -m tests.factors --reports $(REPORTS) --runs $(FACTOR_RUNS)

.PHONY: lint
lint: venv tools system-deps ## ruff, mypy --strict, hadolint, actionlint, helm lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile
	$(BIN)/actionlint
	$(BIN)/helm lint --strict deploy/helm/tasks

.PHONY: fmt
fmt: venv ## format the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: chart-docs
chart-docs: venv ## regenerate the chart README's values table from values.yaml
	$(VENV)/bin/python -m tests.chart.values_doc

# The Go peer in bench/: podinfo, the reference Kubernetes demo service, serving its Redis cache.
# Its release tags lack the "v" the Go module proxy needs, so this is the pseudo-version of the
# commit whose pkg/version says 6.9.2.
PODINFO_VERSION := v1.8.1-0.20250910200901-e86405a8674e
$(BIN)/podinfo-$(PODINFO_VERSION):
	GOBIN=$(BIN) CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
	  github.com/stefanprodan/podinfo/cmd/podinfo@$(PODINFO_VERSION)
	rm -f $(BIN)/podinfo-v*; touch $@

.PHONY: bench
bench: venv system-deps $(BIN)/podinfo-$(PODINFO_VERSION) ## load and startup benchmarks beside a bare FastAPI handler and podinfo (prints figures, never fails on them)
	$(VENV)/bin/python bench/run.py

.PHONY: bench-scale
bench-scale: venv system-deps ## a list page at 10k and 1M tasks, cleanup of 1M done tasks (prints figures, never fails on them)
	$(VENV)/bin/python bench/scale.py

.PHONY: clean
clean: ## remove caches (keeps .tools)
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache

# --- container image (rung 3) ---
IMAGE        ?= localhost/tasks:dev
# Empty: the Dockerfile's default (python:3.11-slim-bookworm). Offline: BASE_IMAGE=$(STANDIN_BASE).
BASE_IMAGE   ?=
STANDIN_BASE := localhost/tasks-base-python:3.11-stand-in

.PHONY: image
image: ## build $(IMAGE): docker when a daemon answers, else buildah (BASE_IMAGE=, VERSION=, CA_FILE=, DRY_RUN=1)
	BASE_IMAGE="$(BASE_IMAGE)" bash tests/image/build.sh $(IMAGE)

.PHONY: image-base
image-base: system-deps ## local stand-in for python:3.11-slim-bookworm (debootstrap + buildah, cached; root)
	bash tests/image/standin.sh python $(STANDIN_BASE)

# --- cluster (rung 4) ---
# A real Kubernetes control plane for the e2e tests, built from the Go module proxy: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler (one multi-call binary `kube`, which is also the pinned kubectl)
# and kwok for fake nodes. Pins live in the wrapper modules' go.mod files (tests/e2e/controlplane/);
# tests/e2e/cluster/ runs them on 127.0.0.1 with state in .cache/cluster/.
CONTROLPLANE := tests/e2e/controlplane
KUBE_VERSION := $(shell sed -n 's/^[[:space:]]*\(require \)\{0,1\}k8s.io\/kubernetes \(v[0-9.]*\).*/\2/p' $(CONTROLPLANE)/go.mod)
KUBE_MINOR   := $(word 2,$(subst ., ,$(KUBE_VERSION)))
ETCD_VERSION := $(shell sed -n 's/^[[:space:]]*\(require \)\{0,1\}go.etcd.io\/etcd\/server\/v3 \(v[0-9.]*\).*/\2/p' $(CONTROLPLANE)/etcd/go.mod)
KWOK_VERSION := v0.8.0
# What upstream's hack/lib/version.sh sets, so /version and Helm's .Capabilities report the real version.
KUBE_LDFLAGS := -s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
  -X $(p).gitVersion=$(KUBE_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=$(KUBE_MINOR) -X $(p).gitTreeState=clean)
# Prints wall time and peak memory of each build when GNU time is installed (Debian package `time`).
BUILD_TIME   := $(if $(wildcard /usr/bin/time),/usr/bin/time -f "  built in %e s wall; peak RSS %M KB",)

$(BIN)/kube-$(KUBE_VERSION): $(CONTROLPLANE)/go.mod $(CONTROLPLANE)/go.sum $(CONTROLPLANE)/main.go
	@echo "building kube $(KUBE_VERSION) (control plane, kubelet, kube-proxy, kubeadm, kubectl); cold: ~10+ min"
	cd $(CONTROLPLANE) && $(BUILD_TIME) go build -trimpath -ldflags "$(KUBE_LDFLAGS)" -o $(BIN)/kube .
	for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy kubeadm; do ln -sf kube $(BIN)/$$c; done
	rm -f $(BIN)/kube-v*; touch $@

$(BIN)/etcd-$(ETCD_VERSION): $(CONTROLPLANE)/etcd/go.mod $(CONTROLPLANE)/etcd/go.sum $(CONTROLPLANE)/etcd/main.go
	cd $(CONTROLPLANE)/etcd && $(BUILD_TIME) go build -trimpath -ldflags "-s -w" -o $(BIN)/etcd .
	rm -f $(BIN)/etcd-v*; touch $@

$(BIN)/kwok-$(KWOK_VERSION):
	GOBIN=$(BIN) $(BUILD_TIME) go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$(KWOK_VERSION)" \
	  sigs.k8s.io/kwok/cmd/kwok@$(KWOK_VERSION)
	rm -f $(BIN)/kwok-v*; touch $@

.PHONY: cluster-tools
cluster-tools: $(BIN)/kube-$(KUBE_VERSION) $(BIN)/etcd-$(ETCD_VERSION) $(BIN)/kwok-$(KWOK_VERSION) ## build the pinned control plane, etcd, kwok, kubectl into .tools/bin

.PHONY: cluster-up
cluster-up: cluster-tools ## start (or reuse) the local control plane; prints the kubeconfig path
	$(PYTHON) -m tests.e2e.cluster up

.PHONY: cluster-down
cluster-down: ## stop the local control plane; fails if a process is left behind
	$(PYTHON) -m tests.e2e.cluster down

.PHONY: cluster-status
cluster-status: ## show the local control plane's processes and version
	$(PYTHON) -m tests.e2e.cluster status

.PHONY: e2e
e2e: venv tools cluster-tools $(BIN)/skaffold-$(SKAFFOLD_VERSION) ## rung 4: e2e tests on the local control plane (reuses one from cluster-up), skaffold render
	@mkdir -p $(REPORTS) && rm -f $(REPORTS)/e2e.xml
	$(VENV)/bin/pytest -m e2e tests/e2e --junitxml=$(REPORTS)/e2e.xml $(PYTEST_ARGS)

# --- node (rung 5) ---
# A real node beside that control plane: kubelet and kube-proxy (in `kube`), containerd + runc, CoreDNS,
# crictl and the pause image, all built here from pinned sources. containerd v2.2.9 is the last patch of
# the 2.2 line, the newest whose go.mod `go install` accepts and whose CI runs runc v1.3.6, the last runc
# line before cgroup v1 was deprecated (this runner is cgroup v1). runc needs cgo and libseccomp for
# seccomp, which PodSecurity "restricted" forces on every pod (RuntimeDefault).
CONTAINERD_VERSION := v2.2.9
RUNC_VERSION       := v1.3.6
CRICTL_VERSION     := v1.34.0
PAUSE_VERSION      := 3.10.1
COREDNS_DIR        := $(CONTROLPLANE)/coredns
COREDNS_VERSION    := $(shell sed -n 's/^require github.com\/coredns\/coredns \(v[0-9.]*\)/\1/p' $(COREDNS_DIR)/go.mod)

$(BIN)/containerd-$(CONTAINERD_VERSION):
	GOBIN=$(BIN) CGO_ENABLED=0 $(BUILD_TIME) go install -trimpath \
	  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION)" \
	  github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD_VERSION) \
	  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$(CONTAINERD_VERSION) \
	  github.com/containerd/containerd/v2/cmd/ctr@$(CONTAINERD_VERSION)
	rm -f $(BIN)/containerd-v*; touch $@

$(BIN)/runc-$(RUNC_VERSION):
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="libseccomp-dev pkg-config"
	GOBIN=$(BIN) CGO_ENABLED=1 $(BUILD_TIME) go install -trimpath -tags seccomp \
	  -ldflags "-s -w -X main.version=$(patsubst v%,%,$(RUNC_VERSION))" github.com/opencontainers/runc@$(RUNC_VERSION)
	rm -f $(BIN)/runc-v*; touch $@

$(BIN)/crictl-$(CRICTL_VERSION):
	GOBIN=$(BIN) CGO_ENABLED=0 $(BUILD_TIME) go install -trimpath \
	  -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$(CRICTL_VERSION)" \
	  sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)
	rm -f $(BIN)/crictl-v*; touch $@

$(BIN)/coredns-$(COREDNS_VERSION): $(COREDNS_DIR)/go.mod $(COREDNS_DIR)/go.sum $(COREDNS_DIR)/main.go
	cd $(COREDNS_DIR) && CGO_ENABLED=0 $(BUILD_TIME) go build -trimpath \
	  -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$(COREDNS_VERSION)" -o $(BIN)/coredns .
	rm -f $(BIN)/coredns-v*; touch $@

# The pause binary from the pinned k8s.io/kubernetes module's own source, as upstream builds it.
$(BIN)/pause-$(PAUSE_VERSION): $(BIN)/kube-$(KUBE_VERSION)
	cd $(CONTROLPLANE) && src="$$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c" && \
	  gcc -Os -Wall -Werror -static -DVERSION=v$(PAUSE_VERSION)-tasks -o $(BIN)/pause "$$src"
	rm -f $(BIN)/pause-[0-9]*; touch $@

.PHONY: node-tools
node-tools: cluster-tools $(BIN)/containerd-$(CONTAINERD_VERSION) $(BIN)/runc-$(RUNC_VERSION) \
            $(BIN)/crictl-$(CRICTL_VERSION) $(BIN)/coredns-$(COREDNS_VERSION) $(BIN)/pause-$(PAUSE_VERSION) ## build containerd, runc, crictl, CoreDNS, pause (and the control plane with kubelet, kube-proxy)

REDIS_STANDIN := localhost/tasks-redis:7.0-stand-in

.PHONY: image-redis
image-redis: system-deps ## local stand-in for the chart's Redis image (debootstrap + buildah, cached; root)
	bash tests/image/standin.sh redis $(REDIS_STANDIN)

.PHONY: node-images
node-images: image-base image-redis ## the node's images in buildah's store: the app (make image on the stand-in base), the Redis stand-in
	$(MAKE) --no-print-directory image BASE_IMAGE=$(STANDIN_BASE)

.PHONY: node-up
node-up: node-tools node-images ## start (or reuse) the control plane + a real node in a private namespace (root)
	$(PYTHON) -m tests.e2e.cluster --node up

.PHONY: node-down
node-down: ## stop the node cluster; fails if a process, namespace, cgroup, sysctl or host change is left
	$(PYTHON) -m tests.e2e.cluster --node down

.PHONY: node-status
node-status: ## show the node cluster's processes
	$(PYTHON) -m tests.e2e.cluster --node status

.PHONY: node-shell
node-shell: ## a shell inside the node's namespaces (KUBECONFIG set, .tools/bin on PATH)
	$(PYTHON) -m tests.e2e.cluster --node exec -- bash

.PHONY: e2e-node
e2e-node: venv tools node-tools node-images ## rung 5: up, the real-pod tests (tests/e2e/node), down
	@mkdir -p $(REPORTS) && rm -f $(REPORTS)/e2e-node.xml
	$(PYTHON) -m tests.e2e.cluster --node up
	rc=0; $(PYTHON) -m tests.e2e.cluster --node exec -- $(VENV)/bin/pytest -m node tests/e2e/node \
	  --junitxml=$(REPORTS)/e2e-node.xml $(PYTEST_ARGS) || rc=$$?; \
	$(PYTHON) -m tests.e2e.cluster --node down || rc=$$?; exit $$rc
# --- end node ---
# --- end cluster ---

# --- kind loop (rung 6) ---
# The user's own loop: skaffold v2 and kind, built from the Go module proxy. skaffold's go.mod has
# replace lines, which `go install pkg@version` refuses: tests/e2e/skaffold/ is a wrapper module that
# copies them. Build tags and version ldflags as upstream's Makefile sets them (no cgo: netgo, osusergo).

$(BIN)/skaffold-$(SKAFFOLD_VERSION): $(SKAFFOLD_DIR)/go.mod $(SKAFFOLD_DIR)/go.sum $(SKAFFOLD_DIR)/main.go
	@echo "building skaffold $(SKAFFOLD_VERSION); cold: ~16 min on a loaded 2-core machine"
	cd $(SKAFFOLD_DIR) && CGO_ENABLED=0 $(BUILD_TIME) go build -trimpath -tags "timetzdata osusergo netgo release" \
	  -ldflags "-s -w -X github.com/GoogleContainerTools/skaffold/v2/pkg/skaffold/version.version=$(SKAFFOLD_VERSION)" \
	  -o $(BIN)/skaffold .
	rm -f $(BIN)/skaffold-v*; touch $@

$(BIN)/kind-$(KIND_VERSION):
	GOBIN=$(BIN) CGO_ENABLED=0 $(BUILD_TIME) go install -trimpath -ldflags "-s -w" sigs.k8s.io/kind@$(KIND_VERSION)
	rm -f $(BIN)/kind-v*; touch $@

# The Dockerfile's `# syntax=docker/dockerfile:1` makes BuildKit fetch that frontend image; with no
# registry reachable, the harness's daemon gets a stand-in under that name: the frontend built here
# from the same source as upstream's image (tests/e2e/dockerfile-frontend/, a wrapper module because
# BuildKit's go.mod has exclude lines).
FRONTEND_DIR     := tests/e2e/dockerfile-frontend
BUILDKIT_VERSION := $(shell sed -n 's/^require github.com\/moby\/buildkit \(v[0-9.]*\)/\1/p' $(FRONTEND_DIR)/go.mod)
$(BIN)/dockerfile-frontend-$(BUILDKIT_VERSION): $(FRONTEND_DIR)/go.mod $(FRONTEND_DIR)/go.sum $(FRONTEND_DIR)/main.go
	cd $(FRONTEND_DIR) && CGO_ENABLED=0 $(BUILD_TIME) go build -trimpath -tags "netgo static_build osusergo" \
	  -ldflags "-s -w -X main.Version=buildkit-$(BUILDKIT_VERSION)" -o $(BIN)/dockerfile-frontend .
	rm -f $(BIN)/dockerfile-frontend-v*; touch $@

# docker buildx, the CLI plugin: skaffold's `useBuildkit` passes `docker build --load`, which only
# buildx knows (Docker >= 23 builds with it; Debian 12's docker.io 20.10 client has no buildx).
BUILDX_VERSION := v0.19.3
$(BIN)/buildx-$(BUILDX_VERSION):
	GOBIN=$(BIN) CGO_ENABLED=0 $(BUILD_TIME) go install -trimpath \
	  -ldflags "-s -w -X github.com/docker/buildx/version.Version=$(BUILDX_VERSION)" \
	  github.com/docker/buildx/cmd/buildx@$(BUILDX_VERSION)
	rm -f $(BIN)/buildx-v*; touch $@

# The kind node image (tests/e2e/cluster/kindnode.py). kind's own `build node-image` pulls etcd,
# CoreDNS, pause and kindnetd from registries, so the image is assembled from the node's builds
# above, plus the local-path-provisioner kind installs as its default StorageClass (v0.0.30: the
# newest the module proxy serves; kind v0.33's image has v0.0.34).
LOCAL_PATH_VERSION := v0.0.30
$(BIN)/local-path-provisioner-$(LOCAL_PATH_VERSION):
	GOBIN=$(BIN) CGO_ENABLED=0 $(BUILD_TIME) go install -trimpath \
	  -ldflags "-s -w -X main.VERSION=$(LOCAL_PATH_VERSION)" github.com/rancher/local-path-provisioner@$(LOCAL_PATH_VERSION)
	rm -f $(BIN)/local-path-provisioner-v*; touch $@

.PHONY: kind-node-image
kind-node-image: system-deps node-tools $(BIN)/local-path-provisioner-$(LOCAL_PATH_VERSION) ## the kind node image in buildah's store and as a docker-archive (root)
	bash tests/image/standin.sh kind
	$(PYTHON) -m tests.e2e.cluster.kindnode

.PHONY: kind-tools
kind-tools: $(BIN)/skaffold-$(SKAFFOLD_VERSION) $(BIN)/kind-$(KIND_VERSION) \
            $(BIN)/dockerfile-frontend-$(BUILDKIT_VERSION) $(BIN)/buildx-$(BUILDX_VERSION) ## build the pinned skaffold, kind, docker buildx and BuildKit's Dockerfile frontend into .tools/bin

# A Docker daemon of our own (Debian's docker.io) in a private network and mount namespace, state in
# .cache/docker/ (tests/e2e/cluster/docker.py); its clients run inside with `docker-shell` or
# `python -m tests.e2e.cluster --docker exec -- CMD`.
.PHONY: docker-up
docker-up: system-deps $(BIN)/dockerfile-frontend-$(BUILDKIT_VERSION) $(BIN)/buildx-$(BUILDX_VERSION) image-base image-redis ## start (or reuse) dockerd in a private namespace (root); loads the stand-in images
	$(PYTHON) -m tests.e2e.cluster --docker up

.PHONY: docker-down
docker-down: ## stop that dockerd; fails if a process, mount, link, rule, sysctl or cgroup of it is left
	$(PYTHON) -m tests.e2e.cluster --docker down

.PHONY: docker-status
docker-status: ## show that dockerd's state
	$(PYTHON) -m tests.e2e.cluster --docker status

.PHONY: docker-shell
docker-shell: ## a shell inside its namespace: DOCKER_HOST set, Debian's docker client, .tools/bin on PATH
	$(PYTHON) -m tests.e2e.cluster --docker exec -- bash

.PHONY: kind-up
kind-up: kind-tools kind-node-image node-images ## start (or reuse) dockerd and the kind cluster `tasks` on it, with the real-pod suite's images (root)
	$(PYTHON) -m tests.e2e.cluster --kind up

.PHONY: kind-down
kind-down: ## delete the kind cluster, then stop dockerd; fails if anything of it is left on the host
	$(PYTHON) -m tests.e2e.cluster --kind down

.PHONY: kind-status
kind-status: ## show the kind cluster's state
	$(PYTHON) -m tests.e2e.cluster --kind status

.PHONY: kind-shell
kind-shell: ## a shell inside the daemon's namespace with KUBECONFIG set to the kind cluster's
	$(PYTHON) -m tests.e2e.cluster --kind exec -- bash

# The docker and kind tests (tests/e2e/kind), then the real-pod suite of rung 5, unchanged, on
# the kind cluster (TASKS_E2E_CLUSTER=kind).
.PHONY: e2e-kind
e2e-kind: venv tools kind-tools kind-node-image node-images ## rung 6: kind-up, docker build/run, skaffold run and dev, the real-pod suite on kind, kind-down
	@mkdir -p $(REPORTS) && rm -f $(REPORTS)/e2e-kind.xml $(REPORTS)/e2e-kind-node.xml
	$(PYTHON) -m tests.e2e.cluster --kind up
	rc=0; $(PYTHON) -m tests.e2e.cluster --kind exec -- $(VENV)/bin/pytest -m kind tests/e2e/kind \
	  --junitxml=$(REPORTS)/e2e-kind.xml $(PYTEST_ARGS) || rc=$$?; \
	TASKS_E2E_CLUSTER=kind $(PYTHON) -m tests.e2e.cluster --kind exec -- $(VENV)/bin/pytest -m node \
	  tests/e2e/node --junitxml=$(REPORTS)/e2e-kind-node.xml $(PYTEST_ARGS) || rc=$$?; \
	$(PYTHON) -m tests.e2e.cluster --kind down || rc=$$?; exit $$rc
# --- end kind loop ---
