# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv and install the project (with the local torch pins) when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

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
test: $(STAMP)
	slurm/local/with_cluster.sh $(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow and not slurm"

clean:
	rm -rf $(VENV) build *.egg-info
