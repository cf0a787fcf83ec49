"""How much faster PyTorch's int8 kernels are than fp32 on this CPU, op by op: the ceiling on
any whole-network int8 speed-up (benchmarks/int8_latency.py), measured on the convs of a zoo
model at its published input size, one thread, batch 1.

For every conv of the model (its shapes recorded by a forward hook), the fp32 conv (eager, the
faster of contiguous and channels_last input: what TorchScript and onnxruntime also call) and
the int8 conv of each quantized engine (per-channel 7-bit weights on x86 engines without VNNI,
the quantize_static default) are timed round-robin; times are summed per kind: pointwise (1x1,
most of the FLOPs), depthwise, other (stem, ...). A large square GEMM (quantized Linear vs
Linear) gives the kernels' peak ratio. Without VNNI / AMX (or ARM dot products) x86 int8 sums
u8 x s8 pairs with vpmaddubsw, about as many multiply-adds per cycle as fp32 FMAs, so the ratio
stays near 1; with VNNI it is several times larger.

    python benchmarks/int8_kernels.py                 # FBNetV3-B at 224, ~1 min idle
    python benchmarks/int8_kernels.py --model FBNetV3-G-timm --rounds 15

Writes benchmarks/results/int8_kernels.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, List

import torch
from torch import nn
from torch.ao.nn import quantized as nnq

import fbnet_zoo
from fbnet_zoo.quantize import _bit_split
from latency import cpu_facts, machine_facts, round_robin_ms, save_result  # benchmarks/latency.py

warnings.filterwarnings("ignore", category=UserWarning)  # torch 2.14: quantized dtypes are deprecated
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "int8_kernels.json")


def conv_shapes(model: nn.Module, size: int) -> List[Dict[str, Any]]:
    """Every Conv2d of ``model`` with the input shape it gets at ``size`` px, batch 1."""
    seen: List[Dict[str, Any]] = []

    def hook(module, args, _out):
        seen.append({"conv": module, "input": tuple(args[0].shape)})

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    for h in handles:
        h.remove()
    return seen


def kind(conv: nn.Conv2d) -> str:
    if conv.groups == conv.in_channels and conv.groups > 1:
        return "depthwise"
    return "pointwise" if conv.kernel_size == (1, 1) else "other"


def per_channel_int8(w: torch.Tensor, qmax: int) -> torch.Tensor:
    """``w`` quantized per output channel, symmetric, to -qmax..qmax."""
    scale = w.abs().flatten(1).amax(1).clamp_min(1e-8) / qmax
    return torch.quantize_per_channel(w, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0, torch.qint8)


def int8_conv(conv: nn.Conv2d, weight_qmax: int) -> nnq.Conv2d:
    """``conv`` as an int8 conv with per-channel symmetric weights in -qmax..qmax (BN already
    folded or absent: only the kernels' speed matters here)."""
    q = nnq.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                   conv.dilation, conv.groups, bias=True)
    q.set_weight_bias(per_channel_int8(conv.weight.detach(), weight_qmax),
                      torch.zeros(conv.out_channels) if conv.bias is None else conv.bias.detach())
    q.scale, q.zero_point = 0.05, 128
    return q


def on_engine(engine: str, q: nn.Module, xq: torch.Tensor) -> Callable[[], Any]:
    """A call of int8 module ``q`` on ``xq`` with ``engine`` (process-wide) selected first: the
    engines are timed round-robin, and each packed ``q``'s weights for its own."""
    def call():
        torch.backends.quantized.engine = engine
        return q(xq)
    return call


def weight_qmax(engine: str) -> int:
    """The quantize_static default bit split's weight range on ``engine``."""
    return 63 if _bit_split(engine, None, "int8_kernels") == "weights" else 127


def measure(model_name: str, rounds: int, engines: List[str]) -> Dict[str, Any]:
    model = fbnet_zoo.build_model(model_name)
    size = model.spec.input_size if hasattr(model, "spec") else 224
    totals: Dict[str, Dict[str, float]] = {}
    convs = conv_shapes(model, size)
    for entry in convs:
        conv, shape = entry["conv"], entry["input"]
        x = torch.randn(shape)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        fns: Dict[str, Callable[[], Any]] = {"fp32": lambda: conv(x), "fp32_channels_last": lambda: conv(x_cl)}
        for engine in engines:
            torch.backends.quantized.engine = engine
            q = int8_conv(conv, weight_qmax(engine))
            xq = torch.quantize_per_tensor(x, 0.02, 128, torch.quint8).contiguous(memory_format=torch.channels_last)
            fns[f"int8_{engine}"] = on_engine(engine, q, xq)
        ms = round_robin_ms(fns, rounds)
        ms["fp32_best"] = min(ms["fp32"], ms["fp32_channels_last"])
        for k, v in ms.items():
            totals.setdefault(kind(conv), {}).setdefault(k, 0.0)
            totals[kind(conv)][k] += v
    out = {}
    for k, t in totals.items():
        out[k] = {"ms": {m: round(v, 3) for m, v in t.items()},
                  "ratio_fp32_best_over_int8": {e: round(t["fp32_best"] / t[f"int8_{e}"], 3) for e in engines}}
    every = {m: sum(t[m] for t in totals.values()) for m in next(iter(totals.values()))}
    out["all_convs"] = {"ms": {m: round(v, 3) for m, v in every.items()},
                        "ratio_fp32_best_over_int8": {e: round(every["fp32_best"] / every[f"int8_{e}"], 3)
                                                      for e in engines}}
    return {"model": model_name, "input_size": size, "convs": len(convs), **out}


def gemm_peak(rounds: int, engines: List[str], m: int = 256, k: int = 1024, n: int = 1024) -> Dict[str, Any]:
    """A GEMM large enough to run at the kernels' peak: quantized Linear vs Linear."""
    lin = nn.Linear(k, n).eval()
    x = torch.randn(m, k)
    fns: Dict[str, Callable[[], Any]] = {"fp32": lambda: lin(x)}
    for engine in engines:
        torch.backends.quantized.engine = engine
        q = nnq.Linear(k, n)
        q.set_weight_bias(per_channel_int8(lin.weight.detach(), weight_qmax(engine)), lin.bias.detach())
        xq = torch.quantize_per_tensor(x, 0.02, 128, torch.quint8)
        fns[f"int8_{engine}"] = on_engine(engine, q, xq)
    ms = round_robin_ms(fns, rounds)
    ops = 2 * m * k * n
    return {"shape_mkn": [m, k, n], "ms": {a: round(v, 3) for a, v in ms.items()},
            "giga_ops_per_s": {a: round(ops / v / 1e6, 1) for a, v in ms.items()},
            "ratio_fp32_over_int8": {e: round(ms["fp32"] / ms[f"int8_{e}"], 3) for e in engines}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="FBNetV3-B-timm", help="a zoo model name")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=RESULTS)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    engines = [e for e in ("fbgemm", "x86", "onednn") if e in torch.backends.quantized.supported_engines]
    before = torch.backends.quantized.engine
    t0 = time.perf_counter()
    try:
        result = {"benchmark": "int8_kernels", **machine_facts(a.threads), **cpu_facts(), "engines": engines,
                  "ratio_definition": "fp32 median ms / int8 median ms (> 1: int8 faster); fp32_best: the faster "
                                      "of contiguous and channels_last input per conv",
                  "gemm_peak": gemm_peak(a.rounds, engines), "model_convs": measure(a.model, a.rounds, engines)}
    finally:
        torch.backends.quantized.engine = before
    result["wall_seconds"] = round(time.perf_counter() - t0)
    for k in ("pointwise", "depthwise", "other", "all_convs"):
        r = result["model_convs"].get(k)
        if r:
            print(f"{k:<10} fp32 {r['ms']['fp32_best']:7.2f} ms  int8/engine ratio {r['ratio_fp32_best_over_int8']}")
    print("gemm peak", result["gemm_peak"]["giga_ops_per_s"])
    save_result(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
