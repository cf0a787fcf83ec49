#!/usr/bin/env python3
"""CPU latency: our FBNetV3-B/D/G (timm-variant archs, timm's weights layout) vs timm's same models.

For each model and batch size, timm eager, ours eager and ours in deploy mode are timed
interleaved (round-robin, so machine noise hits all alike); the median per-iteration time
is reported with ratios timm / ours (> 1: ours faster). Deploy mode = BN folded into convs
and identity placeholders dropped (fbnet_zoo.deploy.prepare_for_deploy), in NCHW or
channels_last, or that model TorchScript-ed (frozen + optimize_for_inference), or our ONNX
export run by onnxruntime: whichever is fastest on a first, separate timing round (the mode
used and every candidate's time are recorded).

    nice -n 10 python benchmarks/latency.py                     # B, D, G; batch 1 and 32
    nice -n 10 python benchmarks/latency.py --models b --iters 5 --threads 2

Writes benchmarks/results/latency.json. Goals: ours eager no slower than timm eager
(ratio >= ~1), deploy >= 1.25x faster than timm eager.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch

import fbnet_zoo
from fbnet_zoo.converters import timm_to_ours
from fbnet_zoo.deploy import export_onnx, prepare_for_deploy
from fbnet_zoo.io_utils import atomic_write_text

warnings.filterwarnings("ignore", category=FutureWarning)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latency.json")


def _time(fn, x, iters):
    out = []
    with torch.inference_mode():
        for _ in range(iters):
            t = time.perf_counter()
            fn(x)
            out.append(time.perf_counter() - t)
    return out


def round_robin_ms(fns, rounds, *args):
    """Median ms per call of each of ``fns`` (called with ``args``): two warm-up calls each, then
    ``rounds`` rounds calling every one in turn, so that load drifts hit all alike."""
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn(*args)
            fn(*args)
        for _ in range(rounds):
            for k, fn in fns.items():
                t = time.perf_counter()
                fn(*args)
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _onnxruntime_model(model, batch, size, threads):
    """Our ONNX export (fbnet_zoo.deploy.export_onnx, checked against eager) run by onnxruntime."""
    import tempfile

    import onnxruntime as ort

    path = os.path.join(tempfile.mkdtemp(prefix="fbnet_latency_"), "model.onnx")
    export_onnx(model, path, batch=batch, input_size=size)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    os.unlink(path)
    os.rmdir(os.path.dirname(path))
    return lambda x: torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])


def _deploy_candidates(model, x, threads):
    """name -> (callable, wants channels_last input)."""
    folded = prepare_for_deploy(model)
    cands = {"fold": (folded, False), "fold+channels_last": (prepare_for_deploy(model, channels_last=True), True)}
    with torch.no_grad():  # scripting and freezing leave ``folded`` itself as it is
        ts = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(folded).eval()))
        ts(x)
        ts(x)
    cands["fold+torchscript(freeze,optimize_for_inference)"] = (ts, True)
    try:
        cands["onnxruntime"] = (_onnxruntime_model(model, x.shape[0], x.shape[-1], threads), False)
    except ImportError:
        pass
    return cands


def bench(variant, batch, iters, warmup, threads=1):
    import timm

    ref = timm.create_model(f"fbnetv3_{variant}").eval()
    ours = fbnet_zoo.build_model(f"FBNetV3-{variant.upper()}-timm").eval()
    ours.load_state_dict(timm_to_ours(ref.state_dict(), ours))
    size = ours.spec.input_size
    x = torch.randn(batch, 3, size, size)
    xcl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.allclose(ref(x), ours(x), atol=1e-4)
    cands = _deploy_candidates(ours, x, threads)
    inputs = {name: (xcl if cl else x) for name, (_, cl) in cands.items()}
    # pick the deploy variant on a short first round
    with torch.inference_mode():
        for _ in range(warmup):
            ref(x)
            ours(x)
            for name, (m, _) in cands.items():
                m(inputs[name])
    pick = {name: statistics.median(_time(m, inputs[name], max(2, iters // 3))) for name, (m, _) in cands.items()}
    deploy_name = min(pick, key=pick.get)
    deploy, xd = cands[deploy_name][0], inputs[deploy_name]
    with torch.inference_mode():
        err = (deploy(xd) - ref(x)).abs().max().item()
    times = {"timm_eager": [], "ours_eager": [], "ours_deploy": []}
    for _ in range(iters):  # round-robin
        times["timm_eager"] += _time(ref, x, 1)
        times["ours_eager"] += _time(ours, x, 1)
        times["ours_deploy"] += _time(deploy, xd, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": f"fbnetv3_{variant}", "ours_arch": ours.spec.name, "batch": batch, "input_size": size,
        "iters": iters, "median_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
        "deploy_mode": deploy_name, "deploy_candidates_ms": {k: round(v * 1e3, 2) for k, v in pick.items()},
        "deploy_max_abs_diff_vs_timm": err,
        "ratio_eager": round(med["timm_eager"] / med["ours_eager"], 3),
        "ratio_deploy": round(med["timm_eager"] / med["ours_deploy"], 3),
    }


def machine_facts(threads):
    """What every CPU benchmark result records about where it ran (ratios need the load)."""
    return {"device": "cpu", "threads": threads, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "load_avg_at_end": os.getloadavg()}


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def cpu_facts():
    """The CPU's model name, the ISA flags int8 kernels depend on (Linux /proc/cpuinfo; VNNI /
    AMX multiply u8 x s8 into int32 in one step, plain AVX2 cannot), and the SIMD level PyTorch
    dispatches to."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: the platform's name only
        pass
    return {"cpu_model": name or platform.processor() or platform.machine(),
            "cpu_flags": {f: f in flags for f in ISA_FLAGS},
            "vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def save_result(path, result):
    """Write a benchmark's result dict as JSON (atomically) and say where."""
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="b,d,g")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--iters", type=int, default=12, help="timed iterations at batch 1 (batch > 1: a third)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    print(f"{'model':<10} {'batch':>5} {'size':>4} {'timm ms':>9} {'ours ms':>9} {'deploy ms':>9} "
          f"{'eager x':>7} {'deploy x':>8}  deploy mode")
    for v in args.models.split(","):
        for b in map(int, args.batches.split(",")):
            iters = args.iters if b == 1 else max(3, args.iters // 3)
            r = bench(v, b, iters, warmup=2 if b == 1 else 1, threads=args.threads)
            rows.append(r)
            m = r["median_ms"]
            print(f"{r['model']:<10} {b:>5} {r['input_size']:>4} {m['timm_eager']:>9.1f} {m['ours_eager']:>9.1f} "
                  f"{m['ours_deploy']:>9.1f} {r['ratio_eager']:>7.2f} {r['ratio_deploy']:>8.2f}  {r['deploy_mode']}",
                  flush=True)
    import timm

    result = {
        "benchmark": "latency", **machine_facts(args.threads), "timm": timm.__version__,
        "ratio_definition": "timm eager median time / ours median time (> 1: ours faster)",
        "goals": {"ratio_eager": ">= 1.0", "ratio_deploy": ">= 1.25"},
        "rows": rows,
    }
    save_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
