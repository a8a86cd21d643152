# The two commands: `make serve` runs the backend, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 9090
HOST ?= 0.0.0.0
THREADS ?= 8
BIN = $(VENV)/bin

.PHONY: install serve test test-fast bench bench-agent bench-quality bench-quality-stream bench-interactive bench-load bench-preannotate bench-sam3 bench-train bench-flywheel lint docs

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-test.txt
	SAM2_BUILD_CUDA=0 $(BIN)/pip install --quiet --no-build-isolation sam2==1.1.0
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# One process keeps the interactive sessions and the image caches in one place; threads serve
# requests concurrently (OpenCV and torch release the GIL while they compute).
serve: install
	HOST=$(HOST) SEGAGENT_DATA_DIR=$${SEGAGENT_DATA_DIR:-./data} $(BIN)/gunicorn --bind $(HOST):$(PORT) \
		--workers 1 --threads $(THREADS) --timeout 300 --access-logfile - backend.wsgi:app

# The backend's HTTP tests again with every store in PostgreSQL (a throwaway cluster the suite starts).
POSTGRES_TESTS = tests/test_backend.py tests/test_click_races.py tests/test_ingest_races.py tests/test_interactive_objects.py \
	tests/test_preannotation.py tests/test_quality_labels.py tests/test_refusals.py tests/test_concepts.py \
	tests/test_polygon_output.py tests/test_security.py tests/test_request_edge.py tests/test_result_types.py
test: install
	$(BIN)/python -m pytest -q tests
	$(BIN)/python -m pytest -q --database postgresql $(POSTGRES_TESTS)

test-fast: install
	$(BIN)/python -m pytest -q tests --ignore=tests/e2e

# ruff (style and likely bugs), mypy (types), hadolint (the Dockerfiles): all must pass with no findings.
lint: install
	$(BIN)/ruff check model backend policy_server tests scripts
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile docker/segagent-qwen.Dockerfile

# docs/configuration.md from model/settings.py's field descriptions (tests/test_docs.py fails while it is stale).
docs: install
	$(BIN)/python -m model settings-doc --out docs/configuration.md

DATA ?= ../shared/data
# bench-load and bench-preannotate: the stores in SQLite files, or in a throwaway PostgreSQL cluster (postgresql)
DATABASE ?= sqlite
bench: install
	$(BIN)/python -m model evaluate --dataset $(DATA)/grabcut --tool classical --max-clicks 20 --out bench/grabcut_classical
	$(BIN)/python -m model evaluate --dataset $(DATA)/coco_mval_dev --tool classical --max-clicks 20 --workers 2 --out bench/coco_classical

# Agent steps per second on the CPU with a tiny VLM (taught to click the centre) and the CPU tool,
# one episode at a time against eight together. The masks mean nothing: this measures the loop.
bench-agent: install
	$(BIN)/python -m tests.tiny_vlm bench/tiny-vlm
	$(BIN)/python -m model evaluate --dataset $(DATA)/coco_mval_dev --limit 48 --policy bench/tiny-vlm --steps 3 --batch-size 1 --out bench/agent_unbatched
	$(BIN)/python -m model evaluate --dataset $(DATA)/coco_mval_dev --limit 48 --policy bench/tiny-vlm --steps 3 --batch-size 8 --out bench/agent_batched

# The offline quality scorer under the corruption protocol (5-fold cross-validation by object).
bench-quality: install
	$(BIN)/python -m model score --dataset $(DATA)/coco_mval_dev --out bench/score_coco

# The project scorer's refits at 50, 100 and 200 labels of a simulated project (the CPU tool's predictions after
# 1-4 clicks, labelled with their true IoU) against the shipped weights, on the next 100 annotations: COCO MVal dev
# as it is, and made synthetic microscopy-like (grey, low contrast, blurred, noisy) as images unlike the training data.
bench-quality-stream: install
	$(BIN)/python -m model quality-stream --dataset $(DATA)/coco_mval_dev --domain photo --domain microscopy \
		--orders 200 --out bench/quality_stream

# Interactive requests through the HTTP layer: median and p90 seconds per request.
bench-interactive: install
	$(BIN)/python scripts/bench_interactive.py $(DATA)/grabcut --clicks 5 --limit 20

# The backend as make serve runs it, over loopback: 1 and 8 clients clicking GrabCut objects, idle and while
# learning from a burst of 200 submitted annotations: requests/s, p50, p95, peak RSS.
bench-load: install
	$(BIN)/python scripts/bench_load.py $(DATA)/grabcut --seconds 30 --database $(DATABASE)

# Pre-annotating a 200-task project (GrabCut images with rectangles, refine mode) in a real Label Studio
# (the test suite's cached install) through POST /preannotate: tasks per minute, mIoU of what was stored.
bench-preannotate: install
	$(BIN)/python scripts/bench_preannotate.py $(DATA)/grabcut --tasks 200 --database $(DATABASE)

# SAM 3 at its real size (facebook/sam3's architecture, 860 M parameters) with random weights, written once into
# bench/sam3-random (3.3 GB): seconds to load, to encode an image, to find a phrase's instances, per click; CPU.
bench-sam3: install
	$(BIN)/python scripts/bench_sam3.py --folder bench/sam3-random

# The embedding store: the first click on a pre-annotated task with SAM ViT-B (random weights) read from the store
# that another process filled, against encoding it; a later click; what the store's float16 changes in the masks.
.PHONY: bench-embeddings
bench-embeddings: install
	$(BIN)/python scripts/bench_embedding_store.py $(DATA)/grabcut --images 3 --out bench/embedding_store.json

# One training job on the CPU: GrabCut's objects as scratch trajectories of project 1, the tiny VLM
# (taught to click the centre) as the base, default hyperparameters. Measures the job, not a policy.
bench-train: install
	$(BIN)/python -m model simulate --dataset $(DATA)/grabcut --data-dir bench/train-data --project 1
	$(BIN)/python -m tests.tiny_vlm bench/tiny-vlm
	$(BIN)/python -m model train --data-dir bench/train-data --project 1 --base bench/tiny-vlm

# What one training job gains on a dataset's held-out objects (mIoU after the agent's steps, the annotator's
# clicks to IoU 0.85 and 0.90), base against trained; the job as in production (LoRA, gate, registry).
# With no SEGAGENT_POLICY: the tiny VLM taught to click the centre, on the CPU, which shows the plumbing, not a
# gain. With SEGAGENT_POLICY (and SEGAGENT_TOOL, ...) set: that policy; FLYWHEEL_LIMIT= (empty) for every object.
FLYWHEEL_DATASET ?= $(DATA)/grabcut
FLYWHEEL_LIMIT ?= 20
bench-flywheel: install
ifeq ($(SEGAGENT_POLICY),)
	$(BIN)/python -m tests.tiny_vlm bench/tiny-vlm
endif
	rm -rf bench/flywheel/data
	SEGAGENT_POLICY=$${SEGAGENT_POLICY:-bench/tiny-vlm} $(BIN)/python -m model bench-flywheel \
		--dataset $(FLYWHEEL_DATASET) $(if $(FLYWHEEL_LIMIT),--limit $(FLYWHEEL_LIMIT)) --out bench/flywheel
