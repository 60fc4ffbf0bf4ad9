#!/usr/bin/env bash
# Build the test fixtures: models/<name>.{onnx,tflite} and
# cases/<name>/{inputs.npz,expected.npz} under ${SHADOWNET_FIXTURES:-<repo>/target/fixtures}.
# Idempotent: work is skipped when outputs exist and their stamp (hash of the
# generating script, its arguments and the inputs) is unchanged.
#
# SHADOWNET_PYTHON=/path/to/python skips setup-venv.sh and uses that interpreter.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FIX="${SHADOWNET_FIXTURES:-$REPO/target/fixtures}"
MODELS="$FIX/models"
CASES="$FIX/cases"
S="$REPO/scripts"

if [[ -n "${SHADOWNET_PYTHON:-}" ]]; then
    PY="$SHADOWNET_PYTHON"
else
    "$S/setup-venv.sh"
    PY="$REPO/.venv/bin/python"
fi
mkdir -p "$MODELS" "$CASES"

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
# Version of the python toolchain, so a changed onnx/onnxruntime regenerates.
TOOLS="$("$PY" -c 'import importlib.metadata as m; print(*(m.version(p) for p in ("numpy","onnx","onnxruntime","ai-edge-litert")))')"

PAPER=(mobilenet_v1 resnet44 resnet404 minivgg yolov4_tiny)
REAL_ONNX=(ppocr_cls ppocr_det)
REAL_TFLITE=(hand_landmark_lite face_detection_short_range palm_detection_lite selfie_segmentation
             face_detection_full_range_sparse)

# --- paper models ------------------------------------------------------------
stamp="$MODELS/.paper_models.stamp"
want="$(hash_of "$S/paper_models.py") $TOOLS"
missing=0
for n in "${PAPER[@]}"; do [[ -f "$MODELS/$n.onnx" ]] || missing=1; done
if [[ $missing == 1 || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "make-fixtures: generating paper models" >&2
    rm -f "$stamp"
    "$PY" "$S/paper_models.py" "$MODELS"
    printf '%s\n' "$want" > "$stamp"
fi

# --- real models -------------------------------------------------------------
stamp="$MODELS/.real_models.stamp"
want="$(hash_of "$S/fetch_real_models.py")"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    for n in "${REAL_ONNX[@]}"; do rm -f "$MODELS/$n.onnx"; done
    for n in "${REAL_TFLITE[@]}"; do rm -f "$MODELS/$n.tflite"; done
fi
"$PY" "$S/fetch_real_models.py" "$MODELS"
printf '%s\n' "$want" > "$stamp"

# --- int8 models (ONNX Runtime's quantize_static on float fixtures) -----------
QUANT=(mobilenet_v1 resnet44 ppocr_cls:x=1,3,48,192)
stamp="$MODELS/.int8_models.stamp"
want="$(hash_of "$S/quantize_models.py" "$MODELS/mobilenet_v1.onnx" "$MODELS/resnet44.onnx" \
    "$MODELS/ppocr_cls.onnx") $TOOLS ${QUANT[*]}"
missing=0
for q in "${QUANT[@]}"; do
    for f in qdq qop; do [[ -f "$MODELS/${q%%:*}_int8_$f.onnx" ]] || missing=1; done
done
[[ -f "$MODELS/integer_ops.onnx" ]] || missing=1
if [[ $missing == 1 || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "make-fixtures: quantizing ${QUANT[*]}" >&2
    rm -f "$stamp"
    "$PY" "$S/quantize_models.py" "$MODELS" "${QUANT[@]}"
    printf '%s\n' "$want" > "$stamp"
fi

# --- full-integer TFLite model (written without TensorFlow) -------------------
stamp="$MODELS/.tiny_int8.stamp"
want="$(hash_of "$S/make_tflite_int8.py") $TOOLS"
if [[ ! -f "$MODELS/tiny_int8.tflite" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    rm -f "$stamp"
    "$PY" "$S/make_tflite_int8.py" "$MODELS/tiny_int8.tflite"
    printf '%s\n' "$want" > "$stamp"
fi

# --- reference cases ---------------------------------------------------------
# case <name> <model file> [reference.py args...]
case_() {
    local name="$1" model="$2"; shift 2
    local dir="$CASES/$name" want
    want="$(hash_of "$S/reference.py" "$model") $TOOLS $*"
    if [[ -f "$dir/inputs.npz" && -f "$dir/expected.npz" && -f "$dir/.stamp" \
          && "$(cat "$dir/.stamp")" == "$want" ]]; then
        return 0
    fi
    rm -f "$dir/.stamp"
    "$PY" "$S/reference.py" --model "$model" --out "$dir" "$@"
    printf '%s\n' "$want" > "$dir/.stamp"
}

for n in "${PAPER[@]}"; do
    case_ "$n" "$MODELS/$n.onnx" --seed 0 --dist normal
done
case_ ppocr_cls "$MODELS/ppocr_cls.onnx" --seed 0 --dist normal --input-shape x=1,3,48,192
case_ ppocr_det "$MODELS/ppocr_det.onnx" --seed 0 --dist normal --input-shape x=1,3,640,640
# MediaPipe models take [0,1] images; selfie_segmentation gets N(0,1) because
# U[0,1) noise drives its sigmoid mask to ~1e-9 everywhere.
case_ hand_landmark_lite "$MODELS/hand_landmark_lite.tflite" --seed 0 --dist uniform
case_ face_detection_short_range "$MODELS/face_detection_short_range.tflite" --seed 0 --dist uniform
case_ palm_detection_lite "$MODELS/palm_detection_lite.tflite" --seed 0 --dist uniform
case_ selfie_segmentation "$MODELS/selfie_segmentation.tflite" --seed 0 --dist normal
# Int8 models are referenced with ONNX Runtime's default optimisations (its integer kernels).
for n in mobilenet_v1 resnet44; do
    for f in qdq qop; do
        case_ "${n}_int8_$f" "$MODELS/${n}_int8_$f.onnx" --seed 0 --dist normal --ort-optimize
    done
done
for f in qdq qop; do
    case_ "ppocr_cls_int8_$f" "$MODELS/ppocr_cls_int8_$f.onnx" --seed 0 --dist normal --ort-optimize \
        --input-shape x=1,3,48,192
done
case_ integer_ops "$MODELS/integer_ops.onnx" --seed 0 --dist normal --ort-optimize
case_ tiny_int8 "$MODELS/tiny_int8.tflite" --seed 0 --dist uniform
case_ face_detection_full_range_sparse "$MODELS/face_detection_full_range_sparse.tflite" \
    --seed 0 --dist uniform

echo "make-fixtures: fixtures ready in $FIX" >&2
