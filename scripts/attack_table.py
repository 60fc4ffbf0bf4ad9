#!/usr/bin/env python3
"""Markdown tables from the JSON reports scripts/attack_table.sh leaves in OUT.

Usage: scripts/attack_table.py OUT
Rows model x scheme; a missing report is skipped. Percentages are of real filters
(recovered: best |cos| >= 0.95; exact: >= 0.999) or of masked layers (activations:
correlation >= 0.95)."""
import glob
import json
import os
import sys

out = sys.argv[1]
ORDER = ["ppocr_cls", "hand_landmark_lite", "face_detection_short_range", "palm_detection_lite",
         "selfie_segmentation", "mobilenet_v1", "resnet44", "resnet404", "minivgg", "yolov4_tiny"]


def load(scheme, model, kind):
    p = os.path.join(out, f"{scheme}-{model}-{kind}.json")
    if not os.path.exists(p) or os.path.getsize(p) == 0:
        return None, None
    r = json.load(open(p))[kind]
    t = os.path.join(out, f"{scheme}-{model}-{kind}.time")
    secs = float(open(t).read()) if os.path.exists(t) else None
    return r, secs


def pct(x):
    return f"{100 * x:.1f}%"


def totals(t):
    if not t or not t["filters"]:
        return "— | — | — | —"
    return (f'{t["recovered"]}/{t["filters"]} ({pct(t["fraction"])}; exact {pct(t["exact"] / t["filters"])}), '
            f'cos {t["mean_cos"]:.3f} | {pct(t["public_floor_fraction"])} / {t["public_floor_mean_cos"]:.3f} | '
            f'{pct(t["random_floor_fraction"])} / {t["random_floor_mean_cos"]:.3f} | {t["layers_at_floor"]}/{t["layers"]}')


models = [m for m in ORDER if glob.glob(os.path.join(out, f"*-{m}-*.json"))]
schemes = ["shadownet", "hardened"]
def head(prefix):
    return (f" {prefix}: filters recovered (exact), mean best cos | public floor (recovered / cos) | "
            "random floor (recovered / cos) | layers at floor |")

print("### seed\n")
print("| model | scheme | seed found (searched 0..2^24) | search s |" + head("dense-like") + head("depthwise") + " total s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in models:
    for s in schemes:
        r, secs = load(s, m, "seed")
        if r is None:
            continue
        print(f'| {m} | {s} | {r["found"]} | {r["seconds"]:.1f} | {totals(r["dense"])} | {totals(r["depthwise"])} | {secs or 0:.0f} |')

print("\n### unmix\n")
print("| model | scheme | settings |" + head("dense-like") + head("depthwise") + " s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in models:
    for s in schemes:
        r, secs = load(s, m, "unmix")
        if r is None:
            continue
        settings = f'h {",".join(map(str, r["group_sizes"]))}{" + whole" if r["whole_layer"] else ""}; {len(r["methods"])} methods'
        print(f'| {m} | {s} | {settings} | {totals(r["dense"])} | {totals(r["depthwise"])} | {secs or 0:.0f} |')

print("\n### averaging\n")
print("| model | scheme | runs x inputs | activations corr >= 0.95 | median corr |" + head("filters") + " s |")
print("|---|---|---|---|---|---|---|---|---|---|")
for m in models:
    for s in schemes:
        r, secs = load(s, m, "averaging")
        if r is None:
            continue
        both = dict(r["dense"])
        d = r["depthwise"]
        if d["filters"]:
            # Filter-weighted union of the two totals.
            n1, n2 = both["filters"], d["filters"]
            for k in ["mean_cos", "public_floor_fraction", "public_floor_mean_cos",
                      "random_floor_fraction", "random_floor_mean_cos"]:
                both[k] = (both[k] * n1 + d[k] * n2) / max(1, n1 + n2)
            for k in ["layers", "filters", "recovered", "exact", "layers_at_floor"]:
                both[k] += d[k]
            both["fraction"] = both["recovered"] / max(1, both["filters"])
        print(f'| {m} | {s} | {r["runs"]} x {r["inputs"]} | {r["recovered_corr"]}/{r["masked_layers"]} '
              f'({pct(r["recovered_corr_fraction"])}) | {r["median_corr"]:.3f} | {totals(both)} | {secs or 0:.0f} |')
