# Every target creates .venv from nothing when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint fuzz debs bench

$(BIN)/cardiomegaly: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(BIN)/cardiomegaly
	$(BIN)/cardiomegaly demo

test: $(BIN)/cardiomegaly debs
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest

# Property-based fuzzing of the image loader and the label-table readers (a few minutes).
fuzz: $(BIN)/cardiomegaly
	$(BIN)/python -m pytest -m fuzz -q

# Debian packages some tests use: Chromium (the browser tests), dicom3tools (dciodvfy checks the
# DICOM results) and Orthanc (the PACS of the end-to-end test). As root (CI) they are installed
# when missing; otherwise, or when apt cannot, those tests skip and say why.
debs:
	@missing=""; \
	 command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing="$$missing chromium"; \
	 command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	 command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	 [ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   (DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null 2>&1 && \
	     DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1)) || \
	   echo "not installed:$$missing; the tests that need them will be skipped"; }

# Speed benchmarks (not tests; about 25 minutes on 2 cores): writes benchmarks/RESULTS.md. The
# NIH sample, where present, adds predict and epochs on real JPEGs; MODEL=a model trained on it
# adds int8's validation AUROC. TensorFlow (the seed's Keras, for comparison) is installed when
# pip can; otherwise those rows say why they were skipped.
DATA ?= ../shared/data/nih-cxr-cardiomegaly
bench: $(BIN)/cardiomegaly
	@$(BIN)/python -c "import tensorflow" 2>/dev/null || \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench-keras]' || \
	  echo "TensorFlow not installed: the Keras rows will be skipped"
	$(BIN)/python benchmarks/bench.py --data $(DATA) $(if $(MODEL),--model $(MODEL))

lint: $(BIN)/cardiomegaly
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
