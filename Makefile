# bandersnake set-up and entry points. `make demo` and `make test` do all the set-up they need
# on a fresh Debian machine with Python >= 3.11, and are quick when it is already done.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
WARM_STAMP := $(VENV)/.warm-stamp
# Sources of the numba code (and the constants frozen into it): a change recompiles at set-up.
NUMBA_SOURCES := $(addprefix workflow/bandersnake/, photometry/aperture.py photometry/centroid.py \
	photometry/kernel.py calibration/combine.py calibration/reduce.py calibration/cosmics_series.py flags.py)
CORES ?= 2
DEMO_NIGHT := SPIRIT2_20251215
# Debian packages the tests use: astrometry.net with the Tycho-2 index files (plate solving),
# chromium (report rendering test). SLURM is installed by the SLURM test's start script.
APT_PACKAGES := astrometry.net astrometry-data-tycho2-08 astrometry-data-tycho2-09 astrometry-data-tycho2-10-19 chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup warm system-packages demo test test-fast lint format clean

setup: $(STAMP) $(WARM_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "bandersnake needs Python >= 3.11"'
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Compile the numba code once, here, rather than in the user's first night (~40 s of its
# photometry job): a tiny simulated night runs through the workflow (bandersnake.warmup).
warm: $(WARM_STAMP)

# A failed warm-up does not stop the set-up (the first night then compiles); it is retried next time.
$(WARM_STAMP): $(STAMP) $(NUMBA_SOURCES)
	PYTHONPATH=workflow $(BIN)/python -m bandersnake.warmup --cores $(CORES) && touch $(WARM_STAMP) \
		|| echo "make warm: warm-up failed (see above); numba compiles in the first night instead"

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: setup
	$(BIN)/snakemake --cores $(CORES) simulate_demo
	$(BIN)/snakemake --cores $(CORES) results/$(DEMO_NIGHT)/
	@echo "demo night built: results/$(DEMO_NIGHT)/ (summary: results/$(DEMO_NIGHT)/night_summary.txt)"

test: setup system-packages
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/

format: setup
	$(BIN)/snakefmt Snakefile rules/

clean:
	rm -rf work results demo .snakemake
