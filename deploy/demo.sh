#!/usr/bin/env bash
# The demo, end to end: local services, a release build, then the demo itself.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh
cargo build --release --locked --quiet
export BOUNCER_POSTGRES__URL=${BOUNCER_POSTGRES__URL:-postgres://postgres@127.0.0.1:5432/bouncer_demo}
# Until `bouncer demo` lands: prepare the schema and check both services.
target/release/bouncer migrate
target/release/bouncer check
