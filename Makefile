# The two commands a new user needs: `make demo`, then `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test golden weights images image-cpu image-gpu clean

demo: $(INSTALLED) weights
	$(BIN)/tlp run --local --demo

# The pytest script, not `python -m pytest`: that would put the repo root, and with it the
# docker/ folder, on sys.path ahead of the `docker` package that kfp.local imports.
# PYTEST_ARGS narrows it (CI runs the suite in two sessions: .ci/run). Tests run in parallel
# processes (pytest-xdist), one per core up to TEST_WORKERS: most tests keep about one core
# busy; on 2 cores the suite takes 0.6x the time of one process. `--dist loadgroup` keeps
# the tests that share the local pipeline run in one process (tests/conftest.py).
TEST_WORKERS ?= 4
test: $(INSTALLED)
	$(BIN)/pytest -q -n auto --maxprocesses $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# Rewrites the compiled pipelines tests/test_golden.py compares with (tests/golden/): after a
# change to the pipeline that is meant; review `git diff tests/golden/` before committing.
golden: $(INSTALLED)
	TLP_UPDATE_GOLDEN=1 $(BIN)/pytest -q tests/test_golden.py

# Derives the offline ImageNet MobileNetV2 weights the demo uses (cached, checksummed).
weights: $(INSTALLED)
	$(BIN)/tlp demo-weights

# The CPU and GPU images the steps run in, tagged as components/configs.py names them
# (override IMAGE_REGISTRY to push elsewhere, the base images to build from local ones).
DOCKER ?= docker
CPU_BASE_IMAGE ?= python:3.11.11-slim-bookworm
GPU_BASE_IMAGE ?= tensorflow/tensorflow:2.21.0-gpu
DOCKER_BUILD_FLAGS ?=
CONFIGS := from components import configs as c
IMAGE_REGISTRY ?= $(shell $(PYTHON) -c '$(CONFIGS); print(c.IMAGE_REGISTRY)')
image = $(shell $(PYTHON) -c '$(CONFIGS); print(c.image(c.$(1)_IMAGE_NAME, "$(IMAGE_REGISTRY)"))')
BUILD := $(DOCKER) build $(DOCKER_BUILD_FLAGS) -f docker/Dockerfile
# BuildKit: docker/Dockerfile.dockerignore and the pip cache mount need it. Without a Docker
# engine or registry: eval "$$(docker/local-engine.sh --gpu-base)" first (README).
images: image-cpu image-gpu
image-cpu image-gpu: export DOCKER_BUILDKIT = 1

image-cpu:
	$(BUILD) --build-arg BASE_IMAGE=$(CPU_BASE_IMAGE) -t $(call image,CPU) .

image-gpu:
	$(BUILD) --build-arg BASE_IMAGE=$(GPU_BASE_IMAGE) --build-arg TENSORFLOW_FROM_BASE=true \
		--build-arg EXTRAS=gpu -t $(call image,GPU) .

# keras-hub goes in without its declared dependencies (pyproject.toml, [tool.tlp]): they would
# add the full tensorflow wheel beside tensorflow-cpu.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,vertex]'
	$(BIN)/python -m pip install -q --no-deps $$($(BIN)/python docker/requirements.py --without-deps pyproject.toml)
	touch $@

clean:
	rm -rf $(VENV) runs
