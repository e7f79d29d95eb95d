#!/usr/bin/env bash
# The whole test suite, on real RabbitMQ and PostgreSQL (started or installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh
cargo test --locked "$@"
