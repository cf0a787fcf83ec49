"""int8 classifiers: post-training static quantization and quantization-aware training.

    >>> model = fbnet_zoo.build_model("FBNetV3-B-timm", pretrained=True).eval()
    >>> q = quantize_static(model, calibration_batches)            # observers, calibration, int8
    >>> ts = export_int8_torchscript(q, "fbnetv3_b_int8.ts")       # traced + frozen, checked

    >>> qat = prepare_qat(model)                                   # fake-quant, BN kept, train mode
    >>> train_model(qat, recipe, epochs, ..., on_epoch_end=QATSchedule(freeze_bn=3, freeze_observers=4))
    >>> q = convert_qat(qat)                                       # the same int8 model as PTQ gives

The flow is PyTorch's FX graph mode quantization (``torch.ao.quantization.quantize_fx``)
with PyTorch's x86 engine (fbgemm's kernels, oneDNN's where faster) on x86 and qnnpack on
ARM. Why this one, on torch 2.14:

- it is the flow whose output runs int8 kernels in plain PyTorch: the quantized model is
  an ``nn.Module`` of ``torch.ao.nn.quantized`` modules, runs eagerly and exports to
  TorchScript; nothing else needs installing.
- the PT2E flow (``prepare_pt2e`` / ``X86InductorQuantizer`` / ``XNNPACKQuantizer``) has left
  ``torch.ao`` for the separate ``torchao`` package, and its x86 speed comes from
  ``torch.compile`` (inductor, a C++ toolchain at load time); it does not give a TorchScript
  or ONNX file.
- onnxruntime's own static int8 quantization of our ONNX export was measured on this
  machine's CPU (AVX2, no VNNI) and is *slower* than onnxruntime fp32 (see
  benchmarks/int8_latency.py), so it is no deploy path here.

The graph: every conv-BN(-ReLU) pair is fused and quantized (per-channel weights), hardswish,
hardsigmoid, the squeeze-excite multiply, residual adds, pooling and the classifier run in
int8; only the input quantize and the output dequantize are float (checked on FBNetV3-B's
converted graph: no dequantize / quantize round trip inside). Everything FX traces:
FBNet models trace in eval mode, and in train mode without drop path (the per-sample
random mask of stochastic depth does not survive FX tracing: ``prepare_qat`` refuses it;
build QAT models with ``drop_path_rate=0``).

QAT uses ``qat_qconfig_mapping``, not PyTorch's default: with the default fake-quant modules
the converted int8 model does not compute what the QAT model trained (the fused weight
fake-quant rounds with another scale than ``convert_fx`` uses, and activations are clamped at
reduce_range's 127 in QAT but at 255 in int8); after two trainer epochs the int8 logits were
-2 dB SQNR from the QAT model's, now > 15 dB (tests/test_quantize.py). ``prepare_qat`` also
gives global average pools int8's rounding and stops their shared output quantizer from
observing the pooled values (``_int8_global_pools``): int8 vs the calibrated QAT model 32.6 ->
38.5 dB on the benchmark's model. ``calibrate_qat`` sets a QAT model's ranges as PTQ does
(histogram search); ``fbnet_zoo.training.qat.distill_qat`` is QAT distilled from the fp32 model.

Accuracy (benchmarks/int8_latency.py --agreement-only, a small trained FBNet, AVX2): the error
is spread over every unit (``sensitivity``: each conv-act / SE / add alone costs 33-41 dB of
logit SQNR, none dominates) and is mostly activation rounding (weights alone, per-channel
8-bit: 41 dB). Halving the activation step is what helps: ``reduce_range="weights"`` (8-bit
activations, 7-bit weights, no int16 saturation on AVX2; our default on x86, PyTorch's is
7-bit activations) takes top-1 agreement with fp32 from 96.9% to 98.2% (5000 held-out images,
4 calibration draws); ``correct_bias`` and fp32 units do not move it beyond noise. Where the rest of the error is
(8-bit activations, float weights, fake-quant in float): each of the ~70 activation tensors
alone costs 41-48 dB, the input image and the logits most (41-42 dB), then the conv outputs
ahead of a hardswish (not fused: int8 requantizes the conv output, then the hardswish's);
the squeeze-excite tensors, the hardsigmoid gate's fixed qparams included, 50-65 dB; all of
them 27 dB; the 7-bit weights alone 32.7 dB; together 25.6 dB. ``ranges="mse"`` (least
squared error ranges) gains about 0.5 dB of logit SQNR and on average 0.2 points of
agreement, not in every calibration draw (98.01% -> 98.22% on 10000 held-out images over 4
draws; see ``quantize_static``). Measured and not kept: hardswish-aware ranges for those conv outputs
(less SQNR), more calibration images (600 instead of 256: the histogram ranges catch up, 26.3
vs 26.6 dB, the same agreement), QAT distilled from the fp32 model (an earlier try drifted to
22-24 dB from fp32: the student kept the classifier's dropout; without it and from histogram
ranges, ``distill_qat``, 27 dB and 98.5-98.7% on a validation split: README "int8"; nor with a plain logit-MSE loss on un-augmented training images, Adam, 800 steps
from a calibrated start with BN and ranges frozen: +1 dB, 98.1% on 5000 images), a better-trained agreement model (30 epochs, 86.9% top-1 instead of 82%: no higher
agreement, 98.1% / 98.4% on 10000 held-out images). So 99% agreement on these models is not
reached robustly by int8 PTQ here: about 27 dB of logit SQNR, where 99% takes about 28 dB even
for independent Gaussian logit noise (quantization noise flips more than that at equal SQNR).
Block-wise reconstruction on the calibration images (``quantize_static(reconstruct=200)``:
learned weight rounding, biases and activation scales, the same int8 kernels) gains the most:
+1.8 dB (25.95 -> 27.74 dB, every calibration draw), 98.15% -> 98.44% agreement; still short
of 99%.

Backends pack weights for one kernel library; ``quantize_static`` / ``convert_qat`` set
``torch.backends.quantized.engine`` to theirs (process-wide, as PyTorch requires) and leave
it so. A saved int8 TorchScript file re-packs its weights for the engine current at load.
"""

from __future__ import annotations

import copy
import logging
import platform
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm.auto import tqdm
from torch.ao.quantization import (FakeQuantize, FixedQParamsObserver, HistogramObserver,
                                   MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver, ObserverBase,
                                   PerChannelMinMaxObserver, QConfig, QConfigMapping, get_default_qat_qconfig_mapping)

from .blocks import DropPath
from .deploy import _writing, check_output_path, example_input, prepare_for_deploy
from .errors import QuantizationError, check_bool, check_choice, check_int

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "MSEHistogramObserver", "MSEPerChannelWeightObserver", "RANGES", "REDUCE_RANGE",
           "Int8StorageFakeQuantize", "QATSchedule", "QuantizationError",
           "SamePaddedQuantizedConv", "calibrate_qat", "convert_qat", "correct_bias", "default_backend", "export_int8_torchscript",
           "freeze_qat_bn_stats", "freeze_qat_observers", "prepare_qat", "qat_qconfig_mapping", "quantize_static",
           "reconstruct_blockwise", "same_pad_depthwise", "sensitivity", "top1_agreement"]

BACKENDS = ("fbgemm", "x86", "onednn", "qnnpack")


def default_backend() -> str:
    """x86 on x86 CPUs (PyTorch's x86 engine: fbgemm's kernels, oneDNN's where faster;
    benchmarks/int8_latency.py: 15-23% faster than fbgemm alone on an AVX-512 VNNI / AMX core,
    the same on AVX2), else fbgemm where that is all there is; qnnpack on ARM."""
    machine = platform.machine().lower()
    engines = torch.backends.quantized.supported_engines
    if machine in ("x86_64", "amd64", "i386", "i686"):
        for engine in ("x86", "fbgemm"):
            if engine in engines:
                return engine
    return "qnnpack" if "qnnpack" in engines else engines[-1]


def _backend(backend: Optional[str]) -> str:
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise QuantizationError(f"backend: {backend!r} is not one of {list(BACKENDS)}")
    if backend not in torch.backends.quantized.supported_engines:
        raise QuantizationError(f"backend: {backend!r} is not built into this PyTorch (supported: "
                                f"{torch.backends.quantized.supported_engines})")
    torch.backends.quantized.engine = backend
    return backend


def _inputs(batch: Any) -> torch.Tensor:
    """The image tensor of a calibration batch: a tensor, or the first item of (images, labels)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise QuantizationError(f"calibration: a batch must be an image tensor or (images, labels), got "
                            f"{type(batch).__name__}")


def _example(model: nn.Module, example: Optional[torch.Tensor]) -> Tuple[torch.Tensor]:
    return (example if example is not None else example_input(model),)


class SamePaddedQuantizedConv(nn.Module):
    """A quantized depthwise conv whose padding ``p`` is below ``kernel // 2`` (the reference
    archs' stride-2 rows: FBNetV3-A pads a 5x5 by 1 and a 3x3 by 0), run as the same conv
    with padding ``P = kernel // 2``. A zero-padded conv is the conv of the infinitely
    zero-padded input at some window positions; padding ``P`` instead of ``p`` shifts those
    positions by ``P - p``, so ``e`` zero rows / columns go in front (``P - p + e`` a multiple
    of the stride) and the first ``(P - p + e) / stride`` outputs and any extra at the end are
    dropped: the same windows, the same integer arithmetic. Why: fbgemm has a fast depthwise
    kernel only for padding ``kernel // 2``; any other falls back to a per-group GEMM,
    measured 100x slower here (55 ms vs 0.5 ms for a 200-channel 5x5 at 40x40)."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        kernel, stride, padding = tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding)
        self.kernel, self.stride, self.padding = kernel, stride, padding
        shift = [k // 2 - p for k, p in zip(kernel, padding)]
        self.front = tuple(-d % s for d, s in zip(shift, stride))
        self.skip = tuple((d + e) // s for d, e, s in zip(shift, self.front, stride))
        same = type(conv)(conv.in_channels, conv.out_channels, kernel, stride=stride,
                          padding=tuple(k // 2 for k in kernel), dilation=conv.dilation, groups=conv.groups,
                          bias=conv.bias() is not None)
        same.set_weight_bias(conv.weight(), conv.bias())
        same.scale, same.zero_point = conv.scale, conv.zero_point
        self.conv = same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_h = (x.shape[-2] + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
        out_w = (x.shape[-1] + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
        if any(self.front):
            x = torch.nn.functional.pad(x, (self.front[1], 0, self.front[0], 0))
        y = self.conv(x)
        return y[:, :, self.skip[0]:self.skip[0] + out_h, self.skip[1]:self.skip[1] + out_w]


def same_pad_depthwise(graph: nn.Module) -> int:
    """Swap every quantized depthwise conv of ``graph`` (in place) whose padding is below
    ``kernel // 2`` for its ``SamePaddedQuantizedConv`` (same outputs, fbgemm's fast kernel).
    Returns how many were swapped."""
    from torch.ao.nn import quantized as nnq

    n = 0
    for name, module in list(graph.named_modules()):
        if type(module) is not nnq.Conv2d or module.groups != module.in_channels or module.groups == 1:
            continue
        if module.dilation != (1, 1) or module.padding_mode != "zeros":
            continue
        if all(p == k // 2 for k, p in zip(module.kernel_size, module.padding)):
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(graph.get_submodule(parent_name) if parent_name else graph, attr, SamePaddedQuantizedConv(module))
        n += 1
    return n


REDUCE_RANGE = ("activations", "weights", "none")


def _pytorch_mapping(default_mapping: Callable[[str], QConfigMapping], backend: str) -> QConfigMapping:
    """PyTorch's default (PTQ or QAT) mapping of ``backend``, without its warning that onednn's
    8-bit activations need VNNI: our global qconfig replaces that one (``_bit_split``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Default qconfig of oneDNN", category=UserWarning)
        return default_mapping(backend)


RANGES = ("histogram", "mse")


class MSEHistogramObserver(HistogramObserver):
    """Activation observer: PyTorch's histogram of the calibration values, and the range
    (min, max; zero inside) whose 8-bit (or reduce_range 7-bit) affine quantization has the least
    squared error, rounding and clipping together, over that histogram: an exhaustive search of
    ``grid`` x ``grid`` candidate ends (fractions ``1/grid .. 1`` of the observed min and max).
    PyTorch's ``HistogramObserver`` searches the same objective greedily, shrinking one end at a
    time by whole bins with an approximate error; on FBNet activations it settles on ranges
    whose error is measurably larger (benchmarks/int8_latency.py: logit SQNR +0.6 dB)."""

    grid = 100

    def calculate_qparams(self):  # type: ignore[override]
        if self.min_val == float("inf") or self.max_val == float("-inf"):
            return super().calculate_qparams()  # not calibrated: PyTorch's warning and defaults
        lo_obs, hi_obs = float(self.min_val), float(self.max_val)
        width = (hi_obs - lo_obs) / self.bins
        centers = lo_obs + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width
        counts = self.histogram.to(torch.float64)
        fractions = torch.linspace(1.0 / self.grid, 1.0, self.grid, dtype=torch.float64)
        his = max(hi_obs, 0.0) * fractions if hi_obs > 0 else torch.zeros(1, dtype=torch.float64)
        los = min(lo_obs, 0.0) * fractions if lo_obs < 0 else torch.zeros(1, dtype=torch.float64)
        qmin, qmax = self.quant_min, self.quant_max
        best = (float("inf"), 0.0, 0.0)
        for lo in los.tolist():  # one low end at a time: every high end at once
            scale = ((his - lo) / (qmax - qmin)).clamp_min(1e-12).unsqueeze(1)
            zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
            q = (torch.round(centers / scale) + zero_point).clamp(qmin, qmax)
            err = (((q - zero_point) * scale - centers) ** 2 * counts).sum(1)
            k = int(err.argmin())
            if float(err[k]) < best[0]:
                best = (float(err[k]), lo, float(his[k]))
        return self._calculate_qparams(torch.tensor(best[1]), torch.tensor(best[2]))


class MSEPerChannelWeightObserver(PerChannelMinMaxObserver):
    """Per-channel symmetric weight observer whose range, per output channel, is the fraction
    (``0.5 .. 1``, ``grid`` steps) of the channel's absolute maximum with the least squared
    rounding + clipping error: with 7-bit weights (``reduce_range="weights"``), clipping the
    largest weight of a channel a little buys finer steps for all the others (weights alone,
    7-bit, on the agreement model: 32.7 dB logit SQNR with min/max ranges, ~0.5 dB more here).
    The chosen range replaces the observed one (``min_val`` / ``max_val``), so
    ``calculate_qparams`` and the integer range (|w| <= 64 with reduce_range) are PyTorch's."""

    grid = 51

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        super().forward(x_orig)
        if self.qscheme != torch.per_channel_symmetric or x_orig.numel() == 0:
            return x_orig
        w = x_orig.detach().transpose(0, self.ch_axis).flatten(1).to(torch.float64)
        amax = torch.maximum(-self.min_val, self.max_val).to(torch.float64)
        fractions = torch.linspace(0.5, 1.0, self.grid, dtype=torch.float64).view(-1, 1, 1)
        half = (self.quant_max - self.quant_min) / 2  # PyTorch's symmetric scale: amax / half
        scale = (amax.view(1, -1, 1) * fractions / half).clamp_min(1e-12)
        err = ((torch.round(w / scale).clamp(self.quant_min, self.quant_max) * scale - w) ** 2).sum(-1)
        shrink = fractions.view(-1)[err.argmin(0)].to(self.min_val.dtype)
        self.min_val.mul_(shrink)
        self.max_val.mul_(shrink)
        return x_orig


def _ptq_qconfig_mapping(backend: str, reduce_range: Any, ranges: str = "histogram") -> QConfigMapping:
    """PyTorch's default PTQ mapping for ``backend`` with the bit split ``reduce_range`` asks for
    (see ``quantize_static``) and the range choice ``ranges`` (one of RANGES); fixed-qparams ops
    (hardsigmoid, ...) keep theirs."""
    from torch.ao.quantization import get_default_qconfig_mapping

    # every backend gets per-channel weights: PyTorch's qnnpack default is per-tensor, which on the
    # benchmark model agrees less with fp32 (97.9% vs 98.4% top-1, -1.1 dB logit SQNR)
    mapping = _pytorch_mapping(get_default_qconfig_mapping, backend)
    mode = _bit_split(backend, reduce_range, "quantize_static")
    weight_observer, activation_observer = ((PerChannelMinMaxObserver, HistogramObserver) if ranges == "histogram"
                                            else (MSEPerChannelWeightObserver, MSEHistogramObserver))
    weight = weight_observer.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                       reduce_range=mode == "weights")
    return mapping.set_global(QConfig(activation=activation_observer.with_args(reduce_range=mode == "activations"),
                                      weight=weight))


def _quantized_linear_layers(graph: torch.fx.GraphModule) -> List[Tuple[str, nn.Module]]:
    """(name, module) of the int8 convs / linears of a converted graph, in execution order."""
    from torch.ao.nn import quantized as nnq
    from torch.ao.nn.intrinsic import quantized as nniq

    kinds = (nnq.Conv2d, nnq.Linear, nniq.ConvReLU2d, nniq.LinearReLU)
    modules = dict(graph.named_modules())
    return [(n.target, modules[n.target]) for n in graph.graph.nodes
            if n.op == "call_module" and type(modules[n.target]) in kinds]


def _accumulator(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What an int8 conv / linear accumulates (before requantization and any fused ReLU), in
    float: the dequantized input times the dequantized weight, plus the bias. Exact up to the
    float sum's rounding: the int32 accumulator is this divided by input scale x weight scale."""
    w, b = module.weight(), module.bias()
    x = x.dequantize()
    if w.dim() == 2:
        return nn.functional.linear(x, w.dequantize(), b)
    return nn.functional.conv2d(x, w.dequantize(), b, module.stride, module.padding, module.dilation, module.groups)


def correct_bias(quantized: torch.fx.GraphModule, float_model: nn.Module, calibration: Iterable[Any],
                 max_batches: Optional[int] = None) -> Dict[str, float]:
    """Empirical bias correction (Nagel et al. 2019, "Data-free quantization", section 4.2), in
    place: for each int8 conv / linear in execution order, the mean (per output channel, over
    the calibration images and positions) of its accumulator minus the fp32 model's output of
    the same layer is subtracted from its bias, so the int8 layer is unbiased *given the
    already-corrected int8 layers before it*. Rounding weights and clipping activations shift
    channel means; depthwise convs (9-25 weights per channel) and their followers are hit most.

    float_model: the fp32 model ``quantized`` came from, BN folded as ``quantize_static`` does
    (``prepare_for_deploy``): its convs / linears carry the same names. Layers left in float
    (``keep_float``) are skipped. Returns {layer: mean |bias shift| in units of the RMS of the layer's
    fp32 output}. Costs one pass of the calibration set per layer."""
    float_modules = dict(float_model.named_modules())
    data = []
    for batch in calibration:
        if max_batches is not None and len(data) >= max_batches:
            break
        data.append(_inputs(batch))
    if not data:
        raise QuantizationError("correct_bias: the calibration set is empty")
    shifts = {}
    for name, layer in _quantized_linear_layers(quantized):
        if name not in float_modules:
            raise QuantizationError(f"correct_bias: {name!r} has no layer of that name in the float model")
        seen: Dict[str, torch.Tensor] = {}
        hooks = [layer.register_forward_pre_hook(lambda m, args: seen.__setitem__("q", _accumulator(m, args[0]))),
                 float_modules[name].register_forward_hook(  # a copy: an in-place activation follows
                     lambda m, args, out: seen.__setitem__("f", out.clone()))]
        total = sq = torch.zeros(())
        count = 0
        try:
            with torch.inference_mode():
                for x in data:
                    quantized(x)
                    float_model(x)
                    err, ref = seen["q"] - seen["f"], seen["f"]
                    dims = [d for d in range(err.dim()) if d != 1]
                    total = total + err.sum(dims)
                    sq = sq + ref.pow(2).mean(dims) * (err.numel() // err.shape[1])
                    count += err.numel() // err.shape[1]
        finally:
            for h in hooks:
                h.remove()
        mean = total / count
        bias = layer.bias() if layer.bias() is not None else torch.zeros_like(mean)
        layer.set_weight_bias(layer.weight(), (bias - mean).float())
        shifts[name] = float((mean.abs() / (sq / count).sqrt().clamp_min(1e-12)).mean())
    logger.info("correct_bias: %d int8 layers corrected (largest mean shift %.3g RMS, %s)", len(shifts),
                max(shifts.values(), default=0.0), max(shifts, key=shifts.get, default="-"))
    return shifts


# Block-wise reconstruction of the weight rounding, biases and activation scales
# (``quantize_static(reconstruct=...)``): the
# ideas of AdaRound (Nagel et al. 2020: learn, per weight, whether to round up or down, with a
# rectified-sigmoid soft rounding pushed to 0 / 1 by an annealed regulariser), BRECQ (Li et al.
# 2021: reconstruct one residual block at a time, the quantized block fed the quantized model's
# own input, the fp32 block's output as target) and QDrop (Wei et al. 2022: during
# reconstruction each activation keeps its quantization error with probability 1/2, else passes
# fp32), with LSQ's learned activation scales (Esser et al. 2020), on the calibration images only. Written for this module's FX graphs: the simulation is
# the prepared graph with each observer turned into a fake-quant of the qparams ``convert_fx``
# gave, each int8 conv / linear into a conv with the converted model's per-channel scales, and
# each global average pool into int8's rounding; so the learned integers are what the int8
# kernels multiply.

_RECON_ZETA, _RECON_GAMMA = 1.1, -0.1        # AdaRound's rectified-sigmoid stretch
_RECON_BATCH, _RECON_DROP, _RECON_REG = 32, 0.5, 0.01
_RECON_LR_ROUNDING, _RECON_LR_BIAS, _RECON_LR_SCALE, _RECON_REG_WARMUP = 1e-2, 1e-4, 1e-4, 0.2


class _ReconState:
    """Switches shared by one simulation's modules: ``quantize`` (False: the fp32 model, exactly)
    and ``drop`` (QDrop's probability of passing an activation unquantized; 0 when evaluating)."""

    def __init__(self, generator: torch.Generator):
        self.quantize, self.drop, self.generator = True, 0.0, generator


class _ReconFakeQuant(nn.Module):
    """An observer's int8 quantization (its ``calculate_qparams``, clamped to its quant range), in
    float, with the scale learnable (LSQ: Esser et al. 2020, gradient scaled by
    1 / sqrt(values per image x quant_max)) unless the op fixes it (hardsigmoid's 1/256)."""

    def __init__(self, observer: nn.Module, state: _ReconState):
        super().__init__()
        scale, zero_point = observer.calculate_qparams()
        fixed = isinstance(observer, FixedQParamsObserver)
        self.scale = nn.Parameter(torch.tensor([float(scale)]), requires_grad=not fixed)
        self.register_buffer("zero_point", torch.tensor([float(zero_point)]))
        self.quant_min, self.quant_max, self.state = observer.quant_min, observer.quant_max, state
        self.observers: List[str] = []  # the prepared graph's names of this observer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.state.quantize:
            return x
        if self.scale.requires_grad and torch.is_grad_enabled():
            grad_scale = 1.0 / (x[0].numel() * self.quant_max) ** 0.5
            y = torch._fake_quantize_learnable_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min,
                                                                 self.quant_max, grad_scale)
        else:
            y = torch.fake_quantize_per_tensor_affine(x, float(self.scale.detach()), int(self.zero_point),
                                                      self.quant_min, self.quant_max)
        if self.state.drop > 0:
            keep_float = torch.rand(x.shape, generator=self.state.generator) < self.state.drop
            y = torch.where(keep_float, x, y)
        return y


class _LearnedQParams(ObserverBase):
    """Stands in for a calibrated observer at ``convert_fx``: the reconstructed scale, the observer's
    zero point, dtype and range."""

    def __init__(self, observer: nn.Module, scale: float, zero_point: int):
        super().__init__(dtype=observer.dtype, is_dynamic=False)
        self.qscheme, self.quant_min, self.quant_max = observer.qscheme, observer.quant_min, observer.quant_max
        self.register_buffer("scale", torch.tensor([scale], dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor([zero_point], dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self) -> Tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.scale, self.zero_point


def _int8_global_mean(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Global average pooling of fake-quantized ``x`` (step ``scale``) as the int8 kernel for
    channels_last input (what int8 convs output) computes it: the mean of the centred codes
    (code - zero point), rounded half to even; straight-through gradient. The float mean,
    quantized, differs at exact halves (1-2% of the pooled values)."""
    y = nn.functional.adaptive_avg_pool2d(x, 1)
    exact = torch.round(torch.round(x.detach() / scale).mean((2, 3), keepdim=True)) * scale
    return y + (exact - y).detach()


def _global_pools_fed_by(graph: torch.fx.GraphModule, modules: Dict[str, nn.Module], quantizer: type
                         ) -> List[Tuple[torch.fx.Node, nn.Module]]:
    """(pool node, its input's quantizer) for each global average pool of ``graph`` whose input
    is the output of a ``quantizer`` module (``modules``: the graph's, duplicates included)."""
    out = []
    for node in graph.graph.nodes:
        pool = modules.get(node.target) if node.op == "call_module" else None
        if type(pool) is not nn.AdaptiveAvgPool2d or pool.output_size not in (1, (1, 1)):
            continue
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and source.op == "call_module" \
                and isinstance(modules.get(source.target), quantizer):
            out.append((node, modules[source.target]))
    return out


class _ReconGlobalPool(nn.Module):
    """Global average pooling as int8 computes it (``_int8_global_mean``): on the benchmark model
    the simulation's logits were 31 dB (SQNR) from the int8 model's with the float mean, 42 dB
    with this."""

    def __init__(self, fake_quant: _ReconFakeQuant):
        super().__init__()
        self.fake_quant = [fake_quant]  # the input's quantizer (a pool keeps its qparams), not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fake_quant = self.fake_quant[0]
        if not fake_quant.state.quantize:
            return nn.functional.adaptive_avg_pool2d(x, 1)
        return _int8_global_mean(x, fake_quant.scale.detach())


class _ReconLayer(nn.Module):
    """A conv / linear whose weight is ``scale * clamp(floor(w / scale) + h, low, high)`` with the
    converted model's per-channel scales: ``h`` the soft rounding (AdaRound's rectified sigmoid of
    a learned ``v``, started at the fractional part) while learning, ``v >= 0`` once hard; the
    bias (float in int8 too) is learned with it. Unquantized it is the fp32 layer."""

    def __init__(self, layer: nn.Module, quantized: nn.Module, low: int, high: int, state: _ReconState):
        super().__init__()
        w = quantized.weight()
        if w.qscheme() not in (torch.per_channel_affine, torch.per_channel_symmetric) \
                or bool(w.q_per_channel_zero_points().any()):
            raise QuantizationError(f"quantize_static: reconstruct needs symmetric per-channel int8 weights, "
                                    f"got {w.qscheme()}")
        is_conv = isinstance(layer, nn.Conv2d)
        self.conv = (layer.stride, layer.padding, layer.dilation, layer.groups) if is_conv else None
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        weight = layer.weight.detach()
        self.register_buffer("scale", w.q_per_channel_scales().to(weight.dtype).view(shape))
        self.register_buffer("float_weight", weight.clone())
        self.register_buffer("float_bias", layer.bias.detach().clone() if layer.bias is not None
                             else torch.zeros(weight.shape[0]))
        self.register_buffer("floor", torch.floor(weight / self.scale))
        frac = (weight / self.scale - self.floor).clamp(0.01, 0.99)
        self.v = nn.Parameter(-torch.log((_RECON_ZETA - _RECON_GAMMA) / (frac - _RECON_GAMMA) - 1))
        bias = quantized.bias()
        self.bias = nn.Parameter(bias.detach().clone().float() if bias is not None else torch.zeros(weight.shape[0]))
        self.low, self.high, self.hard, self.state = low, high, False, state

    def rounding(self) -> torch.Tensor:
        if self.hard:
            return (self.v >= 0).to(self.v.dtype)
        return (torch.sigmoid(self.v) * (_RECON_ZETA - _RECON_GAMMA) + _RECON_GAMMA).clamp(0, 1)

    def integers(self) -> torch.Tensor:
        return (self.floor + self.rounding()).clamp(self.low, self.high)

    def regularizer(self, beta: float) -> torch.Tensor:
        """AdaRound's push of every soft rounding to 0 or 1 (sharper as beta falls)."""
        return (1 - (2 * self.rounding() - 1).abs().pow(beta)).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.state.quantize:
            weight, bias = self.integers() * self.scale, self.bias
        else:
            weight, bias = self.float_weight, self.float_bias
        if self.conv is None:
            return nn.functional.linear(x, weight, bias)
        return nn.functional.conv2d(x, weight, bias, *self.conv)


def _recon_simulation(prepared: torch.fx.GraphModule, converted: torch.fx.GraphModule, low: int, high: int,
                      state: _ReconState) -> Tuple[torch.fx.GraphModule, Dict[str, _ReconLayer]]:
    """The float simulation of ``converted`` built from the calibrated ``prepared`` graph (see above)."""
    sim = copy.deepcopy(prepared)
    everything = list(sim.named_modules(remove_duplicate=False))  # a pool's output shares its input's observer
    fake_quants: Dict[int, _ReconFakeQuant] = {}
    for name, module in everything:
        if isinstance(module, ObserverBase):
            fake_quant = fake_quants.setdefault(id(module), _ReconFakeQuant(module, state))
            fake_quant.observers.append(name)
            sim.set_submodule(name, fake_quant)
    modules = dict(sim.named_modules(remove_duplicate=False))
    for node, fake_quant in _global_pools_fed_by(sim, modules, _ReconFakeQuant):
        sim.set_submodule(node.target, _ReconGlobalPool(fake_quant))
    layers = {}
    for name, quantized in _quantized_linear_layers(converted):
        path, module = name, sim.get_submodule(name)
        if isinstance(module, nn.Sequential):  # a fused conv-ReLU / linear-ReLU: the conv / linear is its first
            path, module = f"{name}.0", module[0]
        if type(module) not in (nn.Conv2d, nn.Linear):
            raise QuantizationError(f"quantize_static: reconstruct: {name} is a {type(module).__name__}, not a conv "
                                    "or linear")
        layers[name] = _ReconLayer(module, quantized, low, high, state)
        sim.set_submodule(path, layers[name])
    return sim, layers


def _recon_blocks(sim: torch.fx.GraphModule, float_model: nn.Module) -> Tuple[List[str], List[nn.Module]]:
    """``sim`` split (``torch.fx`` split_module) into its chain of blocks: a block is the outermost
    module of an op's scope (in ``float_model``, which ``sim`` was traced from: a GraphModule
    keeps no container types) that is not a container (``stages.3.0``, ``classifier``);
    observers go with the op they observe. Refused unless each block takes the previous one's
    output."""
    from torch.fx.passes.split_module import split_module

    scope = sim.meta["_observed_graph_module_attrs"].node_name_to_scope
    modules = dict(float_model.named_modules())

    def block_of(path: str) -> str:
        parts = path.split(".")
        for k in range(1, len(parts) + 1):
            if not isinstance(modules.get(".".join(parts[:k])), (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
                return ".".join(parts[:k])
        return path

    key: Dict[torch.fx.Node, str] = {}
    order: List[str] = []
    current, pending = None, []
    for node in sim.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        path = (scope.get(node.name) or ("",))[0]
        if path:
            current = block_of(path)
        if current is None:  # the input's observer: with the first block
            pending.append(node)
            continue
        for n in pending + [node]:
            key[n] = current
        pending = []
        if current not in order:
            order.append(current)
    index = {name: i for i, name in enumerate(order)}
    split = split_module(sim, sim, lambda n: index[key[n]], keep_original_order=True)
    calls = [n for n in split.graph.nodes if n.op == "call_module"]
    previous = next(n for n in split.graph.nodes if n.op == "placeholder")
    for name, call in zip(order, calls):
        if len(call.args) != 1 or call.args[0] is not previous or call.kwargs:
            raise QuantizationError(f"quantize_static: reconstruct: block {name!r} does not take just the previous "
                                    "block's output (the model is not a chain of blocks)")
        previous = call
    if len(calls) != len(order):
        raise QuantizationError("quantize_static: reconstruct: the model does not split into a chain of blocks")
    return order, [split.get_submodule(c.target) for c in calls]


def reconstruct_blockwise(prepared: torch.fx.GraphModule, converted: torch.fx.GraphModule, float_model: nn.Module,
                          calibration: Iterable[Any], steps: int, seed: int = 0,
                          weight_range: Tuple[int, int] = (-64, 64)) -> Tuple[torch.fx.GraphModule, Dict[str, float]]:
    """The int8 model of ``prepared`` (the calibrated FX graph of ``float_model``, not changed;
    ``converted`` its int8 model) with its weight rounding, biases and activation scales learned block by block (see
    above): for each block in order, ``steps`` Adam steps on mini-batches of 32 calibration
    images; loss: the squared error of the block's fake-quantized output against the fp32 block's
    output, plus AdaRound's rounding regulariser (after 20% of the steps; beta 20 -> 2). Each
    weight ends rounded down or up from its float value on ``converted``'s per-channel grid (the
    same scales), within ``weight_range``; each activation keeps its zero point and range.
    Returns (the int8 model: ``converted``'s graph and kernels, converted again with the learned
    scales, the learned integers and biases written in; {block: SQNR (dB) of its simulated int8
    output vs fp32 on the calibration images})."""
    from torch.ao.quantization.quantize_fx import convert_fx

    images = torch.cat([_inputs(b) for b in calibration]) if calibration else torch.zeros(0)
    if images.shape[0] == 0:
        raise QuantizationError("quantize_static: reconstruct: the calibration set is empty")
    generator = torch.Generator().manual_seed(seed)
    state = _ReconState(generator)
    sim, layers = _recon_simulation(prepared, converted, *weight_range, state)
    names, blocks = _recon_blocks(sim, float_model)
    quantized_in = float_in = images
    result = {}
    for name, block in tqdm(list(zip(names, blocks)), desc="reconstruct", leave=False, disable=None):
        own = [m for m in block.modules() if isinstance(m, _ReconLayer)]
        scales = list({id(m): m.scale for m in block.modules()
                       if isinstance(m, _ReconFakeQuant) and m.scale.requires_grad}.values())
        with torch.no_grad():
            state.quantize = False
            target = block(float_in)
            state.quantize = True
        if own and steps:
            optimizer = torch.optim.Adam([{"params": [m.v for m in own], "lr": _RECON_LR_ROUNDING},
                                          {"params": [m.bias for m in own], "lr": _RECON_LR_BIAS},
                                          {"params": scales, "lr": _RECON_LR_SCALE}])
            state.drop = _RECON_DROP
            for step in range(steps):
                pick = torch.randint(0, len(images), (min(_RECON_BATCH, len(images)),), generator=generator)
                x = torch.where(torch.rand(quantized_in[pick].shape, generator=generator) < _RECON_DROP,
                                float_in[pick], quantized_in[pick])
                loss = (block(x) - target[pick]).pow(2).flatten(1).sum(1).mean()
                progress = step / steps
                if progress >= _RECON_REG_WARMUP:
                    beta = 20 + (2 - 20) * (progress - _RECON_REG_WARMUP) / (1 - _RECON_REG_WARMUP)
                    loss = loss + _RECON_REG * sum(m.regularizer(beta) for m in own)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for scale in scales:
                        scale.clamp_(min=1e-8)
            state.drop = 0.0
        for m in own:
            m.hard = True
        with torch.no_grad():
            quantized_in, float_in = block(quantized_in), target
        result[name] = _sqnr(target, quantized_in)
    learned = copy.deepcopy(prepared)
    for fake_quant in {id(m): m for m in sim.modules() if isinstance(m, _ReconFakeQuant)}.values():
        observer = learned.get_submodule(fake_quant.observers[0])
        replacement = _LearnedQParams(observer, float(fake_quant.scale.detach()), int(fake_quant.zero_point))
        for observer_name in fake_quant.observers:
            learned.set_submodule(observer_name, replacement)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
        quantized = convert_fx(learned)
    for name, layer in _quantized_linear_layers(quantized):
        recon, w = layers[name], layer.weight()
        if not torch.equal(w.q_per_channel_scales(), converted.get_submodule(name).weight().q_per_channel_scales()):
            raise QuantizationError(f"quantize_static: reconstruct: {name}: the weight scales changed on conversion")
        integers = recon.integers().detach().round().to(torch.int8).view(w.shape)
        weight = torch._make_per_channel_quantized_tensor(integers, w.q_per_channel_scales(),
                                                          w.q_per_channel_zero_points(), w.q_per_channel_axis())
        layer.set_weight_bias(weight, recon.bias.detach().clone())
    logger.info("reconstruct: %d blocks, %d steps each; simulated output SQNR on the calibration images %.2f dB",
                len(result), steps, result[names[-1]] if names else float("nan"))
    return quantized, result

def _calibrated(float_model: nn.Module, mapping: QConfigMapping, calibration: Iterable[Any],
                max_batches: Optional[int], example: Tuple[torch.Tensor], keep: Optional[list] = None,
                observed: Optional[list] = None) -> Tuple[torch.fx.GraphModule, int]:
    """(``float_model`` (not changed) prepared with ``mapping``, calibrated and converted, the
    number of calibration batches); the batches used are appended to ``keep`` if given, a copy
    of the calibrated graph before conversion to ``observed``."""
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
            prepared = prepare_fx(copy.deepcopy(float_model), mapping, example)
    except Exception as e:  # FX tracing errors come in many types; name the step
        raise QuantizationError(f"quantize_static: FX tracing failed: {type(e).__name__}: {e}") from e
    n = 0
    with torch.inference_mode():
        for batch in calibration:
            if max_batches is not None and n >= max_batches:
                break
            prepared(_inputs(batch))
            if keep is not None:
                keep.append(batch)
            n += 1
    if n == 0:
        raise QuantizationError("quantize_static: the calibration set is empty (activation ranges would be unset)")
    if observed is not None:
        observed.append(copy.deepcopy(prepared))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
        return convert_fx(prepared), n


def quantize_static(model: nn.Module, calibration: Iterable[Any], backend: Optional[str] = None,
                    max_batches: Optional[int] = None, example: Optional[torch.Tensor] = None,
                    keep_float: Sequence[str] = (), reduce_range: Union[None, bool, str] = None,
                    bias_correction: bool = False, ranges: str = "histogram", reconstruct: int = 0,
                    seed: int = 0) -> nn.Module:
    """An int8 copy of ``model`` by post-training static quantization.

    calibration: batches of images (tensors, or (images, labels) pairs) like the model will
    see (same preprocessing); activation ranges are observed on them (histogram observers;
    weights per-channel). max_batches: stop after that many. keep_float: names of submodules
    (e.g. ``"stages.0"``, ``"classifier"``) left in fp32 (quantize / dequantize around them).

    reduce_range: which side gives up a bit so that fbgemm's AVX2 kernels, which multiply
    u8 activations by s8 weights into *saturating* int16 pair sums, never saturate:
    None: ours per backend (``_bit_split``): fbgemm / x86, and onednn without VNNI:
    ``"weights"``; qnnpack, and onednn with VNNI: ``"none"``. (PyTorch's own defaults are
    ``"activations"`` for fbgemm / x86 and ``"none"`` for onednn, which saturates without VNNI.)
    ``"activations"`` (or True): 7-bit activations, 8-bit weights (2 * 127 * 128 < 2**15);
    ``"weights"``: 8-bit activations, 7-bit weights (|w| <= 64: 2 * 255 * 64 = 32640 < 2**15),
    exact on every x86 CPU (tests/test_quantize_agreement.py checks a conv against the float
    arithmetic);
    ``"none"`` (or False): 8 and 8 bits, only exact on VNNI / AMX CPUs (no int16 step).
    Measured (benchmarks/int8_latency.py, SMALL_FBNET, AVX2, 5000 held-out images, mean of 4
    calibration draws): "activations" 96.9% top-1 agreement with fp32, "weights" 98.2%, "none"
    95.9% (one draw: saturation); the same kernels, so the same speed. bias_correction:
    ``correct_bias`` on the calibration set after conversion.

    ranges: how the quantization ranges are chosen (RANGES). ``"histogram"``: PyTorch's
    ``HistogramObserver`` for activations, per-channel min / max for weights; ``"mse"``:
    ``MSEHistogramObserver`` (the least-squared-error range over the same histogram, searched
    exhaustively) and ``MSEPerChannelWeightObserver`` (per channel, the clipping with the least
    squared weight error). The same kernels and graph, so the same speed.
    Measured (SMALL_FBNET, 4 draws of 256 calibration images, top-1 agreement with fp32 on
    10000 held-out images, binomial 95% half-width 0.27 points): ``reduce_range="weights"``
    98.01% (draws' sd 0.11; 26.0 dB logit SQNR) -> 98.22% (sd 0.10; 26.5 dB), higher in every
    draw; "activations" 96.89% -> 97.05%; the same model trained 30 epochs: 98.07% ->
    98.37% (24.7 -> 25.4 dB). The SQNR gain holds in every calibration draw tried, the agreement
    gain not always: on the benchmark's own calibration set (benchmarks/results/
    int8_agreement.json) 25.5 -> 25.9 dB but 98.14% -> 98.02% on its 5000 check images, within
    the binomial interval (+-0.4 points). The same graph and kernels, so the same speed
    (FBNetV3-B, 224 px, batch 1: 27.0 vs 27.4 ms). Calibration is slower: an exhaustive
    100 x 100 range search per activation tensor (the small model: 21 s instead of 8 s).

    reconstruct: 0 (off) or the number of Adam steps per block of a block-wise reconstruction on
    the calibration images (``reconstruct_blockwise``; no labels): one residual block at a time,
    fed the int8-simulated model's own input and fitted to the fp32 block's output, it learns
    whether each weight rounds down or up (AdaRound), the biases and the activation scales
    (LSQ), with QDrop's random fp32 activations. Every weight stays on the grid plain PTQ chose
    (the same per-channel scales, |w| <= 64 with 7-bit weights: exact on AVX2) and every zero
    point stays; the same graph and kernels, so the same speed. seed: its mini-batches and
    drop masks. Measured (SMALL_FBNET, the default bit split, 4 draws of 256 calibration
    images, 5000 held-out images): logit SQNR 25.95 -> 27.74 dB (+1.8 dB, every draw: 25.54 /
    26.03 / 26.19 / 26.06 -> 27.80 / 27.76 / 27.74 / 27.65), top-1 agreement with fp32 98.15% ->
    98.44% (98.08 / 97.96 / 98.20 / 98.36 -> 98.26 / 98.58 / 98.54 / 98.36); not the 99% goal.
    Cost: 200 steps on that model's 10 blocks took 3-6 minutes on one shared core.

    The input ``model`` is not changed. Returns the converted model (eval mode, float in,
    float out).
    """
    check_choice("quantize_static: ranges", ranges, RANGES, QuantizationError)
    check_bool("quantize_static: bias_correction", bias_correction, QuantizationError)
    check_int("quantize_static: reconstruct", reconstruct, 0, None, QuantizationError)
    check_int("quantize_static: seed", seed, 0, None, QuantizationError)
    backend = _backend(backend)
    float_model = prepare_for_deploy(model)  # BN folded, eval: calibration sees inference behaviour
    mapping = _keep_float(_ptq_qconfig_mapping(backend, reduce_range, ranges), float_model, keep_float, "quantize_static")
    used: Optional[list] = [] if bias_correction or reconstruct else None
    observed: Optional[list] = [] if reconstruct else None
    quantized, n = _calibrated(float_model, mapping, calibration, max_batches, _example(model, example), used, observed)
    seven_bit = _bit_split(backend, reduce_range, "quantize_static") == "weights"
    if ranges == "mse" and seven_bit:
        # clipped weights: convert_fx clamps to qint8's -128..127, not to the observer's 7 bits
        for _, layer in _quantized_linear_layers(quantized):
            _clamp_weight(layer, -64, 63)
    if reconstruct:
        quantized, _ = reconstruct_blockwise(observed[0], quantized, float_model, used, reconstruct, seed,
                                             (-64, 64) if seven_bit else (-128, 127))
    if bias_correction:
        correct_bias(quantized, float_model, used)
    same_pad_depthwise(quantized)
    logger.info("quantize_static: %s calibrated on %d batches, converted to int8 (%s)",
                getattr(getattr(model, "spec", None), "name", type(model).__name__), n, backend)
    return quantized


def _op_nodes(float_model: nn.Module, mapping: QConfigMapping, example: Tuple[torch.Tensor]
              ) -> List[Tuple[str, str, Optional[type]]]:
    """(unit, module path, module type or None) of each op of ``float_model``'s FX quantization
    graph: a module call (conv, activation, pool, ...) belongs to the unit of its parent module
    (``stages.3.0.dw.conv`` -> ``stages.3.0.dw``), a function call (the residual add, the SE
    multiply) to the module whose forward makes it (``stages.3.0``, ``stages.3.0.se``)."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
        prepared = prepare_fx(copy.deepcopy(float_model), mapping, example)
    scope = prepared.meta["_observed_graph_module_attrs"].node_name_to_scope
    modules = dict(prepared.named_modules())
    ops = []
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.name in scope:
            path = node.target
            ops.append((path.rpartition(".")[0] or path, path, type(modules[path])))
        elif node.op in ("call_function", "call_method") and node.name in scope:
            ops.append((scope[node.name][0], scope[node.name][0], None))
    return ops


def _unit_mapping(backend: str, reduce_range: Any, ops: List[Tuple[str, str, Optional[type]]],
                  quantized_units: Iterable[str]) -> QConfigMapping:
    """A qconfig mapping that quantizes exactly the ops of ``quantized_units`` (each op named by
    its module path, so a unit's ops are switched without its sub-units'), each with the qconfig
    the full mapping gives it (fixed-qparams ops keep theirs)."""
    base = _ptq_qconfig_mapping(backend, reduce_range)
    mapping = _ptq_qconfig_mapping(backend, reduce_range)
    on = set(quantized_units)
    for unit, path, kind in ops:
        qconfig = base.object_type_qconfigs.get(kind, base.global_qconfig) if kind else base.global_qconfig
        mapping.set_module_name(path, qconfig if unit in on else None)
    return mapping


def _sqnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - test).pow(2).sum().clamp_min(1e-30)))


def sensitivity(model: nn.Module, calibration: Iterable[Any], evaluation: Iterable[Any],
                backend: Optional[str] = None, reduce_range: Union[None, bool, str] = None, mode: str = "alone",
                units: Optional[Sequence[str]] = None, max_batches: Optional[int] = None,
                example: Optional[torch.Tensor] = None) -> List[Dict[str, Any]]:
    """How much each quantization unit of ``model`` costs, measured on the converted int8 model.

    A unit is a module whose *own* ops the quantization graph holds: a conv-BN-act
    (``stages.3.0.dw``: its conv and activation), a squeeze-excite (pool, two convs, gate,
    the multiply), a residual block's add (``stages.3.0``), a head's pooling, the classifier.
    mode ``"alone"``: only that unit in int8, the rest fp32; ``"without"``: everything in
    int8 except that unit. Each is calibrated as ``quantize_static`` does (same
    ``reduce_range``) and compared with fp32 on ``evaluation`` (batches like ``calibration``).
    Returns one dict per unit, most harmful first: ``unit``, ``ops`` (its module types /
    functions), ``logit_sqnr_db`` and ``top1_agreement`` vs fp32 (for "without" also
    ``agreement_gain`` / ``sqnr_gain_db`` over all-int8). Costs one calibration per unit.
    """
    check_choice("sensitivity: mode", mode, ("alone", "without"), QuantizationError)
    backend = _backend(backend)
    float_model = prepare_for_deploy(model)
    ex = _example(model, example)
    ops = _op_nodes(float_model, _ptq_qconfig_mapping(backend, reduce_range), ex)
    all_units = list(dict.fromkeys(u for u, _, _ in ops))
    if units is None:
        units = all_units
    for unit in units:
        if unit not in all_units:
            raise QuantizationError(f"sensitivity: units: {unit!r} is not a quantization unit of the model "
                                    f"(there are {all_units})")
    data = [_inputs(b) for b in evaluation]
    calib = list(calibration)
    if not data:
        raise QuantizationError("sensitivity: the evaluation set is empty")
    with torch.inference_mode():
        ref = torch.cat([float_model(x) for x in data])

    def measure(quantized_units):
        q, _ = _calibrated(float_model, _unit_mapping(backend, reduce_range, ops, quantized_units), calib,
                           max_batches, ex)
        with torch.inference_mode():
            out = torch.cat([q(x) for x in data])
        return _sqnr(ref, out), float((out.argmax(1) == ref.argmax(1)).float().mean())

    base = measure(all_units) if mode == "without" else None
    rows = []
    for unit in tqdm(units, desc=f"sensitivity ({mode})", leave=False, disable=None):
        sqnr, agree = measure([unit] if mode == "alone" else [u for u in all_units if u != unit])
        row = {"unit": unit, "ops": [getattr(k, "__name__", "function") if k else "function"
                                     for u, _, k in ops if u == unit],
               "logit_sqnr_db": round(sqnr, 2), "top1_agreement": round(agree, 4)}
        if base is not None:
            row["sqnr_gain_db"], row["agreement_gain"] = round(sqnr - base[0], 2), round(agree - base[1], 4)
        rows.append(row)
    if mode == "alone":
        rows.sort(key=lambda r: (r["logit_sqnr_db"], r["top1_agreement"]))
    else:
        rows.sort(key=lambda r: (-r["agreement_gain"], -r["sqnr_gain_db"]))
    return rows


class Int8StorageFakeQuantize(FakeQuantize):
    """Activation fake-quant that computes what the int8 model will: qparams from the observer
    (``calculate_qparams``, honouring ``reduce_range``), clamped to the stored dtype's full
    range (quint8: 0..255).

    PyTorch's fake-quant clamps to the *observer's* range, which ``reduce_range=True`` (the
    fbgemm / x86 default, against int16 overflow in AVX2 kernels) halves to 0..127; the
    converted model stores quint8 and clamps at 255. With the reduced clamp, every activation
    above its (moving-average) observed maximum is clipped in QAT and not in int8, and a net
    trained through those clips computes something else in int8 (-1.3 dB logit SQNR after two
    trainer epochs on the embedded set; 93.8% top-1 agreement with its own QAT model)."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled[0] == 1:
            self.activation_post_process(X.detach())
            scale, zero_point = self.calculate_qparams()
            self.scale.copy_(scale.to(self.scale.device))
            self.zero_point.copy_(zero_point.to(self.zero_point.device))
        if self.fake_quant_enabled[0] == 1:
            info = torch.iinfo(self.dtype)
            X = torch.fake_quantize_per_tensor_affine(X, self.scale, self.zero_point, info.min, info.max)
        return X


def _keep_float(mapping: QConfigMapping, model: nn.Module, keep_float: Sequence[str], where: str) -> QConfigMapping:
    """``mapping`` with the submodules ``keep_float`` names left in fp32 (each must exist)."""
    names = dict(model.named_modules())
    for name in keep_float:
        if name not in names:
            raise QuantizationError(f"{where}: keep_float: {name!r} is not a submodule of the model")
        mapping.set_module_name(name, None)
    return mapping


def _bit_split(backend: str, reduce_range: Any, where: str) -> str:
    """``reduce_range`` as one of REDUCE_RANGE (None: the backend's default)."""
    if reduce_range is None:
        if backend == "qnnpack" or (backend == "onednn" and torch.cpu._is_vnni_supported()):
            return "none"  # int32 accumulation (ARM; oneDNN's VNNI / AMX kernels): 8 + 8 bits are exact
        # fbgemm / x86, and oneDNN without VNNI: AVX2 sums u8 x s8 pairs in saturating int16, so one
        # side gives up a bit. PyTorch's default gives it up on the activations; measured on a trained
        # FBNet (benchmarks/int8_latency.py), 7-bit weights agree better with fp32 (98.2% top-1
        # agreement vs 96.9%, +2.7 dB logit SQNR, every calibration draw) with the same kernels
        return "weights"
    mode = ("activations" if reduce_range else "none") if isinstance(reduce_range, bool) else reduce_range
    if mode not in REDUCE_RANGE:
        raise QuantizationError(f"{where}: reduce_range: {reduce_range!r} is not None, True, False or one of "
                                f"{list(REDUCE_RANGE)}")
    return mode


def qat_qconfig_mapping(backend: str, reduce_range: Union[None, bool, str] = None) -> QConfigMapping:
    """PyTorch's default QAT qconfig mapping for ``backend`` with fake-quant modules whose
    arithmetic is the converted int8 model's (PyTorch's defaults differ in two ways, each
    enough to make a QAT-trained net's int8 model disagree with it):

    - weights: ``FakeQuantize`` (observer, then ``calculate_qparams``) instead of the fused
      ``FusedMovingAvgObsFakeQuantize`` kernel, which for per-channel symmetric weights scales
      by ``absmax / 128`` where ``calculate_qparams`` (what ``convert_fx`` quantizes the
      weights with) uses ``absmax / 127.5``: every weight rounds differently (~33 dB per layer).
    - activations: ``Int8StorageFakeQuantize`` (the reduce_range clamp, see there).
    Fixed-qparams ops (hardsigmoid, ...) keep PyTorch's fake-quant: those already agree.
    reduce_range: the bit split, as in ``quantize_static``."""
    mode = _bit_split(backend, reduce_range, "qat_qconfig_mapping")
    mapping = _pytorch_mapping(get_default_qat_qconfig_mapping, backend)
    activation = Int8StorageFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                                   reduce_range=mode == "activations")
    # 7-bit weights as -63..63 (scale absmax / 63): fake-quant clamps to the observer's range,
    # which reduce_range would make -64..63 while convert_fx rounds absmax / (absmax / 63.5) to 64
    qmax = 63 if mode == "weights" else 127
    weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-qmax - (qmax == 127),
                                    quant_max=qmax, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    return mapping.set_global(QConfig(activation=activation, weight=weight))


def prepare_qat(model: nn.Module, backend: Optional[str] = None, example: Optional[torch.Tensor] = None,
                keep_float: Sequence[str] = (), reduce_range: Union[None, bool, str] = None) -> nn.Module:
    """A copy of ``model`` for quantization-aware training: conv-BN(-ReLU) fused into QAT modules
    with fake-quantized weights and activations, in train mode. Train it like any model (any
    optimiser, the project's trainer, with or without EMA), then ``convert_qat`` (the raw model
    or the trainer's averaged copy): the int8 model computes what the fake-quant model did.
    keep_float / reduce_range: as in ``quantize_static`` (submodules left fp32; the bit split)."""
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    drop = [name for name, m in model.named_modules() if isinstance(m, DropPath) and m.p > 0]
    if drop:
        raise QuantizationError(f"prepare_qat: {len(drop)} stochastic-depth layer(s) ({drop[0]}, ...): their "
                                "per-sample random mask does not survive FX tracing; build the model with "
                                "drop_path_rate=0 for QAT")
    backend = _backend(backend)
    mapping = _keep_float(qat_qconfig_mapping(backend, reduce_range), model, keep_float, "prepare_qat")
    qat = copy.deepcopy(model).train()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
            prepared = prepare_qat_fx(qat, mapping, _example(model, example))
    except Exception as e:
        raise QuantizationError(f"prepare_qat: FX tracing failed: {type(e).__name__}: {e}") from e
    prepared.meta[_QAT_BACKEND] = backend  # GraphModule.meta survives deepcopy (the trainer's EMA copy)
    _int8_global_pools(prepared)
    return prepared


_QAT_BACKEND = "fbnet_zoo.quantize.backend"


class _QATGlobalPool(nn.AdaptiveAvgPool2d):
    """A QAT model's global average pool (squeeze-excite, head) as int8 computes it
    (``_int8_global_mean``). ``convert_qat`` puts the plain pool back."""

    def __init__(self, fake_quant: nn.Module):
        super().__init__(1)
        self.fake_quant = [fake_quant]  # the input's quantizer (a pool keeps its qparams), not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fake_quant = self.fake_quant[0]
        if not int(fake_quant.fake_quant_enabled[0]):
            return super().forward(x)
        return _int8_global_mean(x, fake_quant.scale.detach())


class _SharedFakeQuant(nn.Module):
    """A pool's output quantizer: its input's fake-quant (the same qparams, as int8's pool keeps
    them) applied without observing. FX registers the one module under both names, so in QAT
    every step observed the pooled values too, and the moving-average range drifted towards the
    pooled (narrower) one, clipping the tensor before the pool. ``convert_qat`` puts the shared
    module back."""

    def __init__(self, fake_quant: nn.Module):
        super().__init__()
        self.fake_quant = [fake_quant]  # not a submodule: its state has one name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fq = self.fake_quant[0]
        if not int(fq.fake_quant_enabled[0]):
            return x
        return torch.fake_quantize_per_tensor_affine(x, fq.scale, fq.zero_point, torch.iinfo(fq.dtype).min,
                                                     torch.iinfo(fq.dtype).max)


def _int8_global_pools(prepared: torch.fx.GraphModule) -> None:
    """Give every global average pool of a prepared QAT graph whose input and output share one
    ``Int8StorageFakeQuantize`` int8's arithmetic (``_QATGlobalPool``, ``_SharedFakeQuant``), in place.
    Measured on the int8_latency benchmark's model: the int8 model was 32.6 dB (logit SQNR) from
    the calibrated QAT model it came from, 99.5% top-1 agreement; see README "int8"."""
    modules = dict(prepared.named_modules(remove_duplicate=False))
    for node, fake_quant in _global_pools_fed_by(prepared, modules, Int8StorageFakeQuantize):
        outputs = [u for u in node.users if u.op == "call_module" and modules.get(u.target) is fake_quant]
        if len(outputs) != len(node.users):
            continue
        prepared.set_submodule(node.target, _QATGlobalPool(fake_quant))
        for user in outputs:
            prepared.set_submodule(user.target, _SharedFakeQuant(fake_quant))


def _plain_global_pools(prepared: torch.fx.GraphModule) -> None:
    """Undo ``_int8_global_pools`` (in place, on convert_qat's copy): convert_fx knows PyTorch's modules."""
    for name, module in list(prepared.named_modules()):
        if isinstance(module, _QATGlobalPool):
            prepared.set_submodule(name, nn.AdaptiveAvgPool2d(1))
        elif isinstance(module, _SharedFakeQuant):
            prepared.set_submodule(name, module.fake_quant[0])


def convert_qat(model: nn.Module, backend: Optional[str] = None) -> nn.Module:
    """The int8 model of a QAT-trained ``prepare_qat`` model (a copy, in eval mode).
    backend: None converts for the backend ``prepare_qat`` used (its fake-quant ranges were
    chosen for that backend's kernels); another one is refused, except fbgemm <-> x86 (the same
    kernels and bit split)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    if not isinstance(model, torch.fx.GraphModule):
        raise QuantizationError(f"convert_qat: expected the model returned by prepare_qat, got {type(model).__name__}")
    trained_for = model.meta.get(_QAT_BACKEND)
    if backend is not None and trained_for is not None and backend != trained_for \
            and {backend, trained_for} != {"fbgemm", "x86"}:
        raise QuantizationError(f"convert_qat: backend {backend!r} differs from the {trained_for!r} that prepare_qat "
                                f"trained for (its quantization ranges assume {trained_for!r}'s kernels); pass "
                                f"backend={trained_for!r} or None")
    _backend(backend or trained_for)
    fake_quant = {name: m.weight_fake_quant for name, m in model.named_modules() if hasattr(m, "weight_fake_quant")}
    prepared = copy.deepcopy(model).eval()
    _plain_global_pools(prepared)
    quantized = convert_fx(prepared)
    _clamp_int8_weights(quantized, fake_quant)
    same_pad_depthwise(quantized)
    return quantized


def _clamp_int8_weights(quantized: torch.fx.GraphModule, fake_quant: Dict[str, nn.Module]) -> None:
    """Clamp each int8 conv / linear weight to the integer range its QAT weight fake-quant
    clamps to. convert_fx quantizes with the frozen scale but clamps only to qint8's -128..127:
    weights that grew past the frozen range after the observers froze were clamped in training
    and are not in int8. Only narrower ranges (7-bit weights) need it."""
    for name, layer in _quantized_linear_layers(quantized):
        fq = fake_quant.get(name)
        if fq is not None:
            _clamp_weight(layer, fq.activation_post_process.quant_min, fq.activation_post_process.quant_max)


def _clamp_weight(layer: nn.Module, low: int, high: int) -> None:
    """Clamp the integer weights of one int8 conv / linear to ``low..high`` (in place)."""
    w = layer.weight()
    ints = w.int_repr()
    if int(ints.min()) >= low and int(ints.max()) <= high:
        return
    clamped = torch._make_per_channel_quantized_tensor(ints.clamp(low, high), w.q_per_channel_scales(),
                                                       w.q_per_channel_zero_points(), w.q_per_channel_axis())
    layer.set_weight_bias(clamped, layer.bias())


def calibrate_qat(model: nn.Module, calibration: Iterable[Any], ranges: str = "histogram") -> int:
    """Set the activation ranges of a ``prepare_qat`` model from ``calibration`` batches (images
    or (images, labels)), in place, the model in eval mode (BN on its running statistics), as
    ``quantize_static`` chooses them: ``ranges`` "histogram" (PyTorch's histogram search, PTQ's
    default), "mse" (``MSEHistogramObserver``) or "minmax" (the QAT observers' own moving
    average of each batch's min / max, dominated by the first batch). The chosen range is
    written into the moving-average observer, which carries on from it unless frozen. On the
    int8_latency benchmark's model the fake-quant model starts at 26.1 dB logit SQNR from fp32
    with "histogram", 25.4 dB with "minmax". Returns the number of images."""
    check_choice("calibrate_qat: ranges", ranges, RANGES + ("minmax",), error=QuantizationError)
    swapped = []
    if ranges != "minmax":
        observer = HistogramObserver if ranges == "histogram" else MSEHistogramObserver
        for module in model.modules():
            if isinstance(module, Int8StorageFakeQuantize):
                moving = module.activation_post_process
                module.activation_post_process = observer(dtype=moving.dtype, qscheme=moving.qscheme,
                                                          reduce_range=moving.reduce_range,
                                                          quant_min=moving.quant_min, quant_max=moving.quant_max)
                swapped.append((module, moving))
    was_training = model.training
    model.eval()
    n = 0
    try:
        with torch.no_grad():
            for batch in calibration:
                x = _inputs(batch)
                model(x)
                n += x.shape[0]
    finally:
        for module, moving in swapped:
            chosen = module.activation_post_process
            if n:  # the range whose qparams are the chosen observer's
                scale, zero_point = chosen.calculate_qparams()
                moving.min_val.resize_(()).copy_(((chosen.quant_min - zero_point) * scale).squeeze())
                moving.max_val.resize_(()).copy_(((chosen.quant_max - zero_point) * scale).squeeze())
            module.activation_post_process = moving
            if n:
                scale, zero_point = module.calculate_qparams()
                module.scale.copy_(scale)
                module.zero_point.copy_(zero_point)
        model.train(was_training)
    if n == 0:
        raise QuantizationError("calibrate_qat: the calibration set is empty")
    return n


def freeze_qat_observers(model: nn.Module) -> None:
    """Stop updating activation / weight ranges (fake-quant keeps using the frozen ones)."""
    from torch.ao.quantization import disable_observer

    model.apply(disable_observer)


def freeze_qat_bn_stats(model: nn.Module) -> None:
    """Stop updating the running statistics of the fused conv-BN modules (their BN runs on them)."""
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats

    model.apply(freeze_bn_stats)


class QATSchedule:
    """An ``on_epoch_end(epoch, result)`` callback for the project's trainer (``train_model``):
    after epoch ``freeze_bn`` the BN statistics freeze, after ``freeze_observers`` the
    quantization ranges do (the usual late-QAT schedule; None: never). A resumed run calls
    ``on_resume``: frozen BN is a module flag, not in the epoch checkpoint."""

    def __init__(self, model: nn.Module, freeze_bn: Optional[int] = None, freeze_observers: Optional[int] = None):
        self.model, self.freeze_bn, self.freeze_observers = model, freeze_bn, freeze_observers

    def __call__(self, epoch: int, result: Any = None) -> None:
        if self.freeze_bn is not None and epoch + 1 >= self.freeze_bn:
            freeze_qat_bn_stats(self.model)
        if self.freeze_observers is not None and epoch + 1 >= self.freeze_observers:
            freeze_qat_observers(self.model)

    def on_resume(self, epochs_done: int) -> None:
        """Freeze again what the schedule had frozen by the end of epoch ``epochs_done - 1``."""
        if epochs_done > 0:
            self(epochs_done - 1)


def export_int8_torchscript(quantized: nn.Module, path: Optional[str] = None, example: Optional[torch.Tensor] = None,
                            atol: float = 1e-5) -> torch.jit.ScriptModule:
    """TorchScript of an int8 model (traced on ``example``, frozen), checked to equal it and
    saved atomically to ``path``. Tracing, not scripting: converted FX graphs trace cleanly
    and the result keeps any input size (there is no size-dependent control flow)."""
    if path is not None:
        check_output_path(path, "export_int8_torchscript")
    x = example if example is not None else torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            ts = torch.jit.freeze(torch.jit.trace(quantized.eval(), x).eval())
    except Exception as e:
        raise QuantizationError(f"export_int8_torchscript: torch.jit.trace failed: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}") from e
    with torch.no_grad():
        diff = (ts(x) - quantized(x)).abs().max().item()
    if not diff <= atol:
        raise QuantizationError(f"export_int8_torchscript: the TorchScript output differs from the int8 model by "
                                f"{diff:.3g} > {atol}")
    if path is not None:
        with _writing(path, "export_int8_torchscript") as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            torch.jit.save(ts, tmp)
        logger.info("export_int8_torchscript: wrote %s", path)
    return ts


def top1_agreement(a: Callable[[torch.Tensor], torch.Tensor], b: Callable[[torch.Tensor], torch.Tensor],
                   batches: Iterable[Any]) -> Tuple[float, int]:
    """(fraction of images on which ``a`` and ``b`` predict the same class, number of images)."""
    same = total = 0
    with torch.inference_mode():
        for batch in batches:
            x = _inputs(batch)
            same += int((a(x).argmax(1) == b(x).argmax(1)).sum())
            total += x.shape[0]
    if total == 0:
        raise QuantizationError("top1_agreement: no images")
    return same / total, total
