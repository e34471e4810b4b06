# make demo: set up .venv and ingest the sample corpus into ./lancedb on the CPU engine
# make test: set up .venv and run the tests
ENGINE ?= cpu
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test verify clean
setup:
	bash scripts/setup.sh $(ENGINE)

demo: setup
	$(PY) -m jobs.sample_corpus --out data/sample
	$(PY) -m jobs.ingest --config conf/local.toml

verify:
	$(PY) -m jobs.verify --db lancedb

test: setup
	$(PY) -m pytest

clean:
	rm -rf lancedb data/sample
