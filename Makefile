# The two commands of the quick start: `make demo` and `make test`.
PY ?= $(shell command -v python3.12 || command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test bench install clean

$(VENV)/.installed: pyproject.toml
	@$(PY) -c 'import sys; v=sys.version_info; sys.exit(0 if (3,11) <= v[:2] <= (3,12) else "vidbatch needs Python 3.11 or 3.12 (mediapipe 0.10.21 has no wheel for %d.%d); set PY=python3.11" % v[:2])'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	@touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -c "from vidbatch.synth import make_demo_clips; print('\n'.join(make_demo_clips('build/demo/clips')))"
	$(BIN)/vidbatch run configs/examples/demo.yaml

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test-installed
	$(BIN)/python -m bench

clean:
	rm -rf build .pytest_cache
