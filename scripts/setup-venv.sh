#!/usr/bin/env bash
# Create/update the Python virtualenv used to generate test fixtures.
# Idempotent: a stamp file holding the hash of the pinned requirements makes
# repeat runs a no-op.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SHADOWNET_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"

REQUIREMENTS="numpy==2.4.6
onnx==1.23.2
onnxruntime==1.32.0
ai-edge-litert==2.3.0"

HASH="$(printf '%s\n' "$REQUIREMENTS" | sha256sum | cut -d' ' -f1)"
STAMP="$VENV/.shadownet-requirements.sha256"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
    exit 0
fi

echo "setup-venv: creating/updating $VENV" >&2
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
REQ_FILE="$(mktemp)"
trap 'rm -f "$REQ_FILE"' EXIT
printf '%s\n' "$REQUIREMENTS" > "$REQ_FILE"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --only-binary=:all: -r "$REQ_FILE"
printf '%s\n' "$HASH" > "$STAMP"
echo "setup-venv: done" >&2
