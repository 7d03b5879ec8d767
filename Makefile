# The two commands of the README: `make run` and `make test`.
# Both create .venv and install ETS into it with a non-editable
# `pip install .` (the path users take), then regenerate Twisted's plugin cache.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# What the tests import from the project tree besides the installed package.
TEST_DEPS := hypothesis

.PHONY: run test install system-deps browser-test clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PIP) install . $(TEST_DEPS)
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

run: install
	@a="$${LISTEN_ADDR:-:8080}"; case "$$a" in tcp:*|tcp6:*) p="$${a#*:}"; p="$${p%%:*}";; *) p="$${a##*:}";; esac; \
	echo "ETS: http://localhost:$$p/health  (SDK: /sdk/tvm.mjs)"; \
	echo "Demo (development mode, no configuration): open http://localhost:$$p/demo/"
	$(VENV)/bin/twistd -n --pidfile= ets

# Debian packages the tests run as real programs (Chromium, nginx, Redis, wrk).
system-deps:
	scripts/system-deps.sh

test: system-deps install
	$(PY) -m twisted.trial -j2 tests
	cd sdk && node --test test/
	$(MAKE) --no-print-directory browser-test INSTALLED=1

# The SDK in headless Debian Chromium (never a downloaded browser) and in
# Node.js, against real twistd processes of the installed package.
CHROMIUM ?= /usr/bin/chromium
browser-test: $(if $(INSTALLED),,install)
	@test -x "$(CHROMIUM)" || { echo "browser-test: no Chromium at $(CHROMIUM): run scripts/system-deps.sh (make test does), or set CHROMIUM=/path" >&2; exit 1; }
	cd tests/browser && npm ci --no-audit --no-fund && CHROMIUM="$(CHROMIUM)" node --test

# The benchmark (not part of `make test`): wrk, nginx and ETS on loopback,
# ETS pinned to core 0; writes docs/BENCHMARKS.md. Bounded by BENCH_SECONDS
# per run (default 10) and BENCH_REPEAT (default 3): about 8 minutes.
# It runs in its own venv made from BENCH_PYTHON: by default Debian's
# /usr/bin/python3.11 when there is one (a production build of CPython,
# as a deployment would run; pyenv's or a source build without PGO is
# slower), else $(PYTHON). The issuance case is run with .venv's too.
BENCH_PYTHON ?= $(shell test -x /usr/bin/python3.11 && /usr/bin/python3.11 -c "import venv" 2>/dev/null && echo /usr/bin/python3.11 || echo $(PYTHON))
BENCH_VENV := .venv-bench

bench: system-deps install
	test -x $(BENCH_VENV)/bin/python || $(BENCH_PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip --disable-pip-version-check -q install .
	$(BENCH_VENV)/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	BENCH_COMPARE_TWISTD=$(CURDIR)/$(VENV)/bin/twistd $(BENCH_VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info _trial_temp* twisted/plugins/dropin.cache
	rm -rf tests/browser/node_modules tests/browser/out
