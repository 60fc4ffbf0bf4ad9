#!/usr/bin/env bash
# The hardened scheme's security/cost knob, measured: for each mixing group size and fake
# ratio, the static attacks on public.bin (`attack --kind unmix`) on trained models, and the
# latency of secure inference over plain (`bench --schemes hardened --enclaves inproc`),
# each pair from one conversion setting. Writes the section between the knob markers of
# docs/security.md (scripts/security.sh keeps it) and docs/knob.png.
#
# Usage: scripts/knob.sh [OUT]    (default: target/knob; about 10 minutes on 2 cores)
# Environment: MODELS (default: ppocr_cls hand_landmark_lite), KNOB_GROUPS (2 4 8 16 32),
#   RATIOS (1.1 1.2 1.5, at group 16), RUNS (bench runs, 10).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
FIX="${SHADOWNET_FIXTURES:-$REPO/target/fixtures}"
OUT="${1:-$REPO/target/knob}"
MODELS=(${MODELS:-ppocr_cls hand_landmark_lite})
GROUPS_=(${KNOB_GROUPS:-2 4 8 16 32})
RATIOS=(${RATIOS:-1.1 1.2 1.5})
RUNS="${RUNS:-10}"
PY="${SHADOWNET_PYTHON:-$REPO/.venv/bin/python}"
[[ -f "$FIX/models/resnet44.onnx" ]] || "$REPO/scripts/make-fixtures.sh"
cargo build --release -q --workspace --bins
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
BIN="$WORK/shadownet"
cp "$REPO/target/release/shadownet" "$BIN"
cp "$REPO/target/release/shadownet-enclave" "$WORK/"
"$BIN" keygen --vendor -o "$WORK/vendor" >/dev/null
"$BIN" keygen -o "$WORK/dev" --trust "$WORK/vendor/vendor.pub" >/dev/null
model_file() { for e in onnx tflite; do [[ -f "$FIX/models/$1.$e" ]] && echo "$FIX/models/$1.$e" && return; done; return 1; }
shape_args() { [[ "$1" == ppocr_cls ]] && echo "--input-shape x=1,3,48,192" || true; }
point() { # MODEL GROUP RATIO
    local m="$1" g="$2" r="$3" f pkg tag
    f="$(model_file "$m")"
    tag="$m-g$g-r$r"
    pkg="$WORK/$tag"
    echo "knob: $tag" >&2
    "$BIN" convert "$f" $(shape_args "$m") --to "$WORK/dev/device.pub" --sign-with "$WORK/vendor/vendor.key" \
        -o "$pkg" --scheme hardened --group "$g" --ratio "$r" >/dev/null 2>&1
    "$BIN" attack "$pkg" --key "$WORK/dev/device.key" --reference "$f" --kind unmix --json --seed 1 \
        --group-sizes "$g" --methods pca,ica-logcosh-sym,sparse-l4 > "$OUT/$tag.unmix.json" 2> "$OUT/$tag.unmix.err"
    "$BIN" --threads 2 bench "$f" $(shape_args "$m") --schemes hardened --enclaves inproc \
        --group "$g" --ratio "$r" --runs "$RUNS" --warmup 2 --json > "$OUT/$tag.bench.json" 2> "$OUT/$tag.bench.err"
    rm -rf "$pkg" "$WORK/dev/device.key.counters"
}
for m in "${MODELS[@]}"; do
    for g in "${GROUPS_[@]}"; do point "$m" "$g" 1.2; done
    for r in "${RATIOS[@]}"; do [[ "$r" == 1.2 ]] || point "$m" 16 "$r"; done
done
"$PY" -c 'import matplotlib' 2>/dev/null || "$PY" -m pip install -q --disable-pip-version-check matplotlib
"$PY" "$REPO/scripts/knob_doc.py" "$OUT" "$REPO/docs" "${MODELS[*]}" "${GROUPS_[*]}" "${RATIOS[*]}" "$RUNS"
