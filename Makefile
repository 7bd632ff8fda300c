# SecureNow developer commands. The two that matter:
#   make run    set up this machine and run everything (server, gRPC-Web, console)
#   make test   every check and test (what CI runs)
.PHONY: run test gen lint fmt bootstrap clean

run:
	scripts/run.sh

test:
	scripts/test.sh

bootstrap:
	scripts/bootstrap.sh

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
