# cjs-proxy: `make run` starts a proxy on 127.0.0.1:8080, `make test` runs every test.
# Both create .venv and install what they need; only Python 3 is required.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test unit functional lint settings-table readme-table clean bench

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "python3 -m venv failed: installing python3-venv"; \
	    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); \
	  else \
	    echo "python3 -m venv failed: install your distribution's python3-venv package" >&2; exit 1; \
	  fi; }

$(STAMP): $(BIN)/python setup.py constraints.txt
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[embedded,test]'
	@touch $@

run: $(STAMP)
	$(BIN)/gunicorn -c etc/gunicorn.py cjs_proxy.wsgi

test: $(STAMP)
	$(BIN)/python -m pytest tests

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

functional: $(STAMP)
	$(BIN)/python -m pytest tests/functional

lint: $(STAMP)  # ruff everywhere, mypy on the package and the worker class (mypy.ini)
	$(BIN)/ruff check cjs_proxy workers tests etc bench setup.py
	$(BIN)/mypy cjs_proxy workers

settings-table: $(STAMP)
	@$(BIN)/cjs-proxy settings

readme-table: $(STAMP)  # rewrite README.md's settings table from the registry
	$(BIN)/cjs-proxy settings --readme README.md

bench: $(STAMP)  # cjs-proxy vs the backend alone vs nginx vs the gevent floor on loopback (~4 min); see bench/NOTES.md
	@if ! command -v wrk >/dev/null || ! PATH="$$PATH:/usr/sbin:/sbin" command -v nginx >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing wrk and nginx (Debian packages)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null; \
	  else \
	    echo "make bench needs wrk and nginx: apt-get install wrk nginx" >&2; exit 1; \
	  fi; fi
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null && [ -x $(BIN)/py-spy ] || \
	  $(BIN)/python -m pip install -q -r bench/requirements.txt
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
