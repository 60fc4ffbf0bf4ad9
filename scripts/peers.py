#!/usr/bin/env python3
"""Interleaved latency of shadownet's plain engine, ONNX Runtime and tract on the same input.

    peers.py run --bin SHADOWNET --tract TRACT_WORKER --out DIR [--runs 60] [--warmup 10]
                 [--threads 1,2] [--models NAME=PATH[@INPUT=1,3,48,192] ...]
    peers.py worker-ort --model M --input NAME=FILE.npy --threads T
    peers.py profile --bin SHADOWNET --model M [--input-shape NAME=dims] --threads T

`run` starts every engine as a long-lived worker process (shadownet: `bench --serve`;
ONNX Runtime: `worker-ort` below; tract: tools/peers) with the same N(0,1) input, checks
that their outputs agree, warms each up, then times one inference per engine per round,
rotating the order every round, so all engines see the same machine load. tract runs both
single-threaded and (T > 1) with its multithread-mm executor; the faster median counts.
It writes DIR/peers.json and DIR/peers.md (the table for docs/benchmarks.md).

`profile` prints, per layer, shadownet's plan step times next to ONNX Runtime's own
profile (SessionOptions.enable_profiling), medians over the runs.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# The six models: (name, fixture file, input overrides).
DEFAULT_MODELS = [
    ("MobileNet-v1 224", "mobilenet_v1.onnx", None),
    ("ResNet-44 32", "resnet44.onnx", None),
    ("ResNet-404 32", "resnet404.onnx", None),
    ("MiniVGG 32", "minivgg.onnx", None),
    ("YOLOv4-tiny 416", "yolov4_tiny.onnx", None),
    ("PP-OCR cls 48x192", "ppocr_cls.onnx", {"x": (1, 3, 48, 192)}),
]


class Worker:
    """A long-lived engine process speaking the line protocol (warm N / time / save / quit)."""

    def __init__(self, name, cmd):
        self.name = name
        self.cmd = cmd
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1)
        line = self.p.stdout.readline()
        if not line.startswith("ready"):
            err = self.p.stderr.read()
            raise SystemExit(f"peers.py: {name} did not start ({' '.join(cmd)}): {line.strip()} {err.strip()[-2000:]}")
        self.banner = line.strip()

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        ans = self.p.stdout.readline()
        if not ans:
            err = self.p.stderr.read()
            raise SystemExit(f"peers.py: {self.name} died on '{line}': {err.strip()[-2000:]}")
        return ans.strip()

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()


def ort_session(model, threads, profile=False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if profile:
        so.enable_profiling = True
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def worker_ort(args):
    import onnxruntime as ort
    sess = ort_session(args.model, args.threads)
    feeds = {}
    for spec in args.input:
        name, _, path = spec.partition("=")
        feeds[name] = np.load(path)
    names = [o.name for o in sess.get_outputs()]
    sess.run(names, feeds)
    print(f"ready onnxruntime {ort.__version__}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "warm":
            for _ in range(int(words[1]) if len(words) > 1 else 1):
                sess.run(names, feeds)
            print("ok", flush=True)
        elif words[0] == "time":
            t0 = time.perf_counter()
            sess.run(names, feeds)
            print((time.perf_counter() - t0) * 1e3, flush=True)
        elif words[0] == "save":
            ys = sess.run(names, feeds)
            for i, y in enumerate(ys):
                np.save(os.path.join(words[1], f"out{i}.npy"), np.asarray(y, dtype=np.float32))
            print("ok", flush=True)
        else:
            raise SystemExit(f"worker-ort: unknown command {words[0]}")


def input_specs(model, overrides):
    """(name, shape) of every model input, free dims from the overrides."""
    import onnx
    m = onnx.load(model, load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    out = []
    for i in m.graph.input:
        if i.name in init:
            continue
        if overrides and i.name in overrides:
            out.append((i.name, tuple(overrides[i.name])))
            continue
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if any(d <= 0 for d in dims):
            raise SystemExit(f"peers.py: {model} input {i.name} has free dimensions; give NAME=PATH@{i.name}=1,3,H,W")
        out.append((i.name, tuple(dims)))
    return out


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def bench_model(label, model, overrides, threads, a, tmp):
    rng = np.random.default_rng(a.seed)
    specs = input_specs(model, overrides)
    in_args = []
    shape_args = []
    for name, shape in specs:
        path = os.path.join(tmp, f"in_{name.replace('/', '_')}.npy")
        np.save(path, rng.standard_normal(shape, dtype=np.float32))
        in_args.append(f"{name}={path}")
        shape_args += ["--input-shape", f"{name}={','.join(map(str, shape))}"]
    workers = []
    ours = [a.bin, "--threads", str(threads), "bench", model, "--serve"]
    for s in in_args:
        ours += ["--input", s]
    workers.append(Worker("shadownet", ours + shape_args))
    ort_cmd = [sys.executable, os.path.abspath(__file__), "worker-ort", "--model", model, "--threads", str(threads)]
    for s in in_args:
        ort_cmd += ["--input", s]
    workers.append(Worker("onnxruntime", ort_cmd))
    if a.tract != "none":
        tract_base = [a.tract, "--model", model, "--threads", str(threads)]
        for s in in_args:
            tract_base += ["--input", s]
        workers.append(Worker("tract", tract_base))
        if threads > 1:
            workers.append(Worker("tract-mt", tract_base + ["--multithread"]))
    # Every engine computes the same function on the same input.
    outs = {}
    for w in workers:
        d = tempfile.mkdtemp(dir=tmp)
        assert w.ask(f"save {d}") == "ok"
        outs[w.name] = [np.load(os.path.join(d, f)) for f in sorted(os.listdir(d))]
    ref = outs["onnxruntime"]
    agreement = {}
    for name, o in outs.items():
        if name == "onnxruntime":
            continue
        agreement[name] = max((rel_err(x, y) for x, y in zip(o, ref)), default=float("inf"))
        if len(o) != len(ref):
            agreement[name] = float("inf")
    for w in workers:
        assert w.ask(f"warm {a.warmup}") == "ok"
    samples = {w.name: [] for w in workers}
    for r in range(a.runs):
        k = r % len(workers)
        for w in workers[k:] + workers[:k]:
            samples[w.name].append(float(w.ask("time")))
            # Let a finished engine's spinning threads go idle before the next one starts.
            time.sleep(a.gap)
    for w in workers:
        w.close()
    med = {n: statistics.median(v) for n, v in samples.items()}
    tract_name = "tract" if "tract" in med else None
    if "tract-mt" in med and med["tract-mt"] < med["tract"]:
        tract_name = "tract-mt"
    row = {
        "model": label,
        "file": os.path.basename(model),
        "threads": threads,
        "runs": a.runs,
        "ours_ms": med["shadownet"],
        "ort_ms": med["onnxruntime"],
        "tract_ms": med[tract_name] if tract_name else float("nan"),
        "tract_variant": "multithread-mm" if tract_name == "tract-mt" else "single-thread",
        "medians_ms": med,
        "min_ms": {n: min(v) for n, v in samples.items()},
        "samples_ms": samples,
        "max_rel_err_vs_ort": agreement,
    }
    row["ours_over_ort"] = row["ours_ms"] / row["ort_ms"]
    row["ours_over_tract"] = row["ours_ms"] / row["tract_ms"]
    return row


def table(rows, meta):
    lines = [
        "| model | T | ours ms | ONNX Runtime ms | tract ms | ours/ORT | ours/tract | max rel. err vs ORT (ours, tract) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        e = r["max_rel_err_vs_ort"]
        tv = " (mt)" if r["tract_variant"] == "multithread-mm" else ""
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['ours_ms']:.2f} | {r['ort_ms']:.2f} | {r['tract_ms']:.2f}{tv} | "
            f"{r['ours_over_ort']:.2f} | {r['ours_over_tract']:.2f} | "
            f"{e.get('shadownet', float('nan')):.1e}, {e.get('tract', float('nan')):.1e} |")
    return "\n".join(lines)


def cmd_run(a):
    fixtures = os.environ.get("SHADOWNET_FIXTURES") or os.path.join(os.path.dirname(__file__), "..", "target", "fixtures")
    models = []
    if a.models:
        for spec in a.models:
            label, _, rest = spec.partition("=")
            path, _, inp = rest.partition("@")
            ov = None
            if inp:
                n, _, dims = inp.partition("=")
                ov = {n: tuple(int(d) for d in dims.split(","))}
            models.append((label, path, ov))
    else:
        models = [(l, os.path.join(fixtures, "models", f), ov) for l, f, ov in DEFAULT_MODELS]
    threads = [int(t) for t in a.threads.split(",")]
    os.makedirs(a.out, exist_ok=True)
    import onnxruntime as ort
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
        "onnxruntime": ort.__version__,
        "runs": a.runs,
        "warmup": a.warmup,
        "seed": a.seed,
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in threads:
            for label, path, ov in models:
                print(f"peers.py: {label}, {t} thread(s)", file=sys.stderr, flush=True)
                rows.append(bench_model(label, path, ov, t, a, tmp))
                r = rows[-1]
                print(f"  ours {r['ours_ms']:.3f}  ort {r['ort_ms']:.3f}  tract {r['tract_ms']:.3f}  "
                      f"ours/ort {r['ours_over_ort']:.2f}  ours/tract {r['ours_over_tract']:.2f}  "
                      f"err {r['max_rel_err_vs_ort']}", file=sys.stderr, flush=True)
    meta["load_after"] = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None
    # Where a model misses, per layer against ONNX Runtime's own profile.
    profiles = []
    if a.profile_runs > 0:
        for r in rows:
            if r["ours_over_ort"] > 1.0:
                label, path, ov = next(m for m in models if m[0] == r["model"])
                print(f"peers.py: profiling {label}, {r['threads']} thread(s)", file=sys.stderr, flush=True)
                ours, ort, pairs, unmatched = profile_pair(a.bin, path, ov, r["threads"], a.profile_runs, a.seed)
                profiles.append(profile_markdown(label, r["threads"], ours, ort, pairs, unmatched))
    meta["profiles"] = profiles
    with open(os.path.join(a.out, "peers.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(a.out, "peers.md"), "w") as f:
        f.write(table(rows, meta) + "\n")
    print(table(rows, meta))
    if a.doc:
        write_doc(a.doc, rows, meta, a)


BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"


def write_doc(path, rows, meta, a):
    """Replaces the generated plain-engine section of docs/benchmarks.md (or appends it)."""
    tract_ver = "tract-onnx 0.23.9"
    lines = [
        BEGIN,
        "",
        "## Plain engine against ONNX Runtime and tract",
        "",
        "The plain engine (`shadownet run`, `shadownet bench`) compiles a model once into a plan "
        "(`shadownet_cpu::Plan`, crates/cpu): activations in a blocked channel layout (NCHWc, 16 "
        "channels per AVX-512 vector, a zero halo standing for the convolutions' padding), weights "
        "packed at load into the order the micro-kernels stream them, convolutions computed directly "
        "(no im2col) by generated AVX-512 kernels that keep a tile of pixels x output channels in "
        "registers and apply bias, batch norm, residual add, per-channel constants and the activation "
        "(hard-swish as exported by ONNX included) before the one store; depthwise kernels that load "
        "each input vector of a window row once; a matrix-vector kernel that streams dense weights with "
        "software prefetch; block-aligned concat and split as views (no copies); one arena laid out by "
        "liveness (nothing allocated per inference except by ops without a fast kernel); and a team "
        "of worker threads that spin between layers, sleep between inferences and share every layer "
        "in rows x output-channel blocks. Per-kernel GFLOP/s against the machine's measured peak: "
        "`cargo bench -p shadownet-cpu --bench conv`.",
        "",
        "Generated by `scripts/bench.sh --peers` (`scripts/peers.py run`); raw samples in `target/bench/peers.json`.",
        "Each engine is a long-lived worker process fed the same N(0,1) input (seed "
        f"{meta['seed']}): shadownet (`shadownet --threads T bench MODEL --serve`, the compiled plan), "
        f"ONNX Runtime {meta['onnxruntime']} (graph optimisation ALL, sequential, intra_op_num_threads = T, "
        f"inter_op 1) and {tract_ver} (`tools/peers`, optimised plan; single-threaded, and at T > 1 also its "
        "`multithread-mm` executor with T threads, the faster median counts, marked mt). After a check that all "
        f"outputs agree, a warm-up of {meta['warmup']} runs each, {meta['runs']} rounds each time one inference "
        "per engine, the order rotating every round, a 5 ms pause between runs. Medians; ratios of medians from "
        "this one interleaved run.",
        "",
        f"- Machine: {a.cpu} ({os.cpu_count()} cores), shared: load average {' '.join(meta['load_before'] or [])} "
        f"before, {' '.join(meta['load_after'] or [])} after the run",
        f"- Date: {meta['date']}",
        "",
        table(rows, meta),
        "",
    ]
    if meta.get("profiles"):
        lines += [
            "Where shadownet is slower than ONNX Runtime, per layer (`scripts/peers.py profile`, run right "
            "after the interleaved run, each engine alone: shadownet's plan steps timed one by one, ONNX "
            "Runtime's SessionOptions.enable_profiling):",
            "",
        ]
        for p in meta["profiles"]:
            lines += [p, ""]
    lines += [END]
    block = "\n".join(lines)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        _, post = rest.split(END, 1)
        text = pre + block + post
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def profile_pair(bin_path, model, overrides, threads, runs, seed):
    """Per-layer medians: shadownet's plan steps and ONNX Runtime's own profile, paired by
    node name (a shadownet step names every graph node it fuses; ONNX Runtime names a
    fused node after its last node, plus suffixes such as `_nchwc`)."""
    import re
    specs = input_specs(model, overrides)
    rng = np.random.default_rng(seed)
    feeds = {n: rng.standard_normal(s, dtype=np.float32) for n, s in specs}
    with tempfile.TemporaryDirectory() as tmp:
        ins = []
        for n, x in feeds.items():
            p = os.path.join(tmp, f"in_{n.replace('/', '_')}.npy")
            np.save(p, x)
            ins += ["--input", f"{n}={p}"]
        shapes = sum((["--input-shape", f"{n}={','.join(map(str, s))}"] for n, s in specs), [])
        w = Worker("shadownet", [bin_path, "--threads", str(threads), "bench", model, "--serve"] + ins + shapes)
        w.ask("warm 5")
        ours = json.loads(w.ask(f"profile {runs}"))["steps"]
        w.close()
    sess = ort_session(model, threads, profile=True)
    names = [o.name for o in sess.get_outputs()]
    for _ in range(5 + runs):
        sess.run(names, feeds)
    prof_file = sess.end_profiling()
    with open(prof_file) as f:
        events = json.load(f)
    os.remove(prof_file)
    per_node, order = {}, []
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        n = e["name"][: -len("_kernel_time")]
        if n not in per_node:
            per_node[n] = []
            order.append((n, e.get("args", {}).get("op_name", "?")))
        per_node[n].append(e["dur"] / 1e3)
    ort = [(n, op, statistics.median(per_node[n][-runs:])) for n, op in order]
    # Pair: the shadownet step whose nodes include the ONNX Runtime node's base name.
    owner = {}
    for i, st in enumerate(ours):
        for part in st["name"].split("+"):
            owner.setdefault(part, i)
    pairs = {i: [] for i in range(len(ours))}
    unmatched = []
    for n, op, t in ort:
        base = re.sub(r"(_nchwc|_token_\d+)+$", "", n)
        base = base[len("fused "):] if base.startswith("fused ") else base
        i = owner.get(base)
        if i is None:
            unmatched.append((n, op, t))
        else:
            pairs[i].append((n, op, t))
    # Linear nodes named after nodes the importer folded away (batch norms): pair the
    # rest in execution order with the linear steps still unpaired.
    linear_ops = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
    free_steps = [i for i, st in enumerate(ours) if st["macs"] > 0 and not pairs[i]]
    rest = []
    for n, op, t in unmatched:
        if op in linear_ops and free_steps:
            pairs[free_steps.pop(0)].append((n, op, t))
        else:
            rest.append((n, op, t))
    return ours, ort, pairs, rest


def profile_markdown(label, threads, ours, ort, pairs, unmatched, top=12):
    ours_total = sum(s["ms"] for s in ours)
    ort_total = sum(t for _, _, t in ort)
    rows = []
    for i, st in enumerate(ours):
        o = sum(t for _, _, t in pairs[i])
        rows.append((st["ms"] - o, st, o, pairs[i]))
    rows.sort(key=lambda r: -r[0])
    lines = [
        f"**{label}, {threads} thread(s)**: per-layer medians, shadownet steps {ours_total:.3f} ms summed, "
        f"ONNX Runtime nodes {ort_total:.3f} ms summed; the {top} steps where shadownet loses most:",
        "",
        "| shadownet step | ms | GFLOP/s | ONNX Runtime node(s) | ms | difference ms |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for d, st, o, ps in rows[:top]:
        gf = 2 * st["macs"] / st["ms"] / 1e6 if st["ms"] > 0 and st["macs"] else 0
        nodes = ", ".join(f"{n} ({op})" for n, op, _ in ps) or "-"
        lines.append(f"| {st['name'][:60]} | {st['ms']:.3f} | {gf:.0f} | {nodes[:60]} | {o:.3f} | {d:+.3f} |")
    if unmatched:
        um = sum(t for _, _, t in unmatched)
        lines += ["", f"ONNX Runtime nodes without a shadownet step (layout changes and the like): {um:.3f} ms: "
                  + ", ".join(f"{n} {t:.3f}" for n, _, t in unmatched[:8])]
    return "\n".join(lines)


def cmd_profile(a):
    """Per-layer times: shadownet's plan steps and ONNX Runtime's nodes (medians)."""
    overrides = {}
    for s in a.input_shape or []:
        n, _, d = s.partition("=")
        overrides[n] = tuple(int(x) for x in d.split(","))
    ours, ort, pairs, unmatched = profile_pair(a.bin, a.model, overrides, a.threads, a.runs, a.seed)
    print(f"# {os.path.basename(a.model)}, {a.threads} thread(s), medians of {a.runs} runs")
    print(f"shadownet: {len(ours)} steps, {sum(s['ms'] for s in ours):.3f} ms summed; "
          f"ONNX Runtime: {len(ort)} nodes, {sum(t for _, _, t in ort):.3f} ms summed")
    print("\n## shadownet plan steps (ms, GFLOP/s) and the ONNX Runtime nodes they cover (ms)")
    for i, s in enumerate(ours):
        gf = 2 * s["macs"] / s["ms"] / 1e6 if s["ms"] > 0 and s["macs"] else 0
        ort_ms = sum(t for _, _, t in pairs[i])
        print(f"{s['ms']:8.3f} {gf:7.1f}  {ort_ms:8.3f}  {s['name']}  <- {', '.join(n for n, _, _ in pairs[i])}")
    print("\n## ONNX Runtime nodes without a shadownet step (ms)")
    for n, op, t in unmatched:
        print(f"{t:8.3f}  {op:<18} {n}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin", required=True)
    r.add_argument("--tract", required=True, help="the tools/peers worker binary, or 'none' to skip tract")
    r.add_argument("--out", required=True)
    r.add_argument("--runs", type=int, default=60)
    r.add_argument("--warmup", type=int, default=10)
    r.add_argument("--threads", default="1,2")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--gap", type=float, default=0.005, help="seconds between two timed runs")
    r.add_argument("--models", nargs="*")
    r.add_argument("--doc", help="update the generated section of this markdown file")
    r.add_argument("--cpu", default="unknown CPU", help="the CPU's name, for --doc")
    r.add_argument("--profile-runs", type=int, default=20,
                   help="runs of the per-layer profile of every model slower than ONNX Runtime (0: none)")
    w = sub.add_parser("worker-ort")
    w.add_argument("--model", required=True)
    w.add_argument("--input", action="append", default=[])
    w.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("profile")
    p.add_argument("--bin", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--input-shape", action="append")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    {"run": cmd_run, "worker-ort": worker_ort, "profile": cmd_profile}[a.cmd](a)


if __name__ == "__main__":
    main()
