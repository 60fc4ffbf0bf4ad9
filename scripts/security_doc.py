#!/usr/bin/env python3
"""Writes docs/security.md (to stdout) from the JSON reports scripts/security.sh leaves in OUT.

Usage: scripts/security_doc.py OUT T SEED_USED SEED_BITS
Rows model x scheme; a missing or failed report shows as a dash with the reason."""
import json
import os
import sys

out, T, SEED_USED, SEED_BITS = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ORDER = ["ppocr_cls", "hand_landmark_lite", "face_detection_short_range", "palm_detection_lite",
         "selfie_segmentation", "minivgg", "resnet44", "mobilenet_v1", "resnet404", "yolov4_tiny"]
SCHEMES = ["shadownet", "hardened"]


def load(s, m, k):
    p = os.path.join(out, f"{s}-{m}-{k}.json")
    if not os.path.exists(p):
        return None, None, None
    t = os.path.join(out, f"{s}-{m}-{k}.time")
    secs = float(open(t).read()) if os.path.exists(t) else None
    if os.path.getsize(p) == 0:
        e = os.path.join(out, f"{s}-{m}-{k}.err")
        err = open(e).read().strip().splitlines()[-1:] if os.path.exists(e) else ["no report"]
        return None, secs, (err[0] if err else "failed")[:120]
    key = k.replace("-", "_")
    return json.load(open(p)).get(key), secs, None


def pct(x):
    return f"{100 * x:.1f}%"


def merge(a, b):
    """Filter-weighted union of two totals (dense-like and depthwise)."""
    if not b or not b.get("filters"):
        return a
    if not a or not a.get("filters"):
        return b
    n1, n2 = a["filters"], b["filters"]
    r = dict(a)
    for k in a:
        if isinstance(a[k], float) and k in b:
            r[k] = (a[k] * n1 + b[k] * n2) / (n1 + n2)
    for k in ["layers", "filters", "recovered", "exact", "layers_at_floor"]:
        if k in a and k in b:
            r[k] = a[k] + b[k]
    r["fraction"] = r["recovered"] / max(1, r["filters"])
    return r


def filt(t):
    """recovered % (n/N) | mean best cos | public floor | black-box floor | layers at floor"""
    if not t or not t.get("filters"):
        return "— | — | — | —"
    at = f' ({t["layers_at_floor"]}/{t["layers"]} layers at floor)' if "layers_at_floor" in t else ""
    return (f'{pct(t["fraction"])} ({t["recovered"]}/{t["filters"]}) | {t["mean_cos"]:.3f} | '
            f'{pct(t["public_floor_fraction"])} / {t["public_floor_mean_cos"]:.3f} | '
            f'{pct(t["random_floor_fraction"])} / {t["random_floor_mean_cos"]:.3f}{at}')


models = [m for m in ORDER if any(os.path.exists(os.path.join(out, f"{s}-{m}-{k}.json"))
                                  for s in SCHEMES for k in ["fake-partner", "unmix", "averaging", "seed"])]
HEAD = "| model | scheme | filters recovered (cos ≥ 0.95) | mean best cos | public floor (rec. / cos) | black-box floor (rec. / cos) |"


def rows(kind, cells, extra_head, extra_sep):
    lines = [HEAD + extra_head + " time |", "|---|---|---|---|---|---|" + extra_sep + "---|"]
    for m in models:
        for s in SCHEMES:
            r, secs, err = load(s, m, kind)
            if r is None and err is None:
                continue
            if r is None:
                lines.append(f"| {m} | {s} | failed: {err} |" + " — |" * (3 + extra_head.count("|")) + f" {secs or 0:.1f} s |")
                continue
            f, x = cells(r)
            lines.append(f"| {m} | {s} | {f} |{x} {secs or 0:.1f} s |")
    return "\n".join(lines)


def fp_cells(r):
    t = merge(dict(r["fake_pairs"]), dict(r["depthwise"]))
    if not t["filters"]:
        return "— | — | — | —", ""
    return (f'{pct(t["fraction"])} ({t["recovered"]}/{t["filters"]}) | {t["mean_cos"]:.3f} | '
            f'{pct(t["public_floor_fraction"])} / {t["public_floor_mean_cos"]:.3f} | '
            f'{pct(t["baseline_fraction"])} / {t["baseline_mean_cos"]:.3f}'), ""


def mr_cells(r):
    n = max(1, r["masked_layers"])
    return "— | — | — | —", f' {pct(r["recovered_corr"] / n)} ({r["recovered_corr"]}/{r["masked_layers"]}) | {r["median_rel_err"]:.3g} |'


def avg_cells(r):
    t = merge(r["dense"], r["depthwise"])
    return filt(t), f' {r["runs"]} × {r["inputs"]} | {pct(r["recovered_corr_fraction"])} ({r["recovered_corr"]}/{r["masked_layers"]}) | {r["median_corr"]:.3f} |'


def unmix_cells(r):
    return filt(r["dense"]), f' {filt(r["depthwise"]).split(" | ")[0]} |'


def seed_cells(r):
    found = r["found"] if r["found"] is not None else "none"
    return filt(merge(r["dense"], r["depthwise"])), f' {found} ({r["tried"]} tried, confirmation cos {r["match_cos"]:.3f}) | {", ".join(r["public_values_from_seed"]) or "none"} |'


def rb_cells(r):
    if not r["applicable"]:
        return "— | — | — | —", " not applicable (no pool) | — | — |"
    a = r.get("activations")
    act = f'{pct(a["recovered_corr"] / max(1, a["masked_layers"]))} ({a["recovered_corr"]}/{a["masked_layers"]})' if a else "—"
    state = "refused: " + r["refused"] if r.get("refused") else f'{r["accepted"]} queries accepted'
    return "— | — | — | —", f' {state} | {r["mask_reused"]} | {act} |'


def simple_table(kind, head, sep, cells):
    lines = [head, sep]
    for m in models:
        for s in SCHEMES:
            r, secs, err = load(s, m, kind)
            if r is None and err is None:
                continue
            lines.append(f"| {m} | {s} | " + (cells(r) if r else f"failed: {err} |") + f" {secs or 0:.1f} s |")
    return "\n".join(lines)


def liar_cells(r):
    return f'{r["lie"]} | {r["accepted"]}/{r["runs"]} | {r["top1_changed"]} | {r["false_alarms"]} |'


def forge_cells(r):
    return (f'{r["public_identical"]} | {r["untrusted_signer"].split(":")[0]} | {r["own_signer"]} | '
            f'{r["victim_entries"]} | {r["victim_pool"].replace("|", "/")} |')


doc = open(os.path.join(os.path.dirname(__file__), "security_doc.md")).read()
tables = {
    "FAKE_PARTNER": rows("fake-partner", fp_cells, "", ""),
    "MASK_REUSE": rows("mask-reuse", mr_cells, " activations recovered (corr ≥ 0.95) | median rel err |", "---|---|"),
    "AVERAGING": rows("averaging", avg_cells, " runs × inputs | activations recovered (corr ≥ 0.95) | median corr |", "---|---|---|"),
    "UNMIX": rows("unmix", unmix_cells, " depthwise recovered |", "---|"),
    "SEED": rows("seed", seed_cells, " seed found | public header fields that follow the seed |", "---|---|"),
    "ROLLBACK": rows("rollback", rb_cells, " outcome | mask reused | activations recovered (corr ≥ 0.95) |", "---|---|---|"),
    "LIAR": simple_table("liar", "| model | scheme | lie | accepted | top-1 changed | false alarms | time |",
                         "|---|---|---|---|---|---|---|", liar_cells),
    "FORGE": simple_table("forge", "| model | scheme | public.bin identical | untrusted signer | own signer trusted | victim pool entries | inference on the victim's pool | time |",
                          "|---|---|---|---|---|---|---|---|", forge_cells),
}
doc = doc.replace("@T@", T).replace("@SEED_USED@", SEED_USED).replace("@SEED_BITS@", SEED_BITS)
doc = doc.replace("@MODELS@", ", ".join(models))
for k, v in tables.items():
    doc = doc.replace(f"@{k}@", v)
sys.stdout.write(doc)
