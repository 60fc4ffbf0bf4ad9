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

# The GPU backend's tests (crates/gpu, which `--workspace` includes, and the cli feature
# `gpu`) need a Vulkan device: without one, install Mesa's software driver (lavapipe).
# Should there still be no adapter, those tests fail and say why.
have_vulkan_device() {
    # (grep without -q: with pipefail, ldconfig killed by an early exit would count.)
    ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null || return 1
    local f icd=0 dev=0
    for f in /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json; do
        [ -e "$f" ] || continue
        case "$f" in *lvp_icd*) return 0 ;; esac
        icd=1
    done
    for f in /dev/dri/renderD* /dev/nvidia0; do [ -e "$f" ] && dev=1; done
    [ "$icd" = 1 ] && [ "$dev" = 1 ]
}
if ! have_vulkan_device; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: no Vulkan device; installing Mesa's lavapipe" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null; }
    else
        echo "test.sh: no Vulkan device, and cannot apt-get install mesa-vulkan-drivers libvulkan1" >&2
    fi
fi
# Mesa warns on every adapter query without it.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

cargo test --workspace --release

# The integrity check against every lying-accelerator mode, 1000 trials each, plus 1000
# clean runs (ignored by `cargo test` alone: it takes a few minutes).
cargo test --release -p shadownet --test integrity -- --ignored --nocapture

# Secure inference with the GPU accelerator equals plain (cli built with its feature
# `gpu`). `--workspace` resolves every dependency's features as above, so only the cli
# builds again; `-p shadownet` alone resolved them anew and rebuilt for ~10 minutes here.
cargo test --workspace --release --features shadownet/gpu --test secure_gpu
