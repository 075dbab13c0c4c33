# VokeTag backend. `make run` brings everything up; `make test` runs everything CI runs.
SHELL := /usr/bin/env bash
CARGO ?= cargo

.PHONY: run test migrate lint services-up services-down build bench pgo

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

## Benchmarks (release builds, scan-service profile-guided as in `make pgo` unless BENCH_PGO=0 or --quick; wrk, redis-benchmark); writes docs/PERFORMANCE.md. BENCH_ARGS=--quick for a short run, BENCH_ARGS="--only scan,audit,idempotency,events" for some sections, --signed-million to verify a signed chain of 1,000,000 events (adds minutes).
bench:
	scripts/bench.sh $(BENCH_ARGS)

build:
	$(CARGO) build --workspace

## scan-service profile-guided: trained against the local services; writes pgo/scan-service.profdata, which the image build then uses.
pgo:
	scripts/pgo.sh

services-up:
	scripts/dev-services.sh up

services-down:
	scripts/dev-services.sh down

.PHONY: restore-test verify-backups test-backups

## Dump DATABASE_URL into BACKUP_DIR (default ./backups), restore it into a scratch database, verify.
restore-test:
	$(CARGO) build -q -p factory-service
	scripts/restore_test.sh

## Check every dump in BACKUP_DIR, restore and verify the newest; fails if it is older than MAX_BACKUP_AGE_HOURS.
verify-backups:
	$(CARGO) build -q -p factory-service
	scripts/verify_backups.sh

## Proves restore-test and verify-backups pass on good backups and fail on corrupt, tampered or old ones.
test-backups:
	$(CARGO) build -q -p factory-service
	scripts/test-backups.sh

.PHONY: infra-check

## terraform fmt -check on infra/terraform, and validate when the provider plugins can be downloaded.
infra-check:
	scripts/infra-check.sh

.PHONY: e2e

## The admin console tests in real headless Chromium (installs Debian's chromium if missing).
e2e:
	scripts/e2e.sh

.PHONY: chaos fuzz fuzz-schema fuzz-cargo

## Failure scenarios against the real processes (private Redis, PostgreSQL, emulator); writes docs/RELIABILITY.md. CHAOS_ARGS="--only 1,2" for some.
chaos:
	scripts/chaos.sh $(CHAOS_ARGS)

## schemathesis against the factory's /openapi.json, then the cargo-fuzz targets: no 5xx, no panic.
fuzz: fuzz-schema fuzz-cargo

## schemathesis (venv under target/) against the factory's /openapi.json: no 5xx. FUZZ_MAX_EXAMPLES, FUZZ_SEED.
fuzz-schema:
	scripts/fuzz.sh

## cargo-fuzz on the parsers and validators (stable Rust with RUSTC_BOOTSTRAP=1), FUZZ_SECONDS (60) each. FUZZ_TARGETS.
fuzz-cargo:
	scripts/fuzz-cargo.sh
