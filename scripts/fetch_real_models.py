#!/usr/bin/env python3
"""Fetch real-world models from pinned PyPI wheels (pip download, no install).

Usage: fetch_real_models.py OUTDIR [--cache DIR]

Wheels are cached in DIR (default: $SHADOWNET_WHEEL_CACHE or
<repo>/fixtures-cache/wheels) and only downloaded when missing.  Models already
present in OUTDIR are not extracted again.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (distribution, version, wheel-name prefix, {member path in wheel: output file})
WHEELS = [
    ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime-1.4.4-", {
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx": "ppocr_cls.onnx",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": "ppocr_det.onnx",
    }),
    ("mediapipe", "0.10.14", "mediapipe-0.10.14-", {
        "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite": "hand_landmark_lite.tflite",
        "mediapipe/modules/face_detection/face_detection_short_range.tflite":
            "face_detection_short_range.tflite",
        "mediapipe/modules/palm_detection/palm_detection_lite.tflite": "palm_detection_lite.tflite",
        "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite":
            "selfie_segmentation.tflite",
        # Weights stored sparse (CSR blocks) in fp16, expanded by DENSIFY then DEQUANTIZE.
        "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite":
            "face_detection_full_range_sparse.tflite",
    }),
]


def find_wheel(cache, prefix):
    hits = sorted(glob.glob(os.path.join(cache, prefix + "*.whl")))
    return hits[0] if hits else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--cache", default=os.environ.get("SHADOWNET_WHEEL_CACHE")
                    or os.path.join(REPO, "fixtures-cache", "wheels"))
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)

    for dist, version, prefix, members in WHEELS:
        todo = {m: o for m, o in members.items()
                if not os.path.exists(os.path.join(args.outdir, o))}
        if not todo:
            continue
        whl = find_wheel(args.cache, prefix)
        if whl is None:
            os.makedirs(args.cache, exist_ok=True)
            print(f"fetch_real_models: downloading {dist}=={version}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet",
                            "--disable-pip-version-check", "--no-deps",
                            "--only-binary=:all:", "-d", args.cache,
                            f"{dist}=={version}"], check=True)
            whl = find_wheel(args.cache, prefix)
            if whl is None:
                raise SystemExit(f"fetch_real_models: no wheel {prefix}*.whl in {args.cache}")
        with zipfile.ZipFile(whl) as zf:
            for member, out in todo.items():
                dst = os.path.join(args.outdir, out)
                tmp = dst + ".tmp"
                with zf.open(member) as src, open(tmp, "wb") as f:
                    shutil.copyfileobj(src, f)
                os.replace(tmp, dst)
                print(f"fetch_real_models: {out} ({os.path.getsize(dst)} bytes) "
                      f"from {os.path.basename(whl)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
