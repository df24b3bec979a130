# Set-up and everyday commands. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The default install runs models without torch (ONNX Runtime, OpenVINO). torch is the [torch]
# extra, which the tests install (export, checkpoints, the reference the runtime is compared
# against); pinned for reproducible installs; override for another platform, e.g.
#   make test TORCH="torch torchvision"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# A second, torch-free environment: the test that the default install runs the whole CLI.
LITE   ?= .venv-lite
# The model `make run` uses. The default downloads real CLIP weights once (~600 MB); without a
# network, use MODEL=test-tiny (random weights: the app works, rankings are meaningless).
MODEL  ?=
SAMPLE_LIBRARY ?= $(HOME)/.local/share/clipdesk/sample-library

.PHONY: run test e2e bench install install-test clean dist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e '.[test,cluster,int8]'
	touch $@

$(LITE)/.installed: pyproject.toml
	$(PYTHON) -m venv --clear $(LITE)
	$(LITE)/bin/python -m pip install --quiet --upgrade pip
	$(LITE)/bin/python -m pip install --quiet -e .
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test $(LITE)/.installed

# Qt's X11 plugin needs system libraries that PySide6 does not ship: say which, instead of a Qt abort.
run: install
	@$(BIN)/python scripts/check_qt_deps.py; [ $$? -ne 1 ]
	$(BIN)/clipdesk-gui --library "$(SAMPLE_LIBRARY)" --add-folder assets/sample $(if $(MODEL),--model $(MODEL))

# Two test processes at least (most tests wait on subprocesses: a second process fills the gaps),
# one per core up to 4; a test file runs in one process (its module fixtures are built once).
TEST_PROCS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -lt 2 ] && n=2; [ $$n -gt 4 ] && n=4; echo $$n)
test: install-test
	CLIPDESK_LITE_PYTHON=$(abspath $(LITE))/bin/python QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -m "not slow" --ignore=tests/e2e -n $(TEST_PROCS) --dist worksteal

# The teach loop in a real window under Xvfb, driven with xdotool (Debian: xvfb xdotool).
# Screenshots of every step go to $(E2E_OUT)/<run>/screenshots.
E2E_OUT ?= e2e-out
e2e: install-test
	@$(BIN)/python scripts/check_qt_deps.py; [ $$? -ne 1 ]
	E2E_OUT=$(abspath $(E2E_OUT)) $(BIN)/python -m pytest tests/e2e -s

bench: install-test
	CLIPDESK_LITE_PYTHON=$(abspath $(LITE))/bin/python $(BIN)/python benchmarks/bench_runtime.py
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/bench_duplicates.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_gui_scale.py
	$(BIN)/python benchmarks/bench_ray.py
	$(BIN)/python benchmarks/bench_fewshot.py
	$(BIN)/python benchmarks/bench_calibration.py
	$(BIN)/python benchmarks/bench_auto.py
	$(BIN)/python benchmarks/bench_auto_scale.py

# The self-contained Linux app (packaging/): build/dist/clipdesk/ (an AppDir-ready folder), a .tar.gz
# and a .deb, frozen by PyInstaller from the default install in a venv of its own (never torch).
DIST_VENV   ?= build/dist-venv
PYINSTALLER ?= pyinstaller==6.22.*
$(DIST_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --clear $(DIST_VENV)
	$(DIST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DIST_VENV)/bin/python -m pip install --quiet . "$(PYINSTALLER)"
	touch $@
dist: $(DIST_VENV)/.installed
	$(DIST_VENV)/bin/python -m pip install --quiet --no-deps --force-reinstall .
	@if $(DIST_VENV)/bin/python -c "import torch" 2>/dev/null; then echo "torch is in $(DIST_VENV): the bundle is built from the default install only"; exit 1; fi
	$(DIST_VENV)/bin/python packaging/build.py

clean:
	rm -rf $(VENV) $(LITE) build *.egg-info .pytest_cache
