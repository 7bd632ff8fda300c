# SecureNow developer commands. The two that matter:
#   make run    set up this machine and run everything (server, gRPC-Web, console)
#   make test   every check and test (what CI runs)
.PHONY: run test gen lint fmt bootstrap clean bench chaos

run:
	scripts/run.sh

test:
	scripts/test.sh

bootstrap:
	scripts/bootstrap.sh

# Benchmarks (bench/README.md): prints a table, writes bench/results/*.json.
bench: bootstrap
	.venv/bin/python -m bench.run

# Fault tests at full size: 1000-alert bursts across SIGKILL, Redis and PostgreSQL outages.
chaos: bootstrap
	SECURENOW_CHAOS_RAISES=1000 .venv/bin/pytest -s -q tests/test_faults.py

gen: bootstrap
	.venv/bin/python scripts/gen_protos.py

lint: bootstrap
	PATH="$$PWD/node_modules/.bin:$$PATH" buf lint
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

fmt:
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

clean:
	rm -rf .venv node_modules var .pytest_cache .mypy_cache .ruff_cache
