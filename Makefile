# make demo: set up .venv and ingest the sample corpus into ./lancedb on the CPU engine
# make test: set up .venv and run the tests of the unit, Ray and real-engine tiers (TEST_WORKERS at a time)
# make test-all: every tier, the readers and the slow one too (the benchmark job, the compile cache): what CI runs
# make query Q="...", make retrieval-check: search ./lancedb after make demo
# make bench: set up .venv, write the benchmark corpus and run the benchmark job (report in bench_out/)
# make bench-scale: per-run costs as the store and the corpus grow (report in bench_out/scale/)
# make lint: ruff check and ruff format --check
ENGINE ?= cpu
VENV ?= .venv
PY := $(VENV)/bin/python

TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --durations=15

.PHONY: setup demo test test-all test-unit lint verify query index retrieval-check bench bench-scale clean
setup:
	bash scripts/setup.sh $(ENGINE)

demo: setup
	$(PY) -m jobs.sample_corpus --out data/sample
	$(PY) -m jobs.ingest --config conf/local.toml

bench: setup
	$(PY) -m jobs.sample_corpus --all --out data/bench
	$(PY) -m benchmarks.bench --config conf/bench.toml

bench-scale: setup
	$(PY) -m benchmarks.bench_scale --config conf/local.toml --out bench_out/scale

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

verify:
	$(PY) -m jobs.verify --config conf/local.toml

# make query Q="how do I parse command-line options"
query:
	$(PY) -m jobs.query --config conf/local.toml "$(Q)"

index:
	$(PY) -m jobs.index --config conf/local.toml

retrieval-check:
	$(PY) -m jobs.retrieval_check --config conf/local.toml

test: setup
	bash scripts/system_deps.sh
	$(PYTEST) -m "unit or ray or engine"

test-all: setup
	bash scripts/system_deps.sh
	bash scripts/readers_env.sh
	$(PYTEST)

test-unit: setup
	$(PY) -m pytest -m unit

clean:
	rm -rf lancedb data/sample data/bench bench_out
