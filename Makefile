# Two commands matter: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
APT_PACKAGES := redis-server chromium
# GStreamer's webrtcbin under the system python3: the interop tests' WHIP/WHEP peer.
GST_PACKAGES := gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-nice python3-gi \
	gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0

.PHONY: demo test lint bench system venv clean

system:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null 2>&1 || missing="$$missing redis-tools"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	for p in $(GST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	command -v nginx >/dev/null 2>&1 || missing="$$missing nginx"; \
	test -e /usr/lib/nginx/modules/ngx_rtmp_module.so || missing="$$missing libnginx-mod-rtmp"; \
	command -v turnserver >/dev/null 2>&1 || missing="$$missing coturn"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	$(PYTHON) -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@echo "==> creating virtualenv in $(VENV) and installing Python packages"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

# The lean viewer path's C send loop (media/fastsend.py), built once into ~/.cache/showroom
# (`system` installs a C compiler and Python's headers for it); without them the server
# runs its slower Python loop instead.
venv: $(STAMP)
	@$(BIN)/python -m media.fastsend

# make demo PORT=9000 HOST=0.0.0.0 (the latter prints the address to open on a phone)
PORT ?= 8080
HOST ?= 127.0.0.1
demo: system venv
	@$(BIN)/showroom demo --port $(PORT) --host $(HOST)

# Two pytest processes: most tests wait on peers, browsers and timers, so two share the
# two cores of a small machine well. The benchmark smoke runs (one xdist group) take turns.
TEST_JOBS ?= 2
test: system venv
	@echo "==> running the test suite on $(TEST_JOBS) processes (real redis-server, localstripe, aiortc peers, headless chromium)"
	@$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadgroup $(PYTEST_ARGS)

lint: venv
	@$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: venv
	@$(BIN)/python -m load_tests.report

clean:
	rm -rf $(VENV) var build *.egg-info tests/artifacts
