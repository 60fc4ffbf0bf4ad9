#!/usr/bin/env bash
# The project's test command: build fixtures, then run the Rust test suite.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

export SHADOWNET_FIXTURES="${SHADOWNET_FIXTURES:-$REPO/target/fixtures}"
# make the path absolute for tests that run from crate directories
mkdir -p "$SHADOWNET_FIXTURES"
SHADOWNET_FIXTURES="$(cd "$SHADOWNET_FIXTURES" && pwd)"

"$REPO/scripts/make-fixtures.sh"
cargo test --workspace --release
