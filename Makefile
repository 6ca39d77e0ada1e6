# crmt: the front door. Every target creates or updates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXP ?= crmt_jt
CKPT ?=
RUN ?=
RESUME ?=
EXPS ?=
SWEEP ?= crmt_rho
SWEEP_ID ?=
ARGS ?=
PYTEST_ARGS ?=
DATA ?=
ROOT ?=
WORKERS ?= 2
SEEDS ?= 5
SUITE ?=
ENCODER ?=

.DEFAULT_GOAL := help
.PHONY: help install train eval validate predict compare sweep agent test test-full bench bench-scale clean prepare

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: EXP=<experiment name in experiments/> ARGS='<LightningCLI overrides>' PYTHON=python3"
	@echo "             RUN=<run id or folder under runs/crmt/> CKPT=last|best|<file> (eval, validate, predict)"
	@echo "             DATA=<data config in experiments/data/> (default: the embedded data; train, eval, validate, compare)"
	@echo "             ENCODER=lipschitz (1-Lipschitz encoders, sound certified radii: experiments/encoders/; train, compare)"
	@echo "             SCALE=<experiments/scale/ name> (default: paper for a real dataset, none for embedded* and manifest; SCALE= for none)"
	@echo "             DATA=ks|vggsound|ucf101|cremad ROOT=<downloaded media folder> WORKERS=<decoding processes> (make prepare)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## create/update the virtual environment in .venv
	@$(BIN)/python -c "import torch, torchaudio, lightning, av, wandb; print('torch', torch.__version__, '| torchaudio', torchaudio.__version__, '| lightning', lightning.__version__, '| av', av.__version__, '| wandb', wandb.__version__)"

# The --config files of EXP on DATA (at SCALE, with ENCODER's overlay), composed by src/crmt/experiments.py (as for make compare).
CONFIGS = $(shell $(BIN)/python -m crmt.experiments $(EXP) $(if $(DATA),--data $(DATA)) $(if $(ENCODER),--encoder $(ENCODER)) $(if $(filter-out undefined default,$(origin SCALE)),--scale '$(SCALE)'))
CONFIG_ERROR = $(error no configuration for EXP=$(EXP) $(if $(DATA),DATA=$(DATA)): see the message above)
DATA_CONFIG = $(shell $(BIN)/python -c "from crmt.experiments import data_config; print(data_config('$(DATA)'))")
# eval/validate: RUN= rebuilds that run from its own config.yaml (CKPT= names the checkpoint: last, best or a file);
# without RUN, the configs of EXP (and DATA) with CKPT=<checkpoint file>, refused if written by another experiment.
FROM_RUN_OR_EXP = $(if $(RUN),--run $(RUN) $(if $(CKPT),--checkpoint $(CKPT)),$(if $(CKPT),$(or $(CONFIGS),$(CONFIG_ERROR)) --ckpt_path $(CKPT),$(error make $(1) needs RUN=<run id or folder> (or EXP=<experiment> CKPT=<checkpoint file>))))

train: $(STAMP) ## train experiments/$(EXP).yaml (fit, then test) on DATA, e.g. make train EXP=crmt_at DATA=ks ARGS="--trainer.max_epochs 3"; RESUME=last continues the newest run of the same configs
	$(BIN)/python -m crmt fit $(or $(CONFIGS),$(CONFIG_ERROR)) $(if $(RESUME),--resume $(RESUME)) $(ARGS)

eval: $(STAMP) ## robustness report of a finished run, rebuilt from its folder: make eval RUN=<run id or folder> [CKPT=last|best|<file>] (into <run>/eval/<checkpoint>/); or EXP=... [DATA=...] CKPT=<file>
	$(BIN)/python -m crmt test $(call FROM_RUN_OR_EXP,eval) $(ARGS)

validate: $(STAMP) ## validation metrics of a finished run: make validate RUN=<run id or folder> [CKPT=last|best|<file>]; or EXP=... CKPT=<file>
	$(BIN)/python -m crmt validate $(call FROM_RUN_OR_EXP,validate) $(ARGS)

predict: $(STAMP) ## one row per clip (class, probabilities, smoothed class or abstain) into <run>/predictions/<checkpoint>.csv: make predict RUN=<run id or folder> [CKPT=...] [DATA=<data config>, e.g. your manifest's]
	@test -n "$(RUN)" || { echo "make predict needs RUN=<run id or folder> (see runs/crmt/)"; exit 2; }
	$(BIN)/python -m crmt predict --run $(RUN) $(if $(CKPT),--checkpoint $(CKPT)) $(if $(DATA),--config $(call DATA_CONFIG)) $(ARGS)

compare: $(STAMP) ## train EXPS (default: every strategy) over seeds 0..SEEDS-1 on DATA (default: embedded; a real dataset at the paper's scale): mean +/- std tables, orderings judged on the adaptive suite (SUITE=, default standard) with the difference each could detect; SEEDS=5 by default (power >= 0.9 for the headline orderings): make compare EXPS="jt crmt_jt crmt_at" SUITE=medium
	$(BIN)/python -m crmt.compare $(EXPS) --seeds $(SEEDS) $(if $(DATA),--data $(DATA)) $(if $(ENCODER),--encoder $(ENCODER)) $(if $(SUITE),--suite $(SUITE)) $(if $(ARGS),--args "$(ARGS)")

sweep: $(STAMP) ## create the W&B sweep experiments/sweeps/$(SWEEP).yaml (needs `wandb login`)
	$(BIN)/wandb sweep experiments/sweeps/$(SWEEP).yaml

agent: $(STAMP) ## run trials of a created sweep with this project's Python: make agent SWEEP_ID=<entity/project/id>
	@test -n "$(SWEEP_ID)" || { echo "make agent needs SWEEP_ID=<entity/project/id> (printed by make sweep)"; exit 2; }
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/wandb agent $(SWEEP_ID)

prepare: $(STAMP) ## decode a dataset once into its cache (resumable): make prepare DATA=ks ROOT=/data/ks/videos [ARGS="--set train_list=..."]
	@test -n "$(DATA)" || { echo "make prepare needs DATA=ks|vggsound|ucf101|cremad (the data config experiments/data/<DATA>.yaml)"; exit 2; }
	$(BIN)/python -m data_modules.prepare $(DATA) $(if $(ROOT),--root $(ROOT)) --workers $(WORKERS) $(ARGS)

test: $(STAMP) ## run the test suite without the tests marked slow (includes one end-to-end CRMT fit and the DDP run)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-full: $(STAMP) ## run every test, slow ones included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) ## benchmarks as speed ratios: tau~ estimator and cached step 2, report, smoothing and the adaptive suite vs l2-PGD pass, sound certificate vs smoothing, loader vs training
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.report
	$(BIN)/python -m benchmarks.smoothing
	$(BIN)/python -m benchmarks.adaptive
	$(BIN)/python -m benchmarks.sound_certificate --sizes embedded
	$(BIN)/python -m benchmarks.loader

bench-scale: $(STAMP) ## step-1 clips/s (Lightning vs plain loop, fp32 vs bf16), tau~ loop vs batched, step 2 vs step 1, memory; ARGS="--paper-sizes" for K=31, 224x224, ResNet18 w64
	$(BIN)/python -m benchmarks.scale $(ARGS)

clean: ## remove generated data, runs and caches (keeps .venv)
	rm -rf data runs wandb .pytest_cache
