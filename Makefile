# MetaSym developer entry points. `make test` and `make demo` are all a user needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The venv is rebuilt only when requirements.txt or setup.py change.
DEPS_HASH := $(shell cat requirements.txt setup.py | sha256sum | cut -c1-16)
DEPS_STAMP := $(VENV)/.deps-$(DEPS_HASH)

.PHONY: all venv native interfaces test test-fast lint demo demo-control bench clean

all: venv native interfaces

venv: $(DEPS_STAMP)

$(DEPS_STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[make] installing pinned dependencies into $(VENV) (first run only, ~2 min)"
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
		--config-settings editable_mode=compat -e .
	@rm -f $(VENV)/.deps-*
	@touch $@
	@# `pip install -e .` just compiled the rollout kernel in place: `make native` need not do it again
	@touch $(NATIVE_STAMP)

# The compiled rollout kernel (metasym_core/models/csrc), rebuilt in place when its sources change.
NATIVE_STAMP := $(VENV)/.native-stamp
NATIVE_INPUTS := $(wildcard metasym_core/models/csrc/*.c metasym_core/models/csrc/*.h)

native: $(NATIVE_STAMP)

$(NATIVE_STAMP): $(DEPS_STAMP) $(NATIVE_INPUTS)
	@echo "[make] compiling the rollout kernel"
	@$(PY) setup.py -q build_ext --inplace
	@touch $@

# ROS 2 interfaces (metasym_ros msg/srv) built into the venv with the system cmake;
# rebuilt when their inputs change or after the wheels were reinstalled.
ROS_IFACE_STAMP := $(VENV)/.ros-interfaces-stamp
ROS_IFACE_INPUTS := package.xml CMakeLists.txt metasym_ros/__init__.py tools/build_interfaces.sh \
	$(wildcard msg/*.msg srv/*.srv)

interfaces: $(ROS_IFACE_STAMP)

$(ROS_IFACE_STAMP): $(DEPS_STAMP) $(ROS_IFACE_INPUTS)
	@echo "[make] building the metasym_ros ROS 2 interfaces into $(VENV)"
	@tools/build_interfaces.sh $(VENV)
	@touch $@

lint: venv
	$(VENV)/bin/ruff check metasym_core metasym_ros test launch setup.py

# the whole suite (what CI runs)
test: venv native interfaces lint
	$(PY) -m pytest -q --durations=10 test

# the development tier: everything but the tests marked slow (pyproject.toml)
test-fast: venv native interfaces lint
	$(PY) -m pytest -q -m "not slow" test

# Offline: simulate quadrotors, meta-train (cached in runs/demo), adapt to unseen ones, plot.
# Then online: fly the ROS graph 30 s with a +30 % mass change at 10 s, adapting live.
demo: venv native interfaces
	$(VENV)/bin/metasym demo
	$(VENV)/bin/metasym flight --checkpoint runs/demo/run/final.pt

# The closed loop, lock-stepped: MPPI on MetaSym flies a figure-8 through a +30 % mass change, next to the
# nominal-model MPC, MPPI on the nominal physics and the oracle (one seed; `metasym bench control` runs five).
demo-control: venv native interfaces
	$(VENV)/bin/metasym bench control --seeds 1 --doc runs/demo-control/summary.md --plot runs/demo-control/closed_loop.png

bench: venv native
	$(VENV)/bin/metasym bench rollout

clean:
	rm -rf build
