# cemap: `make help` lists the targets. Everything runs inside .venv, created on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
TEST_JOBS ?= 2
PROFILE ?=
# PROFILE=bench (the shipped bench zoo, no training: the default of every reproduce-* target; a test whose models do
# not ship yet is reported NOT TESTABLE with the missing ones named) | tiny (trains tiny models on the CPU in minutes;
# the only profile of four ablations, which have no bench geometry) | paper (the authors' checkpoints in CKPT_DIR, on
# a GPU); IMAGES=a folder of test images for the paper profile (e.g. the demo
# images); PATCHES=the intervention patch pool (an npz bank, a folder of patches, or a folder of full images to crop
# from, e.g. DIV2K_train_HR); SUBJECTS=map only these of the profile's subjects, comma-separated (e.g. the global
# models first on a GPU); JOBS=parallel map jobs (one thread each; 2 for these 2-core machines, 1 on a GPU)
IMAGES ?=
PATCHES ?=
SUBJECTS ?=
JOBS ?= 2
RUNNER := $(PY) experiments/runner.py --jobs $(JOBS) $(if $(IMAGES),--images-dir $(IMAGES)) $(if $(PATCHES),--patches $(PATCHES)) \
	$(if $(SUBJECTS),--subjects $(SUBJECTS))

.DEFAULT_GOAL := help

help: ## Show this help (variables: PROFILE=bench|tiny|paper, JOBS, CKPT_DIR=authors' checkpoints (paper: GPU), IMAGES=image folder, PATCHES=patch pool, SUBJECTS=some subjects only)
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation basicsr==1.4.2
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP) ## Create or refresh .venv with the pinned dependencies
	@echo "venv ready: $(VENV)"

test: $(STAMP) ## Run the fast test suite (what CI runs; TEST_JOBS=2 workers, TEST_JOBS=0 for one process)
	$(PY) -m pytest -q -n $(TEST_JOBS) $(PYTEST_ARGS)

test-slow: $(STAMP) ## Run only the slow tests
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-all: $(STAMP) ## Run every test, slow ones included
	$(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

bench: $(STAMP) ## CEM loop throughput against pure forward throughput (prints ratios)
	$(PY) benchmarks/bench_cem.py

bench-all: bench ## Also locality, adaptive, precision and the full demo on the real DnCNN (needs ../shared, ~20 min CPU)
	$(PY) benchmarks/bench_locality.py
	$(PY) benchmarks/bench_adaptive.py
	$(PY) benchmarks/bench_precision.py
	$(PY) benchmarks/bench_demo.py

bench-gpu: $(STAMP) ## The engine's GPU figures in one script: loop/forward ratios (DN, SR), the paper's demo (needs CUDA and ../shared)
	bash benchmarks/gpu_check.sh

demo: $(STAMP) ## The paper's denoising demo map on the real DnCNN (needs ../shared/reference)
	$(PY) -m cemap.run model=dncnn ckpt=../shared/reference/dncnn_color_blind.pth task=denoise \
		image=../shared/reference/images/demo_2.png roi.x=96 roi.y=152 roi.size=32 \
		cem.block_size=8 cem.estimator=reference cem.n_samples=50 seed=0 device=auto \
		patches.source=npz patches.path=../shared/reference/div2k_patches_8px.npz

reproduce-denoise: $(STAMP) ## Insight 2 on denoisers (main job; bench models, no training): sweep, analyse -> results/dn_channel_attention/bench
	$(RUNNER) dn_channel_attention --profile $(or $(PROFILE),bench)

reproduce-sr: $(STAMP) ## Insight 1: receptive field sweeps in SR (bench FSRCNN / EDSR sweeps, no training) -> results/sr_receptive_field/bench
	$(RUNNER) sr_receptive_field --profile $(or $(PROFILE),bench)

reproduce-derain: $(STAMP) ## Insight 2 carried to deraining -> results/dr_channel_attention
	$(RUNNER) dr_channel_attention --profile $(or $(PROFILE),bench)

reproduce-multitask: $(STAMP) ## Insight 3: single-task vs multi-task models -> results/mt_multitask_locality
	$(RUNNER) mt_multitask_locality --profile $(or $(PROFILE),bench)

# ab_power has bench geometry; the other four ablations tiny and paper only (PROFILE=bench runs them tiny)
AB_PROFILE = $(if $(filter paper,$(PROFILE)),paper,tiny)
reproduce-ablations: $(STAMP) ## Block size, patch source, samples per block, coarse-to-fine rule, power of the reach tests -> results/ab_*
	$(RUNNER) ab_power --profile $(or $(PROFILE),bench)
	$(RUNNER) ab_block_size --profile $(AB_PROFILE)
	$(RUNNER) ab_patch_source --profile $(AB_PROFILE)
	$(RUNNER) ab_samples --profile $(AB_PROFILE)
	$(RUNNER) ab_coarse_to_fine --profile $(AB_PROFILE)

reproduce-all: reproduce-denoise reproduce-sr reproduce-derain reproduce-multitask reproduce-ablations ## Every insight and ablation

ZOO_ARGS ?=
train-zoo: $(STAMP) ## Retrain the bench zoo (conf/zoo/bench.yaml; GPU when present, resumable) and compare with what ships -> results/zoo/retrain_table.md
	$(PY) experiments/train_zoo.py train $(ZOO_ARGS)
	$(PY) experiments/train_zoo.py compare

WHEEL_PLATFORMS := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
notebook: $(STAMP) ## Execute notebooks/explore_cem.ipynb (nbclient, no Jupyter server) into outputs/notebooks/
	$(PY) experiments/run_notebook.py

gpu-wheels: $(STAMP) ## Wheels the device tool's GPU machine lacks (hydra, omegaconf, basicsr, ...) into .whl/ (git-ignored)
	@grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: $(WHEEL_PLATFORMS) -d .whl \
		$$(grep -iE '^(hydra-core|omegaconf|addict|future|lmdb|yapf|platformdirs)==' requirements.lock)
	$(PY) -m pip wheel --quiet --no-deps -w .whl $$(grep -iE '^antlr4-python3-runtime==' requirements.lock)
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w .whl basicsr==1.4.2

train-table: $(STAMP) ## Train every family's tiny preset and tabulate quality vs baselines -> results/training
	$(PY) experiments/tiny_training.py

lock: $(STAMP) ## Rewrite requirements.lock from the current .venv
	@{ head -3 requirements.lock; $(PY) -m pip freeze --exclude-editable | grep -iv '^basicsr=='; } > requirements.lock.new && mv requirements.lock.new requirements.lock

clean: ## Remove caches and outputs (keeps .venv)
	rm -rf outputs multirun .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help venv test test-slow test-all bench bench-all bench-gpu demo lock clean train-table reproduce-denoise reproduce-sr \
	reproduce-derain reproduce-multitask reproduce-ablations reproduce-all
