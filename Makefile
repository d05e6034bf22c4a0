# Every target creates .venv (pip, Python 3.11) when it is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled
export WANDB_SILENT := true
export PYTHONDONTWRITEBYTECODE := 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

DATA_DIR ?= ./data
YEAR ?= 2019
FILTER ?= basic
RUNNER ?= DirectRunner
BEAM_ARGS ?=
INPUT ?=
FROM ?= crawl
POOL ?=
TIC_UIDS ?=
GRANULARITY ?= yearly
BESTPOOL_UIDS ?=
OUTPUT ?= ./candidates
Q ?= select year, count(*) as n from samples group by 1 order by 1
PYTEST_ARGS ?=

VARIANT ?= basic
BENCHMARK ?= tic-datacomp
IMAGE_ROOT ?=
FILTER_MODEL ?=
CAPTIONER ?= template:synthetic-web
PROTOCOL ?= sequential
CONFIG ?=
RUNS_ROOT = runs$(if $(filter-out tic-datacomp,$(BENCHMARK)),/$(BENCHMARK))
RUN_DIR ?= $(RUNS_ROOT)/$(PROTOCOL)
RUN ?= $(RUNS_ROOT)/sequential
RUNS ?= $(RUNS_ROOT)/sequential $(RUNS_ROOT)/cumulative-all $(RUNS_ROOT)/oracle
NPROC ?= 1
TRAIN_ARGS ?=
# make train/train-all without CONFIG: the LiT preset (a locked MiniLM text tower, docs/results.md), whose
# zero-shot classification learns on the embedded web; TRAIN_MODEL=tic-tiny-32 is the trainer's own default
TRAIN_MODEL ?= tic-lit-32
DATASET ?= synthetic-web
DATA ?=
METHOD ?=
MEMORY ?= 0
CL_ARGS ?=
PROTOCOLS ?= $(shell $(PY) -m training tic --list 2>/dev/null)
NAME ?=
UIDS ?=
WHERE ?=
ORDER ?= random
T ?= 5
FOMO_ARGS ?=
FOMO_METHOD = $(or $(METHOD),full-ft)
FOMO_RUN ?= runs/fomo-$(FOMO_METHOD)-$(ORDER)-T$(T)
FOMO_RUNS ?= $(wildcard runs/fomo-*-T*)
CL_METHOD = $(or $(METHOD),clip-replay)
# CLIP variants in FILTER without FILTER_MODEL: the default filter model is a training job, run
# between the build (rule variants only) and the CLIP filters; the builder never calls the trainer
comma := ,
space := $(subst ,, )
CLIP_VARIANTS := clip_score image_based bestpool
FILTER_LIST = $(subst $(comma), ,$(FILTER))
FILTER_JOB = $(if $(FILTER_MODEL),,$(filter $(CLIP_VARIANTS),$(FILTER_LIST)))
BUILD_FILTER = $(if $(FILTER_JOB),$(subst $(space),$(comma),$(or $(filter-out $(CLIP_VARIANTS),$(FILTER_LIST)),basic)),$(FILTER))
FILTER_MODEL_JOB = $(if $(FILTER_MODEL),,$(PY) -m training filter-model --data-dir $(DATA_DIR))
CLIP_JOBS = $(if $(FILTER_JOB),$(FILTER_MODEL_JOB) && $(PY) -m benchmark_builder filter --data-dir $(DATA_DIR) --variants $(subst $(space),$(comma),$(FILTER_JOB)) --device cpu --runner $(RUNNER) $(BEAM_ARGS))
# the run dirs of one make cil/dil: python -m training cil's default runs/<kind>-<dataset>-<method>-m<memory>
CL_RUNS_OF = $(foreach m,$(MEMORY),runs/$(1)-$(DATASET)-$(CL_METHOD)-m$(m))

.PHONY: help venv build-tic-datacomp build-tic-yfcc build-tic-redcaps retry-failed build-tic-datacomp-all benchmark-report caption filter filter-audit cil cil-compare dil fomo fomo-compare reshard train train-all eval compare crawl sql test test-slow bench clean clean-data

help: ## list every target
	@grep -hE '^[a-zA-Z_.-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-22s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock requirements-nodeps.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==25.3
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

venv: $(VENV)/.installed ## create .venv (pip, Python 3.11) from requirements.lock

build-tic-datacomp: $(VENV)/.installed ## build one year (YEAR=2019, DATA_DIR=./data, RUNNER=DirectRunner, BEAM_ARGS=...); FROM=datacomp [POOL=dir TIC_UIDS=dir GRANULARITY=monthly BESTPOOL_UIDS=f.npy]: from a DataComp pool
ifeq ($(FROM),datacomp)
	$(PY) -m benchmark_builder build tic-datacomp --from datacomp $(if $(POOL),--pool '$(POOL)') $(if $(TIC_UIDS),--tic-uids '$(TIC_UIDS)') --granularity $(GRANULARITY) $(if $(BESTPOOL_UIDS),--bestpool-uids '$(BESTPOOL_UIDS)') --data-dir $(DATA_DIR) --filter $(FILTER) --runner $(RUNNER) $(BEAM_ARGS)
else
	$(PY) -m benchmark_builder build tic-datacomp --year $(YEAR) --data-dir $(DATA_DIR) --filter $(BUILD_FILTER) $(if $(FILTER_MODEL),--model '$(FILTER_MODEL)') --runner $(RUNNER) $(BEAM_ARGS)
	$(CLIP_JOBS)
endif

build-tic-yfcc: $(VENV)/.installed ## TiC-YFCC, 2004..2014 in 4 steps [INPUT=yfcc15m.csv IMAGE_ROOT=dir]; default: the embedded fixture, offline
	$(PY) -m benchmark_builder build tic-yfcc --data-dir $(DATA_DIR) $(if $(INPUT),--input '$(INPUT)') $(if $(IMAGE_ROOT),--image-root '$(IMAGE_ROOT)') --runner $(RUNNER) $(BEAM_ARGS)

build-tic-redcaps: $(VENV)/.installed ## TiC-RedCaps, 2017..2020 [INPUT='annotations/*.json' IMAGE_ROOT=dir]; default: the embedded fixture, offline
	$(PY) -m benchmark_builder build tic-redcaps --data-dir $(DATA_DIR) $(if $(INPUT),--input '$(INPUT)') $(if $(IMAGE_ROOT),--image-root '$(IMAGE_ROOT)') --runner $(RUNNER) $(BEAM_ARGS)

retry-failed: $(VENV)/.installed ## re-fetch transient download failures of finished years (YEAR=2019), re-derive downstream
	$(PY) -m benchmark_builder build tic-datacomp --year $(YEAR) --data-dir $(DATA_DIR) --filter $(BUILD_FILTER) $(if $(FILTER_MODEL),--model '$(FILTER_MODEL)') --retry-failed --runner $(RUNNER) $(BEAM_ARGS)
	$(CLIP_JOBS)

build-tic-datacomp-all: $(VENV)/.installed ## every year 2014..2022, all variants (none, basic, clip_score, image_based, bestpool), eval sets, report
	$(PY) -m benchmark_builder build tic-datacomp --year 2022 --data-dir $(DATA_DIR) --filter basic,none --runner $(RUNNER) $(BEAM_ARGS)
	$(PY) -m benchmark_builder caption --data-dir $(DATA_DIR) --model '$(CAPTIONER)' --runner $(RUNNER) $(BEAM_ARGS)
	$(FILTER_MODEL_JOB)
	$(PY) -m benchmark_builder filter --data-dir $(DATA_DIR) $(if $(FILTER_MODEL),--model '$(FILTER_MODEL)') --runner $(RUNNER) $(BEAM_ARGS)
	$(PY) -m benchmark_builder report --data-dir $(DATA_DIR)

benchmark-report: $(VENV)/.installed ## per-year counts per stage, variant and split + PNG chart
	$(PY) -m benchmark_builder report --data-dir $(DATA_DIR)

filter: $(VENV)/.installed ## CLIP-based variants clip_score, image_based, bestpool [FILTER_MODEL=ViT-L-14:openai]
	$(FILTER_MODEL_JOB)
	$(PY) -m benchmark_builder filter --data-dir $(DATA_DIR) $(if $(FILTER_MODEL),--model '$(FILTER_MODEL)') --runner $(RUNNER) $(BEAM_ARGS)

caption: $(VENV)/.installed ## caption_generated for the pool [CAPTIONER=path/to/hf-folder | template:attrs.parquet]
	$(PY) -m benchmark_builder caption --data-dir $(DATA_DIR) --model '$(CAPTIONER)' --runner $(RUNNER) $(BEAM_ARGS)

filter-audit: $(VENV)/.installed ## per filter variant and year: fraction kept, mean CLIP score, PNG chart
	$(PY) -m benchmark_builder filter-audit --data-dir $(DATA_DIR)

reshard: $(VENV)/.installed ## variant from a DataComp uid file or SQL: make reshard NAME=x UIDS=subset.npy | WHERE="..."
	$(PY) -m benchmark_builder reshard --name '$(NAME)' --data-dir $(DATA_DIR) $(if $(UIDS),--uids '$(UIDS)') $(if $(WHERE),--where "$(WHERE)") --runner $(RUNNER) $(BEAM_ARGS)

train: $(VENV)/.installed ## one protocol over the benchmark's time steps: make train PROTOCOL=cumulative-all [BENCHMARK=tic-yfcc] [CONFIG=configs/tic-datacomp-medium.yaml] [NPROC=2] [TRAIN_ARGS="--resume"]
ifeq ($(NPROC),1)
	$(PY) -m training tic $(if $(CONFIG),--config $(CONFIG),--model $(TRAIN_MODEL)) --protocol $(PROTOCOL) --benchmark $(BENCHMARK) --data-dir $(DATA_DIR) --variant $(VARIANT) --run-dir $(RUN_DIR) $(TRAIN_ARGS)
else
	$(VENV)/bin/torchrun --standalone --nproc_per_node $(NPROC) -m training tic $(if $(CONFIG),--config $(CONFIG),--model $(TRAIN_MODEL)) --protocol $(PROTOCOL) --benchmark $(BENCHMARK) --data-dir $(DATA_DIR) --variant $(VARIANT) --run-dir $(RUN_DIR) $(TRAIN_ARGS)
endif

train-all: $(VENV)/.installed ## every TiC protocol (python -m training tic --list, or PROTOCOLS=...) into runs/<protocol>, then eval + compare
	@for p in $(PROTOCOLS); do $(MAKE) --no-print-directory train PROTOCOL=$$p RUN_DIR=$(RUNS_ROOT)/$$p TRAIN_ARGS="$(TRAIN_ARGS)" || exit 1; done
	$(PY) -m eval tic compare $(addprefix $(RUNS_ROOT)/,$(PROTOCOLS)) --benchmark $(BENCHMARK) --data-dir $(DATA_DIR) --variant $(VARIANT) --out $(RUNS_ROOT)/compare

eval: $(VENV)/.installed ## evaluate a run: make eval RUN=runs/sequential [BENCHMARK=tic-yfcc] [DATA_DIR=./data]
	$(PY) -m eval tic run $(RUN) --benchmark $(BENCHMARK) --data-dir $(DATA_DIR) --variant $(VARIANT)

compare: $(VENV)/.installed ## methods side by side: make compare RUNS="runs/a runs/b" [BENCHMARK=tic-yfcc]
	$(PY) -m eval tic compare $(RUNS) --benchmark $(BENCHMARK) --data-dir $(DATA_DIR) --variant $(VARIANT) --out $(RUNS_ROOT)/compare

fomo: $(VENV)/.installed ## FoMo-in-Flux recipe + evaluation: make fomo METHOD=ema-merge ORDER=time T=10 [FOMO_ARGS="--option decay=0.7"]
	$(PY) -m training fomo --method $(FOMO_METHOD) --order $(ORDER) --tasks $(T) --data-dir $(DATA_DIR) --variant $(VARIANT) --run-dir $(FOMO_RUN) $(FOMO_ARGS)
	$(PY) -m eval fomo compare $(FOMO_RUN) --data-dir $(DATA_DIR) --variant $(VARIANT) --out $(FOMO_RUN)/eval

fomo-compare: $(VENV)/.installed ## FoMo runs side by side + retention-vs-accumulation scatter: make fomo-compare FOMO_RUNS="runs/fomo-a runs/fomo-b"
	$(PY) -m eval fomo compare $(FOMO_RUNS) --data-dir $(DATA_DIR) --variant $(VARIANT) --out runs/fomo-compare

cil: $(VENV)/.installed ## class-incremental CL, train then evaluate (CL_ARGS: python -m training cil flags, not --run-dir): make cil [DATASET=cifar100 DATA=path] METHOD=gdro MEMORY="0 200 1000 2000"
	$(PY) -m training cil --kind cil --dataset $(DATASET) $(if $(DATA),--data '$(DATA)') --method $(CL_METHOD) --sweep-memory $(MEMORY) --data-dir $(DATA_DIR) $(CL_ARGS)
	$(PY) -m eval cil run $(call CL_RUNS_OF,cil) $(if $(word 2,$(MEMORY)),--plot runs/cil-$(DATASET)-$(CL_METHOD)-memory.png)

cil-compare: $(VENV)/.installed ## class/domain-incremental runs side by side + accuracy-vs-memory plot: make cil-compare CL_RUNS="runs/cil-*"
	$(PY) -m eval cil compare $(or $(CL_RUNS),$(filter-out %.png,$(wildcard runs/cil-* runs/dil-*))) --plot runs/cl-memory.png

dil: $(VENV)/.installed ## domain-incremental CL: make dil DATASET=domainnet DATA=path METHOD=gcl [MEMORY=...]
	$(PY) -m training cil --kind dil --dataset $(DATASET) $(if $(DATA),--data '$(DATA)') --method $(CL_METHOD) --sweep-memory $(MEMORY) --data-dir $(DATA_DIR) $(CL_ARGS)
	$(PY) -m eval cil run $(call CL_RUNS_OF,dil) $(if $(word 2,$(MEMORY)),--plot runs/dil-$(DATASET)-$(CL_METHOD)-memory.png)

crawl: $(VENV)/.installed ## crawl stage alone: make crawl INPUT='crawl/*.warc.gz' OUTPUT=./candidates
	$(PY) -m pipelines crawl --input '$(INPUT)' --output $(OUTPUT) --runner $(RUNNER) $(BEAM_ARGS)

sql: $(VENV)/.installed ## run SQL on index.duckdb: make sql Q="select year, count(*) from samples group by 1"
	$(PY) -m benchmark_builder sql --benchmark $(BENCHMARK) --data-dir $(DATA_DIR) "$(Q)"

test: $(VENV)/.installed ## run the test suite (fast; slow end-to-end runs: make test-slow)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(VENV)/.installed ## run the slow end-to-end tests as well
	$(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

bench: $(VENV)/.installed ## benchmarks: download vs img2dataset, end-to-end build time
	$(PY) -m bench

clean-data: ## remove DATA_DIR
	rm -rf $(DATA_DIR)

clean: ## remove .venv and caches
	rm -rf $(VENV) .pytest_cache
