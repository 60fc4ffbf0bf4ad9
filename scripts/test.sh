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

# The trusted core must build without std: compile it for a bare-metal target, which
# catches std leaking in through any dependency.
if rustup target add thumbv7em-none-eabihf >/dev/null 2>&1; then
    cargo build --quiet -p shadownet-trusted --target thumbv7em-none-eabihf
    echo "test.sh: shadownet-trusted builds for thumbv7em-none-eabihf (no_std)" >&2
else
    echo "test.sh: cannot install the thumbv7em-none-eabihf target; skipping the no_std build" >&2
fi

cargo test --workspace --release

# The integrity check against every lying-accelerator mode, 1000 trials each, plus 1000
# clean runs (ignored by `cargo test` alone: it takes a few minutes).
cargo test --release -p shadownet --test integrity -- --ignored --nocapture
