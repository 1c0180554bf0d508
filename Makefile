# mpruner — build, test, demo.
#   make test    fresh machine -> venv, torch, test deps, build, pytest + ctest
#   make demo    the MPruner method end to end on a real pretrained model
#
# Variables (override on the command line or in the environment):
#   PYTHON      interpreter used to create the venv   (python3)
#   VENV        virtual environment directory          (.venv)
#   TORCH_SPEC  torch to install when the venv has none (torch==2.13.0, the CPU build)
#   PYTEST_ARGS extra pytest arguments
#   CTEST       1 to build the CMake/libtorch target and run ctest (1)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
CTEST ?= 1
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
PIP := $(PY) -m pip
CMAKE_BUILD ?= build-cmake/$(notdir $(VENV))

.PHONY: venv deps build test pytest ctest demo bench info clean

venv:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC)"; $(PIP) install -q "$(TORCH_SPEC)"; }

# torch first, so nothing below swaps in another torch build.
deps: venv
	@cmp -s requirements-test.txt $(VENV)/.mpruner-deps || { \
	  $(PIP) install -q -r requirements-test.txt && cp requirements-test.txt $(VENV)/.mpruner-deps; }

build: deps
	$(PIP) install -q --no-build-isolation -e . -v 2>&1 | grep -E "^  |mpruner build|error|Error" | grep -v "^  Running\|Preparing\|Building\|Created\|Stored\|Successfully" || true
	@$(PY) -c "import mpruner._C" || { echo "mpruner._C failed to build or import; rerun: $(PIP) install --no-build-isolation -e . -v"; exit 1; }
	@$(PY) -m mpruner info

pytest: build
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

ctest: build
	@if [ "$(CTEST)" = "1" ]; then \
	  mkdir -p $(CMAKE_BUILD) && \
	  cmake -S . -B $(CMAKE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	    -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
	    -DPython_EXECUTABLE=$(PY) >$(CMAKE_BUILD).log 2>&1 || { cat $(CMAKE_BUILD).log; exit 1; }; \
	  cmake --build $(CMAKE_BUILD) >>$(CMAKE_BUILD).log 2>&1 || { tail -50 $(CMAKE_BUILD).log; exit 1; }; \
	  ctest --test-dir $(CMAKE_BUILD) --output-on-failure; \
	fi

test: pytest ctest

demo: build
	$(PY) -m mpruner demo $(DEMO_ARGS)

bench: build
	$(PY) -m pytest benchmarks/ --benchmark-only -q

info: build

clean:
	rm -rf build build-cmake mpruner/_C*.so *.egg-info
