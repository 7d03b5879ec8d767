# The two commands of the README: `make run` and `make test`.
# Both create .venv and install ETS into it with a non-editable
# `pip install .` (the path users take), then regenerate Twisted's plugin cache.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# What the tests import from the project tree besides the installed package.
TEST_DEPS := hypothesis

.PHONY: run test install unit e2e sdk-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PIP) install . $(TEST_DEPS)
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

run: install
	@echo "ETS: http://localhost:$${LISTEN_PORT:-8080}/health  (SDK: /sdk/tvm.mjs)"
	$(VENV)/bin/twistd -n --pidfile= ets

test: install
	$(PY) -m twisted.trial -j2 tests
	cd sdk && node --test test/

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp* twisted/plugins/dropin.cache
