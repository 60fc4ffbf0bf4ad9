#!/usr/bin/env python3
"""Makes the bundled demo inputs: a printed text line, upright and rotated by 180°,
preprocessed exactly as RapidOCR feeds its direction classifier (resize to height 48
keeping the aspect ratio, scale to [-1, 1], zero-pad to width 192, NCHW float32).

Run once; its outputs are committed under models/demo/. Needs numpy and pillow.
"""
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
TEXT = "Confidential inference"


def render(text: str) -> Image.Image:
    font = ImageFont.truetype(FONT, 40)
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("RGB", (right - left + 16, bottom - top + 16), (250, 250, 245))
    ImageDraw.Draw(img).text((8 - left, 8 - top), text, fill=(20, 20, 30), font=font)
    return img


def preprocess(img: Image.Image) -> np.ndarray:
    h, w = 48, 192
    ratio = img.width / img.height
    rw = min(w, int(math.ceil(h * ratio)))
    x = np.asarray(img.resize((rw, h), Image.BILINEAR), dtype=np.float32)
    x = x[:, :, ::-1]  # RapidOCR reads images with OpenCV: BGR
    x = (x / 255.0 - 0.5) / 0.5
    out = np.zeros((3, h, w), dtype=np.float32)
    out[:, :, :rw] = x.transpose(2, 0, 1)
    return out[None]


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "models/demo")
    img = render(TEXT)
    np.save(out / "text_upright.npy", preprocess(img))
    np.save(out / "text_flipped.npy", preprocess(img.rotate(180)))


if __name__ == "__main__":
    main()
