#!/usr/bin/env bash
# The project's test command: build fixtures, then the whole workspace and its tests.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

export SHADOWNET_FIXTURES="${SHADOWNET_FIXTURES:-$REPO/target/fixtures}"
# make the path absolute for tests that run from crate directories
mkdir -p "$SHADOWNET_FIXTURES"
SHADOWNET_FIXTURES="$(cd "$SHADOWNET_FIXTURES" && pwd)"

"$REPO/scripts/make-fixtures.sh"

# The trusted core must build without std: compile it for a bare-metal target, which
# catches std (or an OS random source) leaking in through any dependency.
if rustup target add thumbv7em-none-eabihf >/dev/null 2>&1; then
    cargo build --quiet -p shadownet-trusted --target thumbv7em-none-eabihf
    echo "test.sh: shadownet-trusted builds for thumbv7em-none-eabihf (no_std)" >&2
else
    echo "test.sh: cannot install the thumbv7em-none-eabihf target; the no_std build is not checked" >&2
    exit 1
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

# Neither the trusted core nor the enclave binary may depend on the host's kernels.
for pkg in shadownet-trusted shadownet-enclave; do
    if cargo tree -p "$pkg" -e normal --prefix none | grep -q '^shadownet-cpu '; then
        echo "test.sh: $pkg depends on shadownet-cpu (the host's kernels)" >&2
        exit 1
    fi
done
echo "test.sh: no dependency path from shadownet-trusted or shadownet-enclave to shadownet-cpu" >&2

# Every binary first (the tests start the enclave process from target/release).
cargo build --release --workspace --bins
cargo test --workspace --release

# `trace --package` runs through the trusted core's debug observer, which only a
# `--features debug-trace` build has: its tests run on that build.
cargo test --release -p shadownet --features debug-trace --test trace

# The integrity check against every lying-accelerator mode, 1000 trials each, plus 1000
# clean runs (ignored by `cargo test` alone: it takes a few minutes).
cargo test --release -p shadownet --test integrity -- --ignored --nocapture

# Fuzz targets (a workspace of its own: it builds the trusted core with its `fuzzing`
# feature), each for a bounded time; the counts of executions are printed.
SHADOWNET_FUZZ_SECS="${SHADOWNET_FUZZ_SECS:-10}" cargo test --release \
    --manifest-path crates/fuzz/Cargo.toml --target-dir target -- --nocapture --test-threads 1

# Secure inference with the GPU accelerator equals plain (cli built with its feature
# `gpu`). `--workspace` resolves every dependency's features as above, so only the cli
# builds again; `-p shadownet` alone resolved them anew and rebuilt for ~10 minutes here.
cargo test --workspace --release --features shadownet/gpu --test secure_gpu
