#!/usr/bin/env bash
# Runs the newer attacks (seed, unmix, averaging) on the real and paper models under both
# schemes and prints one markdown table per attack (rows model x scheme: filters recovered
# at |cos| >= 0.95, mean best cos, the public and random floors, activations recovered,
# time). Every JSON report is kept in OUT.
#
# Usage: scripts/attack_table.sh [OUT]      (default: target/attack-table)
# Environment: MODELS, SCHEMES, KINDS (space-separated subsets), T (averaging runs on
# hardened packages, default 64), SHADOWNET_NO_BUILD=1 to use the built binary as is.
# Costs on 2 cores: seed seconds per package; unmix minutes (the big paper models run a
# reduced method set, see BIG below); averaging on hardened packages is bound by the
# trusted core computing one-time masks on the spot for every run.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
FIX="${SHADOWNET_FIXTURES:-$REPO/target/fixtures}"
OUT="${1:-$REPO/target/attack-table}"
MODELS=(${MODELS:-ppocr_cls hand_landmark_lite face_detection_short_range palm_detection_lite selfie_segmentation mobilenet_v1 resnet44 resnet404 minivgg yolov4_tiny})
SCHEMES=(${SCHEMES:-shadownet hardened})
KINDS=(${KINDS:-seed unmix averaging})
T="${T:-64}"
BIG=" resnet404 yolov4_tiny "
[[ -f "$FIX/models/resnet44.onnx" ]] || "$REPO/scripts/make-fixtures.sh"
[[ -n "${SHADOWNET_NO_BUILD:-}" ]] || cargo build --release -q -p shadownet
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
BIN="$WORK/shadownet"
cp "$REPO/target/release/shadownet" "$BIN"
"$BIN" keygen -o "$WORK/keys" >/dev/null
model_file() { for e in onnx tflite; do [[ -f "$FIX/models/$1.$e" ]] && echo "$FIX/models/$1.$e" && return; done; return 1; }
shape_args() { [[ "$1" == ppocr_cls ]] && echo "--input-shape x=1,3,48,192" || true; }
for s in "${SCHEMES[@]}"; do
    for m in "${MODELS[@]}"; do
        f="$(model_file "$m")"
        pkg="$WORK/$s-$m"
        "$BIN" convert "$f" $(shape_args "$m") --to "$WORK/keys/device.pub" -o "$pkg" --seed 7 --scheme "$s" >/dev/null 2>&1
        for k in "${KINDS[@]}"; do
            extra=()
            case "$k" in
                unmix) [[ "$BIG" == *" $m "* ]] && extra=(--group-sizes 8 --no-whole-layer --methods pca,pca-dct2,ica-logcosh-sym) ;;
                averaging)
                    if [[ "$s" == shadownet ]]; then extra=(--runs 4 --inputs 8)
                    elif [[ "$BIG" == *" $m "* || "$m" == mobilenet_v1 ]]; then extra=(--runs 16 --inputs 4)
                    else extra=(--runs "$T" --inputs 8); fi ;;
            esac
            echo "attack-table: $s $m $k ${extra[*]}" >&2
            t0=$(date +%s.%N)
            "$BIN" attack "$pkg" --key "$WORK/keys/device.key" --reference "$f" --kind "$k" --json --seed 1 \
                "${extra[@]}" > "$OUT/$s-$m-$k.json"
            t1=$(date +%s.%N)
            python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$t1" > "$OUT/$s-$m-$k.time"
        done
        rm -rf "$pkg"
    done
done
python3 "$REPO/scripts/attack_table.py" "$OUT"
