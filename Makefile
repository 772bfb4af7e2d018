# edge_seg: `make demo` and `make test` each work on a fresh machine (they run `install` first).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
APT_PKGS := mosquitto mosquitto-clients chromium prometheus postgresql
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test bench model lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[device,convert,cloud,dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/edge-seg demo --out out

test: install
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(VENV)/bin/edge-seg bench --threads 1 --loop-frames 1500

model: install
	$(PY) -m converters.default_model --out edge_seg/models/default

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf out build *.egg-info .pytest_cache
