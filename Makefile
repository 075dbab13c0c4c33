# VokeTag backend. `make run` brings everything up; `make test` runs everything CI runs.
SHELL := /usr/bin/env bash
CARGO ?= cargo

.PHONY: run test migrate lint services-up services-down build

## Start local PostgreSQL, Redis and the Pub/Sub emulator if needed, migrate, start both services.
run: services-up
	scripts/run.sh

## Every test, against real PostgreSQL, Redis and the Pub/Sub emulator.
test:
	scripts/test.sh

## Apply database migrations to DATABASE_URL (default postgres://postgres@127.0.0.1:5432/voketag).
migrate: services-up
	$(CARGO) run -q -p factory-service -- migrate

## Formatting, clippy with warnings as errors, and the compose file.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	scripts/compose-check.sh

build:
	$(CARGO) build --workspace

services-up:
	scripts/dev-services.sh up

services-down:
	scripts/dev-services.sh down
