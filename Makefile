# The README's commands. `make run` and `make test` work on a fresh clone: without DATABASE_URL they use an
# embedded PostgreSQL (and broker) in .devdata/; with DATABASE_URL set they use that server.
PY := .venv/bin/python
export DEBUG ?= 1
PORT ?= 8000

.PHONY: setup run test test-fast lint format bench bench-summary bench-ingest bench-invoice bench-portal bench-balance bench-slow-clients bench-webhooks soak stripe-smoke screenshots lock clean-devdata

setup:
	@sh scripts/bootstrap.sh

run: setup
	$(PY) scripts/dev.py run $(PORT)

test: setup
	$(PY) -m pytest $(ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports

format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

# Benchmarks print figures (docs/performance.md); they are not tests and never fail on a slow machine.
bench: bench-ingest bench-invoice bench-portal bench-balance
	$(PY) -m bench.summary

# The one comparable report (before: bench/baseline.json; after: each benchmark's latest run, .bench/).
bench-summary: setup
	$(PY) -m bench.summary $(ARGS)

bench-ingest: setup
	$(PY) -m bench.ingest $(ARGS)

bench-invoice: setup
	$(PY) -m bench.invoice $(ARGS)

bench-portal: setup
	$(PY) -m bench.portal $(ARGS)

# GET /api/v1/balance and POST /api/v1/authorizations at 20 clients, 100 req/s, 10 M events (issue 15).
bench-balance: setup
	$(PY) -m bench.balance $(ARGS)

# /healthz latency while 20 clients send headers a line a second to the shipped gunicorn (docs/operations.md).
bench-slow-clients: setup
	$(PY) -m bench.slow_clients $(ARGS)

bench-webhooks: setup
	$(PY) -m bench.webhooks $(ARGS)

# The whole stack under faults (worker kills, broker and database restarts); proves nothing lost or counted
# twice and prints a report (docs/reliability.md). Not a test: a script with figures.
soak: setup
	$(PY) -m bench.soak $(ARGS)

# The Stripe flow against a real Stripe test account (skipped unless STRIPE_API_KEY=sk_test_... is set).
stripe-smoke: setup
	$(PY) scripts/stripe_smoke.py $(ARGS)

# Portal screenshots on the demo data (docs/screenshots/), taken by the browser journey test.
screenshots: setup
	METERLINE_SCREENSHOTS=docs/screenshots $(PY) -m pytest tests/browser/test_journey.py -p no:cacheprovider -q $(ARGS)

# Regenerate requirements.lock from a clean environment after changing dependencies in pyproject.toml.
lock:
	rm -rf .lockenv && python3 -m venv .lockenv && .lockenv/bin/pip install --quiet -e ".[dev]" $(if $(wildcard sdk/python),-e "sdk/python[livekit]")
	.lockenv/bin/pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock && rm -rf .lockenv

clean-devdata:
	$(PY) -c "from config import devservices; from pathlib import Path; devservices.stop_postgres(Path('.devdata/pg'), force=True)" || true
	rm -rf .devdata
