# fluvial's tasks. `just --list` shows them. Every recipe works from a fresh clone: `setup`
# creates .venv and installs fluvial with its dev tools into it.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
python := venv / "bin/python"

# Create the virtual environment and install fluvial (editable) with its dev tools.
setup:
    test -x {{python}} || python3 -m venv {{venv}}
    {{python}} -m pip install --quiet --disable-pip-version-check -e '.[dev]'

# Lint, type-check, check the core's import contract, then run the tests.
test: setup lint
    {{python}} -m pytest

# ruff, mypy --strict on src/tests/benchmarks, and the import-linter contract.
lint: setup
    {{venv}}/bin/ruff check src tests benchmarks proto
    {{venv}}/bin/ruff format --check src tests benchmarks proto
    {{venv}}/bin/mypy
    {{venv}}/bin/lint-imports

# Format the code in place.
fmt: setup
    {{venv}}/bin/ruff check --fix src tests benchmarks proto
    {{venv}}/bin/ruff format src tests benchmarks proto

# Benchmarks (print tables with raw baselines; they are not tests). The last is replication
# end to end: a producer and a consumer process over gRPC, plain and TLS, beside raw grpclib.
bench: setup
    {{python}} benchmarks/bench_entities.py
    {{python}} benchmarks/bench_projection.py
    {{python}} benchmarks/bench_serializers.py
    {{python}} benchmarks/bench_replication.py

# The PostgreSQL benchmarks (the server at 127.0.0.1:5432, or FLUVIAL_PG_DSN): the drivers, the
# journal, then SQLite and PostgreSQL side by side (appends, 1,000 entities, a projection), each
# beside the raw driver in the same run.
bench-postgres: setup
    {{python}} benchmarks/bench_postgres_drivers.py
    {{python}} benchmarks/bench_postgres_journal.py
    {{python}} benchmarks/bench_backends.py

# (tests/grpc/test_proto_generated.py fails while the committed code is stale: commit it.)
# Regenerate the protobuf code (src/fluvial/grpc/_proto) from proto/fluvial/v1/*.proto.
proto: setup
    {{python}} proto/generate.py

# The gRPC benchmarks: the event batch codec against betterproto2 messages per event; the
# consumer's catch-up over loopback against the same projection over the local journal (one
# process); replication end to end (two processes, plain and TLS) against raw grpclib.
bench-grpc: setup
    {{python}} benchmarks/bench_grpc_encoding.py
    {{python}} benchmarks/bench_consumer.py
    {{python}} benchmarks/bench_replication.py

# The demo: a producer and a consumer service (two processes on loopback) replicating shopping
# carts over gRPC; the consumer is killed and resumes; its read model checked against the journal.
demo: setup
    {{python}} -m fluvial demo

# The latest-event-timestamp query of a lag (SQLite, and PostgreSQL when reachable), beside its
# raw statement and beside reading the slice range, in the same run.
bench-lag: setup
    {{python}} benchmarks/bench_latest_timestamp.py

# Filter evaluation: 1,000 entity-id criteria, 100 regexes, 100 topic expressions, against a
# call that evaluates nothing, in the same run.
bench-filters: setup
    {{python}} benchmarks/bench_filters.py
