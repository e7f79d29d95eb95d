#!/usr/bin/env bash
# The whole test suite, on real RabbitMQ and PostgreSQL (started or installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# Both binaries first: the tests run `bouncer sim|demo|bench`, which hand over to `bouncer-tools`
# (cargo test builds only the binaries of the package whose tests it runs).
cargo build --locked
cargo test --locked "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit $status
