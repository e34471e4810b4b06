# make demo: set up .venv and ingest the sample corpus into ./lancedb on the CPU engine
# make test: set up .venv and run the tests
# make bench: set up .venv, write the benchmark corpus and run the benchmark job (report in bench_out/)
ENGINE ?= cpu
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test verify bench clean
setup:
	bash scripts/setup.sh $(ENGINE)

demo: setup
	$(PY) -m jobs.sample_corpus --out data/sample
	$(PY) -m jobs.ingest --config conf/local.toml

bench: setup
	$(PY) -m jobs.sample_corpus --all --out data/bench
	$(PY) -m jobs.bench --config conf/bench.toml

verify:
	$(PY) -m jobs.verify --db lancedb

test: setup
	$(PY) -m pytest

clean:
	rm -rf lancedb data/sample data/bench bench_out
