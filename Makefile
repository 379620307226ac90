# The two commands of the quick start: `make demo` and `make test`.
# the first interpreter that runs and is 3.11 or 3.12 (mediapipe 0.10.21 has no 3.13 wheel)
PY ?= $(shell for p in python3.11 python3.12 python3; do $$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test bench install clean

$(VENV)/.installed: pyproject.toml
	@test -n "$(PY)" || { echo "vidbatch needs Python 3.11 or 3.12 (mediapipe 0.10.21 has no other wheels); install one or set PY=..."; exit 2; }
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
