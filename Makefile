# make run   : set up .venv and run the embedded default end to end (tables in results/tables/)
# make test  : set up .venv and run the test suite
VENV ?= .venv
CORES ?= 2
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

run: setup
	snakemake --cores $(CORES)

test: setup
	pytest -q tests
