# qacloud — the two commands of the README, plus helpers. Each target installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: deps demo demo-stop test lint format bench lock clean

deps:
	@./scripts/bootstrap.sh

demo:  # QACLOUD_DEMO_T0: the demo's summary measures "from a fresh clone, installs included"
	@T0=$$(date +%s.%N); ./scripts/bootstrap.sh && QACLOUD_DEMO_T0=$$T0 $(PY) -m lab.demo run

demo-stop: deps
	$(PY) -m lab.demo stop

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: deps
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest tests

bench: deps
	$(PY) -m bench

lock:
	$(PY) -m pip freeze --exclude-editable | sed '/^-e /d' > requirements.lock.new
	( sed -n '1,2p' requirements.lock; cat requirements.lock.new ) > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock; rm -f requirements.lock.new

clean:
	rm -rf var .pytest_cache build *.egg-info
