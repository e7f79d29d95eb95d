#!/usr/bin/env bash
# The demo, end to end: local services (reused, started or installed), a release build, then
# `bouncer demo` (under a minute once built).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh --no-browser --no-pooler
cargo build --release --locked --quiet
exec target/release/bouncer demo "$@"
