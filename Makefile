# Two commands: `make run` starts Atelier, `make test` checks it. Everything they need is
# installed here, inside the project (.venv, node_modules), plus Debian's python3-venv.
VENV := .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test test-fast lint install system clean

run: install
	$(BIN)/atelier run

# Two pytest-xdist workers: most of a hub's test is waiting (for JupyterLab, sshd, a model
# server), so two keep two cores busy. A module runs whole on one worker, in the order of the
# files (tests/conftest.py groups them; the Docker modules share one worker, and its engine).
PARALLEL := -n 2 --no-loadscope-reorder

test: install lint
	$(BIN)/pytest -ra --durations=15 $(PARALLEL)

test-fast: install
	$(BIN)/pytest -ra -m "not e2e" $(PARALLEL)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

install: system $(BIN)/.installed node_modules/.installed

# The local backend builds image environments from the system Python, which every
# instance account can read (a Python under /root is not readable by them).
# Work volumes are XFS filesystems in loop-mounted files (xfsprogs). Instances run OpenSSH's
# sshd behind the SSH gateway (openssh-server; policy-rc.d keeps Debian from starting the
# system's own sshd on port 22); the tests use the real ssh, scp and sftp, and drive pages in
# a headless Chromium. The Docker backend (and its tests) use Debian's docker.io; its base image
# is made with debootstrap (no Docker Hub); its saved images go to Debian's docker-registry,
# which the hub runs itself.
SYSTEM_PACKAGES := python3-venv xfsprogs openssh-server openssh-client chromium chromium-driver \
	docker.io debootstrap docker-registry

system:
	@/usr/bin/python3 -c "import ensurepip, venv" 2>/dev/null && command -v mkfs.xfs >/dev/null \
		&& test -x /usr/sbin/sshd && command -v scp >/dev/null && command -v chromedriver >/dev/null \
		&& test -x /usr/sbin/dockerd && test -x /usr/sbin/debootstrap \
		&& test -x /usr/bin/docker-registry || \
		(apt-get update -qq && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
		&& chmod +x /usr/sbin/policy-rc.d \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
		status=$$?; rm -f /usr/sbin/policy-rc.d; exit $$status)

# uv installs (pip bootstraps it), with pip's configuration carried over (spawner/local/installer.py)
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv
	$(BIN)/python spawner/local/installer.py -e '.[test]'
	$(BIN)/pip uninstall -q -y rfc3987-syntax  # 2 s of every hub start (spawner/local/envs.py)
	touch $@

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) node_modules
