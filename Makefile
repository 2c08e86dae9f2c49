# htgrpo: every target installs what it needs into .venv first (torch==2.13.0 before anything else).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HTGRPO := $(VENV)/bin/htgrpo
STAMP := $(VENV)/.installed
CHECKPOINT ?= checkpoints/base
OUT ?= out
ROUNDS ?= 2
# the demo's pipeline: DEMO_ROUNDS RL rounds of DEMO_PROMPTS prompts x rl.group_size images, compiled into $(OUT)/
# (pipelines/htgrpo.yaml, the packaged pipeline, has 2 rounds). Enough RL for the trained model to beat the base
# beyond the 95 % interval on the test split, within 20 minutes on 2 cores (README, "What make demo shows").
DEMO_ROUNDS ?= 10
DEMO_PROMPTS ?= 16
# extra `--set key=value` overrides for the demo's pipeline run, e.g. PIPELINE_SET="--set rl.lr=2e-5"
PIPELINE_SET ?=
MLFLOW_DB ?= $(OUT)/pipeline/mlflow.db
MLFLOW_PORT ?= 5000
# helm and kubectl for the chart and infra checks (scripts/install_tools.py pins them)
TOOLS := .cache/tools/bin
# images: REGISTRY/htgrpo:TAG (CPU) and REGISTRY/htgrpo-cuda:TAG (CUDA); pipeline.image / pipeline.gpu_image name them
REGISTRY ?= ghcr.io/htgrpo
IMAGE_TAG ?= 0.1.0
DOCKER ?= docker

# glibc's allocator maps and unmaps the large temporaries of every step; keeping them cuts CPU time ~3x.
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 100000000000
export PYTHONUNBUFFERED := 1

.PHONY: help install demo test lint format pretrain curve bench-sampler bench-binding bench-overhead bench-methods clean pipeline mlflow-ui \
	tools chart images push-images

help:
	@echo "make demo      - sample and evaluate the shipped base model on the CPU (installs into .venv)"
	@echo "make test      - ruff (format + lint) and the test suite"
	@echo "make pipeline  - recompile pipelines/htgrpo.yaml (ROUNDS=$(ROUNDS)) and copy it into the Helm chart"
	@echo "make chart     - helm lint the chart (installs helm and kubectl into $(TOOLS))"
	@echo "make images    - build the CPU and CUDA images (needs a Docker daemon); push-images pushes them"
	@echo "make mlflow-ui - the MLflow UI of the demo's runs on http://127.0.0.1:$(MLFLOW_PORT)"
	@echo "make pretrain  - regenerate the base checkpoint from its seeds (about 25 minutes on 2 cores)"
	@echo "make curve     - score pretraining snapshots: benchmarks/results/pretrain_curve.*"
	@echo "make bench-sampler - sampler throughput: benchmarks/results/sampler.*"
	@echo "make bench-overhead - local pipeline vs htgrpo train at 3 sizes of round: benchmarks/results/pipeline_overhead.*"
	@echo "make bench-binding - which pretraining objective binds colour words: benchmarks/results/colour_binding.*"
	@echo "make bench-methods - HT-GRPO vs its baselines: benchmarks/results/compare_methods.*"

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[mlops,dev,hf]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@test -f $(CHECKPOINT)/manifest.json || $(HTGRPO) pretrain --config configs/tiny.yaml --out $(CHECKPOINT)
	$(HTGRPO) sample --checkpoint $(CHECKPOINT) --prompt "a photo of a red circle and a blue square" --n 8 --score --out $(OUT)/demo/red_circle_blue_square.png
	$(HTGRPO) sample --checkpoint $(CHECKPOINT) --prompt "a photo of three triangles" --n 8 --score --out $(OUT)/demo/three_triangles.png
	$(HTGRPO) sample --checkpoint $(CHECKPOINT) --prompt "a photo of a diamond left of a ring" --n 8 --score --out $(OUT)/demo/diamond_left_of_ring.png
	$(HTGRPO) evaluate --benchmark shapes --checkpoint $(CHECKPOINT) --split test --grid --out $(OUT)/demo/shapes_test.json
	@echo "demo outputs: $(OUT)/demo/ (PNG grids, shapes_test.json/.md/.png)"
	$(HTGRPO) pipeline compile --rounds $(DEMO_ROUNDS) --config configs/tiny.yaml --out $(OUT)/pipeline/htgrpo-demo.yaml
	$(HTGRPO) pipeline run-local --pipeline $(OUT)/pipeline/htgrpo-demo.yaml --config configs/tiny.yaml --init $(CHECKPOINT) --out $(OUT)/pipeline --set rl.prompts_per_step=$(DEMO_PROMPTS) $(PIPELINE_SET)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check src tests benchmarks components pipelines scripts
	$(VENV)/bin/ruff check src tests benchmarks components pipelines scripts

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks components pipelines scripts
	$(VENV)/bin/ruff check --fix src tests benchmarks components pipelines scripts

pipeline: $(STAMP)
	$(HTGRPO) pipeline compile --rounds $(ROUNDS) --config configs/tiny.yaml --out pipelines/htgrpo.yaml
	cp pipelines/htgrpo.yaml helm/htgrpo/files/htgrpo.yaml  # the chart ships it in a ConfigMap (.Files.Get)
	$(PY) pipelines/render_graph.py pipelines/htgrpo.yaml docs/pipeline.png

tools: $(STAMP)
	$(PY) scripts/install_tools.py

chart: tools
	$(TOOLS)/helm lint --strict helm/htgrpo

images:
	@if ! $(DOCKER) info >/dev/null 2>&1; then \
		echo "make images: no Docker daemon is reachable ('$(DOCKER) info' failed): start one, or set DOCKER_HOST," >&2; \
		echo "  then run: $(DOCKER) build -f images/cpu.Dockerfile -t $(REGISTRY)/htgrpo:$(IMAGE_TAG) ." >&2; \
		echo "            $(DOCKER) build -f images/cuda.Dockerfile -t $(REGISTRY)/htgrpo-cuda:$(IMAGE_TAG) ." >&2; \
		exit 1; \
	fi
	$(DOCKER) build -f images/cpu.Dockerfile -t $(REGISTRY)/htgrpo:$(IMAGE_TAG) .
	$(DOCKER) build -f images/cuda.Dockerfile -t $(REGISTRY)/htgrpo-cuda:$(IMAGE_TAG) .

push-images: images
	$(DOCKER) push $(REGISTRY)/htgrpo:$(IMAGE_TAG)
	$(DOCKER) push $(REGISTRY)/htgrpo-cuda:$(IMAGE_TAG)

mlflow-ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(MLFLOW_DB)) --host 127.0.0.1 --port $(MLFLOW_PORT)

# tools first: the chart and infra tests run the real helm and kubectl
test: lint tools
	$(VENV)/bin/pytest -q

pretrain: $(STAMP)
	HTGRPO_THREADS=2 $(HTGRPO) pretrain --config configs/tiny.yaml --out $(CHECKPOINT) --snapshots .cache/snapshots

curve: $(STAMP)
	$(PY) benchmarks/pretrain_curve.py --snapshots .cache/snapshots --out benchmarks/results/pretrain_curve \
		--baseline benchmarks/results/pretrain_curve_even_mix.json

bench-overhead: $(STAMP)
	$(PY) benchmarks/pipeline_overhead.py --sweep 4,16,32 --out benchmarks/results/pipeline_overhead

bench-binding: $(STAMP)
	$(PY) benchmarks/colour_binding.py --variants fill-half,plain,object-weight,colour-tasks,fill-only --steps 400 \
		--every 100 --out benchmarks/results/colour_binding

bench-sampler: $(STAMP)
	$(PY) benchmarks/sampler_speed.py --checkpoint $(CHECKPOINT) --out benchmarks/results/sampler

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache

bench-methods: $(STAMP)
	$(PY) benchmarks/compare_methods.py --init $(CHECKPOINT) --out benchmarks/results/compare_methods \
		--notes benchmarks/notes/compare_methods.md
