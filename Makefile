# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv and install the project (with the local torch pins) when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# DeepSpeed builds its CPU ops (shared-memory collectives) on first use into TORCH_EXTENSIONS_DIR; one
# folder per venv, so that two checkouts testing at once do not rebuild (and swap) each other's build.
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: venv demo test test-fast clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/emotrain demo

# The `slurm` tests need the local cluster: started here when it is not up (and stopped after).
# Two xdist workers by default, each module on one worker (its fixtures built once; tests/conftest.py says
# which start first); TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	slurm/local/with_cluster.sh $(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow and not slurm"

clean:
	rm -rf $(VENV) build *.egg-info
