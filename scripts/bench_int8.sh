#!/usr/bin/env bash
# Int8 latency of shadownet against ONNX Runtime's int8 kernels on the quantized fixture
# models, interleaved run by run; rewrites the int8 section at the end of
# docs/benchmarks.md (the rest of the file is left alone).
#
#   scripts/bench_int8.sh [--runs N] [--warmup N] [--threads N]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS=30
WARMUP=3
THREADS=2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) echo "bench_int8.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

cd "$REPO"
"$REPO/scripts/make-fixtures.sh"
cargo build --release --quiet -p shadownet --example timer
PY="${SHADOWNET_PYTHON:-$REPO/.venv/bin/python}"
MODELS="${SHADOWNET_FIXTURES:-$REPO/target/fixtures}/models"
mkdir -p "$REPO/target/bench"
"$PY" "$REPO/scripts/bench_int8.py" --timer "$REPO/target/release/examples/timer" \
    --models "$MODELS" --runs "$RUNS" --warmup "$WARMUP" --threads "$THREADS" \
    --markdown "$REPO/docs/benchmarks.md" \
    mobilenet_v1_int8_qdq mobilenet_v1_int8_qop resnet44_int8_qdq resnet44_int8_qop \
    ppocr_cls_int8_qdq ppocr_cls_int8_qop > "$REPO/target/bench/int8.json"
cat "$REPO/target/bench/int8.json"
