# One entry point for a fresh machine: every target creates .venv with everything if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.solo-iclmsr-installed
# Threads for CPU runs; tests are sized for 2 cores.
export OMP_NUM_THREADS ?= 2

# Where the patch step gets solo-learn main (commit 9187ea3): a .tar.gz archive, a checkout or
# a URL. Default: the vendored archive beside the checkout when it is there, else GitHub's.
SOLO_LEARN_COMMIT := 9187ea39c2c3f43c455ab06664d2b019a9802954
SOLO_LEARN_VENDORED := ../shared/vendor/solo-learn-9187ea3.tar.gz
SOLO_LEARN_URL := https://github.com/vturrisi/solo-learn/archive/$(SOLO_LEARN_COMMIT).tar.gz
SOLO_LEARN_SOURCE ?= $(if $(wildcard $(SOLO_LEARN_VENDORED)),$(SOLO_LEARN_VENDORED),$(SOLO_LEARN_URL))
export SOLO_LEARN_SOURCE

# solo-learn's own suites, run against the installed, patched solo-learn from the folder the patch
# step writes them to (outside any source tree, so no unpatched solo/ shadows the installed one).
UPSTREAM_TESTS := $(VENV)/solo-learn-tests
UPSTREAM_SUITES := tests/methods tests/losses tests/backbones tests/utils tests/args tests/data

.PHONY: install demo test test-project test-upstream patch-check bench gpu-check clean

install: $(STAMP)

# torch/torchvision first, pinned and with pip (it takes them from local disk where they lie);
# then the project; then solo-learn main, patched and installed as 1.0.6+iclmsr with its umap
# extra (upstream's tests/utils/test_auto_umap.py needs it); pip resolves its dependencies
# within constraints.txt.
$(STAMP): setup.py constraints.txt patches/solo_patch.py patches/solo-learn-9187ea3.sha256 \
		$(wildcard patches/*.patch)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	PIP_CONSTRAINT="$(CURDIR)/constraints.txt" $(PY) patches/solo_patch.py --extras umap
	$(PIP) check
	touch $(STAMP)

patch-check: install
	$(PY) patches/solo_patch.py --check

demo: install
	$(PY) -m solo_iclmsr.cli demo

test: test-project test-upstream

test-project: install
	$(PY) -m pytest -q tests

# Network tests (CIFAR-10 downloads) are skipped with their reasons by patches/upstream_tests.py.
test-upstream: install
	@test -d $(UPSTREAM_TESTS)/tests || { echo "error: $(UPSTREAM_TESTS)/tests is missing: run" \
		"$(PY) patches/solo_patch.py --source <an archive or checkout of solo-learn main>" >&2; \
		exit 2; }
	cd $(UPSTREAM_TESTS) && PYTHONPATH="$(CURDIR)/patches" "$(abspath $(PY))" -m pytest -q -rs \
		-p no:cacheprovider -p upstream_tests $(UPSTREAM_SUITES)

bench: install
	$(PY) benchmarks/meta_step.py
	$(PY) benchmarks/augment.py
	$(PY) benchmarks/epoch_overhead.py --arms base,iclmsr,stages1,stages1_batch50,every4
	$(PY) benchmarks/distributed_step.py

# One GPU, under 8 minutes, nothing downloaded: solo's CIFAR SimCLR and BYOL configs through
# `solo-iclmsr pretrain` on the built-in set, the meta step's cost and fidelity, the
# augmentation against Kornia; the report in benchmarks/results/gpu/gpu_check.md.
gpu-check: install
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info
