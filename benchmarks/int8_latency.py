#!/usr/bin/env python3
"""int8 vs fp32 on CPU: latency ratios and top-1 agreement of FBNetV3-B/D/G (timm variants).

Latency, per model, in one run: one thread, batch 1, native input size, every mode timed
round-robin (median), so load drifts hit all modes alike. Modes:

- fp32: eager; TorchScript (BN folded, scripted, frozen); TorchScript + optimize_for_inference
  (mkldnn); onnxruntime (our ONNX export, BN folded); OpenVINO (the same export, when
  installed). The fair baseline is the fastest of them.
- int8 (``fbnet_zoo.quantize.quantize_static``, FX graph mode, traced + frozen TorchScript):
  the fbgemm, x86 and onednn backends, each fed NCHW and channels_last input; onnxruntime's own static
  int8 (QDQ, per-channel weights) of the same ONNX export; both ONNX graphs also run by OpenVINO
  when it is installed (optional, not a project dependency).
  Ratios: fp32 median / int8 median (> 1: int8 faster), for the best int8 mode against every
  fp32 mode, and every int8 mode against the best fp32 mode.
  (Latency does not depend on the weights: these models are randomly initialised.)

Agreement: no trained weights of the zoo models can be fetched here, and FBNetV3-B trained
from scratch on the embedded set stays at chance for the first epochs, so the agreement is
measured on ``--agreement-arch`` (default SMALL_FBNET: FBNetV3's blocks, 83% top-1 after 10
epochs) trained by the project's trainer on the embedded 10-class procedural image set
(fbnet_zoo.training.data, no download) at ``--train-res`` px. PTQ (per-channel weights,
histogram activations) is calibrated on ``--calib`` of its *training* images and compared with
fp32 on ``--held`` images generated from another seed (disjoint from training and calibration):
fp32 and int8 top-1 accuracy and int8-vs-fp32 top-1 agreement, for all-int8, for the stem conv
+ classifier left in fp32 (``keep_float``) and for 8-bit activations (``reduce_range=False``;
PyTorch's fbgemm / x86 default observes into 7 bits because AVX2 kernels saturate int16 pair
sums), then the accuracy options of ``quantize_static``: 8-bit activations with 7-bit weights
(``reduce_range="weights"``: no int16 saturation on any x86 CPU), empirical bias correction,
least-squared-error ranges (``ranges="mse"``, with both bit splits), block-wise
reconstruction of the weight rounding, biases and activation scales on the calibration images
(``reconstruct=RECONSTRUCT_STEPS``, 8/7 bits; minutes per calibration; not with --quick), and the k units that ``fbnet_zoo.quantize.sensitivity`` ranks most harmful left in fp32; the
per-unit sensitivity report itself (each unit alone in int8); and the batch-1 latency of every
option, on the trained model at 224 px and on ``--variant-latency-model`` (a zoo model, random
weights). The rows are checked on ``--check`` more held-out images (a third seed; Wilson 95% intervals),
and the main rows re-calibrated on ``--calibration-draws`` disjoint slices of the training
images (the spread a user sees from the calibration set). Then QAT (``--qat-epochs``) through the trainer from the fp32 weights, EMA on, with
the default bit split and with 8/7 bits: the int8 model's accuracy and agreement with fp32 and
with the QAT model it was converted from.

    python benchmarks/int8_latency.py --quick        # B, D, G latency + PTQ agreement: < 8 min on an idle core
    nice -n 10 python benchmarks/int8_latency.py     # full: more timing rounds, + QAT
    python benchmarks/int8_latency.py --agreement-only --out benchmarks/results/int8_agreement.json
                                                     # only the agreement part (~45 min on a loaded 2-core box:
                                                     # the reconstructed row takes 3-6 min per calibration)

Writes benchmarks/results/int8_latency.json (``--out``), with the CPU model and the ISA flags
int8 speed depends on: AVX2 has no 8-bit dot product (fbgemm multiplies u8 x s8 pairs into
int16, hence reduce_range), AVX512-VNNI / AVX-VNNI / AMX do. Goals (issue 17): int8 >= 2x
faster than fp32 with >= 99% top-1 agreement.
"""

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

import fbnet_zoo
from fbnet_zoo.deploy import export_onnx, prepare_for_deploy
from fbnet_zoo.quantize import (QATSchedule, _sqnr, convert_qat, export_int8_torchscript, prepare_qat,
                                quantize_static, sensitivity, top1_agreement)
from fbnet_zoo.training import CHECKPOINT_NAME, Recipe, TrainSettings, cached_datasets, train_model
from fbnet_zoo.training.qat import DISTILL_QAT_RECIPE, distill_qat
from fbnet_zoo.training.data import make_embedded_arrays
from fbnet_zoo.training.data.embedded import EMBEDDED_MEAN, EMBEDDED_STD
from latency import cpu_facts, machine_facts, round_robin_ms, save_result  # benchmarks/latency.py: the same timer, facts, writer

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "int8_latency.json")
MEAN = torch.tensor(EMBEDDED_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(EMBEDDED_STD).view(1, 3, 1, 1)
FIRST_AND_LAST = ("stages.0", "classifier")  # the stem conv and the classifier
# A short from-scratch recipe that learns the embedded set (SMALL_FBNET: 83% top-1 in 10 epochs)
RECIPE = Recipe(optimizer="sgd", lr=0.05, batch_size=64, ema=False, dropout=0.0, drop_path=0.0, mixup=0.0,
                label_smoothing=0.1, warmup_epochs=1, lr_decay=0.8, weight_decay=4e-5)
QAT_RECIPE = RECIPE.replace(lr=0.005, warmup_epochs=0, lr_decay=0.7, ema=True, ema_decay=0.99)
# FBNetV3's blocks (inverted residuals, SE, hardswish, the ir_pool head) at a size that trains to
# clearly non-chance accuracy in CPU-minutes; the zoo models do not (no weights can be fetched here).
SMALL_FBNET = {"name": "Small-FBNet", "input_size": 32, "stages": [
    [{"type": "conv", "out_channels": 16, "stride": 1, "kernel": 3, "act": "hswish"}],
    [{"type": "ir", "out_channels": 16, "expansion": 1, "kernel": 3}],
    [{"type": "ir", "out_channels": 24, "stride": 2, "expansion": 4, "kernel": 3},
     {"type": "ir", "out_channels": 24, "expansion": 3, "kernel": 3}],
    [{"type": "ir", "out_channels": 40, "stride": 2, "expansion": 4, "kernel": 5, "se": True, "act": "hswish"},
     {"type": "ir", "out_channels": 40, "expansion": 3, "kernel": 5, "se": True, "act": "hswish"}],
    [{"type": "ir", "out_channels": 64, "stride": 2, "expansion": 4, "kernel": 3, "se": True, "act": "hswish"},
     {"type": "ir", "out_channels": 64, "expansion": 3, "kernel": 3, "se": True, "act": "hswish"}],
    [{"type": "ir_pool", "out_channels": 256, "expansion": 6}]]}


def images(n, seed, size):
    """n embedded-set images at ``size`` px, normalised as the training pipeline does, and labels."""
    x, y = make_embedded_arrays(n, seed=seed, size=size)
    return (torch.from_numpy(x).float() / 255.0 - MEAN) / STD, torch.from_numpy(y)


def images_at(n, seed, res):
    """``images`` generated at the embedded set's 32 px and resized to ``res`` as the trainer does."""
    x, y = images(n, seed, 32)
    if res != 32:
        x = nn.functional.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
    return x, y


def batches(x, bs=16):
    return [x[i:i + bs] for i in range(0, len(x), bs)]


def _onnx_modes(model, size, threads, calib):
    """{mode: fn} of our ONNX export and onnxruntime's static int8 (QDQ) of it, run by
    onnxruntime and, when installed (``pip install openvino``; optional), by OpenVINO: a second
    runtime's int8 kernels on the same two graphs."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static as ort_q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    modes = {}
    with tempfile.TemporaryDirectory(prefix="fbnet_int8_") as d:
        fp32, pre, int8 = (os.path.join(d, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        export_onnx(model, fp32, input_size=size, check=False)  # a reference mode; its int8 is checked below
        quant_pre_process(fp32, pre)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{"input": b.numpy()} for b in batches(calib, 1)])

            def get_next(self):
                return next(self.it, None)

        ort_q(pre, int8, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
              weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        for mode, path in (("fp32_onnxruntime", fp32), ("int8_onnxruntime_qdq", int8)):
            s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            modes[mode] = lambda x, s=s: torch.from_numpy(s.run(None, {"input": x.numpy()})[0])
        if _openvino_version():
            import openvino

            core = openvino.Core()
            config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
            for mode, path in (("fp32_openvino", fp32), ("int8_openvino_qdq", int8)):
                request = core.compile_model(core.read_model(path), "CPU", config).create_infer_request()
                modes[mode] = lambda x, r=request: torch.from_numpy(r.infer({0: x.numpy()})[0].copy())
    return modes


def _openvino_version():
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__


def _channels_last(fn):
    return lambda x: fn(x.contiguous(memory_format=torch.channels_last))


def latency(variant, iters, threads, seed, with_ort):
    torch.manual_seed(seed)
    model = fbnet_zoo.build_model(f"FBNetV3-{variant.upper()}-timm").eval()
    size = model.spec.input_size
    calib = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    modes, ptq_s = {"fp32_eager": model}, {}
    folded = prepare_for_deploy(model)
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.script(folded).eval())
        modes["fp32_torchscript"] = frozen
        modes["fp32_torchscript_ofi"] = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(folded).eval()))
    int8 = {}
    for backend in ("fbgemm", "x86", "onednn"):
        t0 = time.perf_counter()
        q = quantize_static(model, batches(calib, 4), backend=backend)
        ptq_s[backend] = round(time.perf_counter() - t0, 1)
        int8[backend] = export_int8_torchscript(q, None, example=x)
        modes[f"int8_{backend}"] = int8[backend]
        modes[f"int8_{backend}_channels_last"] = _channels_last(int8[backend])
    if with_ort:
        modes.update(_onnx_modes(model, size, threads, calib))
    med = round_robin_ms(modes, iters, x)
    fp32 = {k: v for k, v in med.items() if k.startswith("fp32")}
    i8 = {k: v for k, v in med.items() if k.startswith("int8")}
    best_fp32, best_int8 = min(fp32, key=fp32.get), min(i8, key=i8.get)
    with torch.no_grad():  # the same int8 model (same bit split) on each engine's kernels
        ref = int8["fbgemm"](calib)
        diff = {b: round(float((int8[b](calib) - ref).abs().max()), 5) for b in ("x86", "onednn")}
    return {
        "model": f"fbnetv3_{variant}", "ours_arch": model.spec.name, "input_size": size, "iters": iters,
        "ptq_seconds": ptq_s, "median_ms": {k: round(v, 2) for k, v in med.items()},
        "best_fp32": best_fp32, "best_int8": best_int8,
        "ratio_best_int8_vs": {k: round(v / med[best_int8], 3) for k, v in fp32.items()},
        "ratio_vs_best_fp32": {k: round(med[best_fp32] / v, 3) for k, v in i8.items()},
        "fbgemm_vs_x86_max_abs_diff": diff["x86"], "fbgemm_vs_onednn_max_abs_diff": diff["onednn"],
    }


def build_arch(arch):
    """A 10-class model: "small" (SMALL_FBNET) or a zoo name (e.g. FBNetV3-B-timm), no drop path."""
    return fbnet_zoo.build_model(SMALL_FBNET if arch == "small" else arch, num_classes=10, drop_path_rate=0.0)


def _embedded(n_train, res, seed):
    # on the CPU even where CUDA is available: the agreement is measured on the CPU (int8 runs there)
    settings = TrainSettings(embedded_train_size=n_train, embedded_val_size=100, threads=torch.get_num_threads(),
                             seed=seed, device="cpu")
    train, val, _ = cached_datasets(settings, res)
    return settings, train, val


def train_classifier(arch, epochs, res, n_train, seed):
    """``arch`` (10 classes) trained by the project's trainer on ``n_train`` embedded images at
    ``res`` px (Nesterov SGD, warm-up then decay; channels_last, the trainer's default)."""
    settings, train, val = _embedded(n_train, res, seed)
    torch.manual_seed(seed)
    model = build_arch(arch)
    result = train_model(model, RECIPE.replace(resolution=res), epochs, train, val, settings, progress=False)
    if result.status != "ok":
        raise RuntimeError(f"training {arch} failed: {result.error}")
    return model.eval().to(memory_format=torch.contiguous_format)


def qat_finetune(model, epochs, res, n_train, seed, reduce_range=None):
    """QAT of a trained model through the project's trainer (EMA on, BN then ranges frozen for the
    last epoch): (int8 of the trained QAT model, the QAT model in eval mode)."""
    settings, train, val = _embedded(n_train, res, seed)
    qat = prepare_qat(model, example=train[0][0][None], reduce_range=reduce_range)
    recipe = QAT_RECIPE.replace(resolution=res)
    with tempfile.TemporaryDirectory(prefix="fbnet_qat_") as d:
        result = train_model(qat, recipe, epochs, train, val, settings, workdir=d, progress=False,
                             on_epoch_end=QATSchedule(qat, freeze_bn=epochs - 1, freeze_observers=epochs - 1))
        if result.status != "ok":
            raise RuntimeError(f"QAT failed: {result.error}")
        averaged = copy.deepcopy(qat)  # the trainer's EMA copy, from the run's checkpoint
        averaged.load_state_dict(torch.load(os.path.join(d, CHECKPOINT_NAME), weights_only=True)["ema"]["module"])
    return convert_qat(averaged), averaged.eval()


DISTILLED_ROW = "qat_distilled_8bit_activations_7bit_weights"


def qat_distilled(model, epochs, res, n_images, seed, calib, example, temperature):
    """``fbnet_zoo.training.qat.distill_qat`` of the trained model: QAT on the KD loss to its own
    fp32 logits (DISTILL_QAT_RECIPE: KD only, no dropout, EMA), the default bit split (8-bit
    activations, 7-bit weights), ranges calibrated on ``calib`` and frozen with BN from the
    start, on ``n_images`` un-augmented generated images of data seed 0 (the generator gives any
    number; disjoint from the held-out and check seeds); ``seed`` seeds the trainer."""
    settings = TrainSettings(embedded_train_size=n_images, embedded_val_size=100, threads=torch.get_num_threads(),
                             seed=seed, device="cpu", augment=False, distill_temperature=temperature,
                             checkpoint=False)
    train, val, _ = cached_datasets(settings, res)
    return distill_qat(model, DISTILL_QAT_RECIPE.replace(resolution=res), epochs, train, val, settings,
                       calibration=calib, freeze_observers=0, example=example, progress=False)


def _top1(fn, x, y):
    with torch.no_grad():
        return float((fn(x).argmax(1) == y).float().mean())


# (row name, keep_float, reduce_range, bias_correction, ranges, reconstruct steps per block); the
# first three are the rows measured since the benchmark began (keep them comparable).
# "ptq_all_int8" / "default" rows are PyTorch's x86 default bit split, 7-bit activations
# ("activations"), named before our default became "weights" (8-bit activations, 7-bit weights)
RECONSTRUCT_STEPS = 200
PTQ_VARIANTS = (
    ("ptq_all_int8", (), "activations", False, "histogram", 0),
    ("ptq_stem_classifier_fp32", FIRST_AND_LAST, "activations", False, "histogram", 0),
    ("ptq_all_int8_8bit_activations", (), False, False, "histogram", 0),
    ("ptq_all_int8_bias_correction", (), "activations", True, "histogram", 0),
    ("ptq_8bit_activations_7bit_weights", (), "weights", False, "histogram", 0),
    ("ptq_8bit_activations_7bit_weights_bias_correction", (), "weights", True, "histogram", 0),
    ("ptq_all_int8_mse_ranges", (), "activations", False, "mse", 0),
    ("ptq_8bit_activations_7bit_weights_mse_ranges", (), "weights", False, "mse", 0),
    ("ptq_8bit_activations_7bit_weights_reconstructed", (), "weights", False, "histogram", RECONSTRUCT_STEPS),
)
# the rows re-calibrated on several draws of calibration images (the spread a user sees)
CALIBRATION_DRAW_ROWS = ("ptq_all_int8", "ptq_8bit_activations_7bit_weights", "ptq_all_int8_mse_ranges",
                         "ptq_8bit_activations_7bit_weights_mse_ranges",
                         "ptq_8bit_activations_7bit_weights_reconstructed")


def _wilson(agree, n, z=1.96):
    """The Wilson score interval (95%) of a binomial proportion."""
    centre = (agree + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (agree * (1 - agree) / n + z * z / (4 * n * n)) ** 0.5
    return [round(centre - half, 4), round(centre + half, 4)]


def _variant_latency(fp32, quantized, size, iters, channels_last=False):
    """Batch-1 median ms at ``size`` px of the fp32 TorchScript deploy model of ``fp32`` and of
    each int8 variant's frozen TorchScript (also fed channels_last input if asked), timed
    round-robin, with fp32 / int8 ratios."""
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fns = {"fp32_torchscript": torch.jit.freeze(torch.jit.script(prepare_for_deploy(fp32)).eval())}
    for name, q in quantized.items():
        fns[name] = export_int8_torchscript(q, None, example=x)
        if channels_last:
            fns[name + "_channels_last"] = _channels_last(fns[name])
    med = round_robin_ms(fns, iters, x)
    return {k: {"median_ms": round(v, 3), "ratio_vs_fp32_torchscript": round(med["fp32_torchscript"] / v, 3)}
            for k, v in med.items()}


def zoo_variant_latency(arch, iters, seed=0):
    """The speed of the PTQ options on a zoo model (random weights: speed does not depend on
    them): default bits vs 8-bit activations + 7-bit weights, with and without bias correction
    (the same kernels; only the quantized values differ), vs its fp32 TorchScript."""
    torch.manual_seed(seed)
    model = fbnet_zoo.build_model(arch).eval()
    size = model.spec.input_size
    calib = batches(torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed)), 4)
    quantized = {f"int8_{name}": quantize_static(model, calib, reduce_range=rr, bias_correction=bc, ranges=ranges)
                 for name, rr, bc, ranges in (
                     ("default", "activations", False, "histogram"), ("8bit_activations_7bit_weights", "weights", False, "histogram"),
                     ("8bit_activations_7bit_weights_bias_correction", "weights", True, "histogram"),
                     ("8bit_activations_7bit_weights_mse_ranges", "weights", False, "mse"))}
    return {"model": arch, "input_size": size, "iters": iters,
            "modes": _variant_latency(model, quantized, size, iters, channels_last=True)}


def _calibration_draws(model, x, f, n_calib, n_train, res, draws, example, rows=None):
    """CALIBRATION_DRAW_ROWS re-calibrated on ``draws`` disjoint slices of ``n_calib`` training
    images (the embedded training set itself: ``n_train`` images of data seed 0), each compared
    with fp32 (logits ``f``) on ``x``: per-draw agreement and SQNR, their mean and standard
    deviation, and the Wilson 95% interval of the mean over ``len(x)`` images."""
    pool, _ = images_at(n_train, 0, res)
    draws = min(draws, len(pool) // n_calib)
    out = {"draws": draws, "images_per_draw": n_calib, "rows": {}}
    for name in CALIBRATION_DRAW_ROWS:
        if rows is not None and name not in rows:
            continue
        _, keep, reduce_range, bias_correction, ranges, reconstruct = next(v for v in PTQ_VARIANTS if v[0] == name)
        agree, sqnr = [], []
        for k in range(draws):
            q = quantize_static(model, batches(pool[k * n_calib:(k + 1) * n_calib], 32), example=example,
                                keep_float=keep, reduce_range=reduce_range, bias_correction=bias_correction,
                                ranges=ranges, reconstruct=reconstruct)
            with torch.no_grad():
                g = q(x)
            agree.append(float((g.argmax(1) == f.argmax(1)).float().mean()))
            sqnr.append(_sqnr(f, g))
        mean = statistics.mean(agree)
        out["rows"][name] = {"top1_agreement": [round(a, 4) for a in agree], "mean": round(mean, 4),
                             "std": round(statistics.stdev(agree), 4) if draws > 1 else 0.0,
                             "wilson_95_of_mean": _wilson(mean, len(x)),
                             "logit_sqnr_db": [round(v, 2) for v in sqnr], "mean_logit_sqnr_db": round(statistics.mean(sqnr), 2)}
    return out


def trained_agreement(arch, epochs, res, n_train, n_calib, n_held, seed, qat_epochs, load=None, save=None,
                      sensitivity_units=True, keep_top=(2, 4, 8), latency_size=224, latency_iters=15, n_check=5000,
                      calibration_draws=4, reconstruct=True, ptq_rows=None, distill_epochs=0, distill_images=5000,
                      distill_seeds=4, distill_temperature=1.0):
    t0 = time.perf_counter()
    if load:
        model = build_arch(arch)
        model.load_state_dict(torch.load(load, map_location="cpu", weights_only=True))
        model.eval()
    else:
        model = train_classifier(arch, epochs, res, n_train, seed)
        if save:
            torch.save(model.state_dict(), save)
    train_s = time.perf_counter() - t0
    xt, _ = images_at(n_calib, 0, res)  # the first training images (the trainer's embedded set: data_seed 0)
    xv, yv = images_at(n_held, seed + 1000, res)  # another seed: disjoint from training and calibration
    calib = batches(xt, 32)
    out = {"arch": arch, "epochs": epochs, "resolution": res, "train_images": n_train,
           "train_seconds": round(train_s, 1), "loaded_weights": bool(load), "calibration_images": n_calib,
           "held_out_images": n_held, "fp32_top1": round(_top1(model, xv, yv), 4)}
    with torch.no_grad():
        f = model(xv)

    def row(q, seconds):
        with torch.no_grad():
            g = q(xv)
        return {"top1_agreement": round(float((g.argmax(1) == f.argmax(1)).float().mean()), 4),
                "int8_top1": round(_top1(q, xv, yv), 4),
                "logit_sqnr_db": round(_sqnr(f, g), 1),
                "ptq_seconds": round(seconds, 1)}

    quantized = {}
    for name, keep, reduce_range, bias_correction, ranges, steps in PTQ_VARIANTS:
        if (steps and not reconstruct) or (ptq_rows is not None and name not in ptq_rows):
            continue
        t1 = time.perf_counter()
        q = quantize_static(model, calib, example=xv[:1], keep_float=keep, reduce_range=reduce_range,
                            bias_correction=bias_correction, ranges=ranges, reconstruct=steps)
        out[name] = {"reduce_range": reduce_range, "bias_correction": bias_correction, "keep_float": list(keep),
                     "ranges": ranges, "reconstruct": steps, **row(q, time.perf_counter() - t1)}
        quantized[name] = q
    if sensitivity_units:
        # which units hurt: each alone in int8 (the rest fp32), for the default and the 8/7-bit split
        for label, reduce_range in (("default", "activations"), ("8bit_activations_7bit_weights", "weights")):
            t1 = time.perf_counter()
            rows = sensitivity(model, calib, batches(xv, 100), reduce_range=reduce_range)
            out[f"sensitivity_alone_{label}"] = {"seconds": round(time.perf_counter() - t1, 1), "units": rows}
        ranked = [r["unit"] for r in out["sensitivity_alone_8bit_activations_7bit_weights"]["units"]]
        for k in keep_top:  # the k most harmful units left in fp32 (what it buys, what it costs)
            keep = ranked[:k]
            t1 = time.perf_counter()
            q = quantize_static(model, calib, example=xv[:1], keep_float=keep, reduce_range="weights")
            name = f"ptq_8bit_activations_7bit_weights_top{k}_units_fp32"
            out[name] = {"reduce_range": "weights", "bias_correction": False, "keep_float": keep,
                         **row(q, time.perf_counter() - t1)}
            quantized[name] = q
    distilled = []  # (seed, calibration images, result) of each distilled QAT run
    if distill_epochs:  # QAT distilled from this fp32 model: the benchmark's calibration images, trainer seed 0
        t1 = time.perf_counter()
        d = qat_distilled(model, distill_epochs, res, distill_images, seed, calib, xv[:1], distill_temperature)
        distilled.append((seed, "benchmark's 256", d))
        with torch.no_grad():
            want = d.qat(xv)
        out[DISTILLED_ROW] = {"epochs": distill_epochs, "images": distill_images, "temperature": distill_temperature,
                              "recipe": DISTILL_QAT_RECIPE.to_dict(), "reduce_range": "weights",
                              "qat_top1_per_epoch": list(d.result.top1), **row(d.int8, time.perf_counter() - t1),
                              "top1_agreement_with_qat_model": round(top1_agreement(d.qat, d.int8, [xv])[0], 4),
                              "logit_sqnr_db_vs_qat_model": round(_sqnr(want, d.int8(xv).detach()), 1)}
        out[DISTILLED_ROW]["qat_seconds"] = out[DISTILLED_ROW].pop("ptq_seconds")
        quantized[DISTILLED_ROW] = d.int8
    if n_check:  # the same int8 models on more held-out images from a third seed: how stable the 1000-image row is
        xc, _ = images_at(n_check, seed + 2000, res)
        with torch.no_grad():
            fc = model(xc)
        check = {}
        for name, q in quantized.items():
            with torch.no_grad():
                g = q(xc)
            agree = float((g.argmax(1) == fc.argmax(1)).float().mean())
            check[name] = {"top1_agreement": round(agree, 4),
                           "binomial_std": round((agree * (1 - agree) / n_check) ** 0.5, 4),
                           "wilson_95": _wilson(agree, n_check),
                           "logit_sqnr_db": round(_sqnr(fc, g), 1)}
        out["check_held_out"] = {"images": n_check, "seed": seed + 2000, "rows": check}
        if calibration_draws:
            out["check_held_out"]["calibration_draws"] = _calibration_draws(model, xc, fc, n_calib, n_train, res,
                                                                            calibration_draws, xv[:1], ptq_rows)
        if distilled:  # more QAT seeds, each with its own calibration draw (slices 1, 2, ... of the training images)
            pool, _ = images_at(n_train, 0, res)
            for k in range(1, min(distill_seeds, len(pool) // n_calib)):
                d = qat_distilled(model, distill_epochs, res, distill_images, seed + k,
                                  batches(pool[k * n_calib:(k + 1) * n_calib], 32), xv[:1], distill_temperature)
                distilled.append((seed + k, f"training images {k * n_calib}..{(k + 1) * n_calib - 1}", d))
            agree, sqnr = [], []
            for _, _, d in distilled:
                with torch.no_grad():
                    g = d.int8(xc)
                agree.append(float((g.argmax(1) == fc.argmax(1)).float().mean()))
                sqnr.append(_sqnr(fc, g))
            mean = statistics.mean(agree)
            out["check_held_out"]["qat_distilled_seeds"] = {
                "row": DISTILLED_ROW, "runs": [{"trainer_seed": s_, "calibration": c} for s_, c, _ in distilled],
                "top1_agreement": [round(a, 4) for a in agree], "mean": round(mean, 4),
                "std": round(statistics.stdev(agree), 4) if len(agree) > 1 else 0.0,
                "wilson_95_of_mean": _wilson(mean, len(xc)), "wilson_95_of_min": _wilson(min(agree), len(xc)),
                "logit_sqnr_db": [round(v, 2) for v in sqnr], "mean_logit_sqnr_db": round(statistics.mean(sqnr), 2)}
    if latency_size:
        out["latency_batch1"] = {"input_size": latency_size, "iters": latency_iters,
                                 "modes": _variant_latency(model, quantized, latency_size, latency_iters)}
    for name, reduce_range in (("qat", "activations"), ("qat_8bit_activations_7bit_weights", "weights")) if qat_epochs else ():
        t0 = time.perf_counter()
        q, qat = qat_finetune(model, qat_epochs, res, n_train, seed, reduce_range)
        with torch.no_grad():
            want, got = qat(xv), q(xv)
        out[name] = {"epochs": qat_epochs, "reduce_range": reduce_range, "seconds": round(time.perf_counter() - t0, 1),
                     "int8_top1": round(_top1(q, xv, yv), 4), "qat_top1": round(_top1(qat, xv, yv), 4),
                     "top1_agreement_with_fp32": round(top1_agreement(model, q, batches(xv, 100))[0], 4),
                     "top1_agreement_with_qat_model": round(top1_agreement(qat, q, batches(xv, 100))[0], 4),
                     "logit_sqnr_db_vs_qat_model": round(_sqnr(want, got), 1)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="fewer timing iterations, agreement for B only (about 6-8 min on an idle server core)")
    p.add_argument("--models", default="b,d,g")
    p.add_argument("--iters", type=int, default=None, help="round-robin timing rounds (default 15, --quick 7)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--agreement-arch", default="small",
                   help="the model trained for the agreement: small (a small FBNet, 83%% top-1 in 10 epochs), a zoo "
                        "name (FBNetV3-B-timm stayed at chance after 6 epochs at 32 px), or '' to skip")
    p.add_argument("--train-epochs", type=int, default=10)
    p.add_argument("--train-images", type=int, default=2500)
    p.add_argument("--train-res", type=int, default=32)
    p.add_argument("--qat-epochs", type=int, default=None, help="QAT fine-tune epochs (default 3; --quick 0)")
    p.add_argument("--calib", type=int, default=256, help="calibration images (from the training images)")
    p.add_argument("--held", type=int, default=1000, help="held-out images for the agreement")
    p.add_argument("--check", type=int, default=5000, help="further held-out images (a third seed) for the check rows")
    p.add_argument("--calibration-draws", type=int, default=4,
                   help="re-calibrate the main PTQ rows on this many disjoint slices of training images (0: skip)")
    p.add_argument("--load", metavar="PATH", help="trained weights of --agreement-arch (a 10-class state dict) "
                                                  "instead of training")
    p.add_argument("--save", metavar="PATH", help="save the trained --agreement-arch weights there (for --load)")
    p.add_argument("--agreement-only", action="store_true",
                   help="skip the zoo models' latency rows: only the trained model's agreement part")
    p.add_argument("--no-sensitivity", action="store_true",
                   help="skip the per-unit sensitivity report and the top-k fp32 rows (--quick skips them)")
    p.add_argument("--variant-latency-model", default="FBNetV3-B-timm",
                   help="zoo model on which the agreement part times its PTQ options ('' or --quick: skip)")
    p.add_argument("--ptq-rows", default=None,
                   help="comma-separated PTQ rows to run (default: all; e.g. ptq_8bit_activations_7bit_weights)")
    p.add_argument("--distill-qat-epochs", type=int, default=None,
                   help=f"QAT distilled from the fp32 model (fbnet_zoo.training.qat): epochs (default "
                        f"{DISTILL_QAT_RECIPE.epochs}; --quick 0: skip)")
    p.add_argument("--distill-qat-images", type=int, default=5000,
                   help="generated un-augmented training images per distilled-QAT epoch")
    p.add_argument("--distill-qat-seeds", type=int, default=4,
                   help="distilled-QAT runs (trainer seed + calibration draw each), checked on --check images")
    p.add_argument("--distill-temperature", type=float, default=1.0, help="KD temperature of the distilled QAT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-onnxruntime", action="store_true", help="skip the onnxruntime (and OpenVINO) fp32 / int8 modes")
    p.add_argument("--append", action="store_true", help="keep the rows of other models already in --out")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    iters = args.iters or (7 if args.quick else 15)
    qat_epochs = args.qat_epochs if args.qat_epochs is not None else (0 if args.quick else 3)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    rows = []
    print(f"{'model':<10} {'size':>4} {'fp32 best':>22} {'ms':>6} {'int8 best':>30} {'ms':>6} {'ratio':>6}")
    for v in [] if args.agreement_only else [m for m in args.models.split(",") if m]:
        r = latency(v, iters, args.threads, args.seed, not args.no_onnxruntime)
        rows.append(r)
        m = r["median_ms"]
        print(f"{r['model']:<10} {r['input_size']:>4} {r['best_fp32']:>22} {m[r['best_fp32']]:>6.1f} "
              f"{r['best_int8']:>30} {m[r['best_int8']]:>6.1f} {r['ratio_best_int8_vs'][r['best_fp32']]:>6.2f}",
              flush=True)
    agreement = None
    if args.agreement_arch:
        agreement = trained_agreement(args.agreement_arch, args.train_epochs, args.train_res, args.train_images,
                                      args.calib, args.held, args.seed, qat_epochs, args.load, args.save,
                                      not (args.no_sensitivity or args.quick), n_check=args.check,
                                      calibration_draws=0 if args.quick else args.calibration_draws,
                                      reconstruct=not args.quick,
                                      ptq_rows=args.ptq_rows.split(",") if args.ptq_rows is not None else None,
                                      distill_epochs=(0 if args.quick else DISTILL_QAT_RECIPE.epochs)
                                      if args.distill_qat_epochs is None else args.distill_qat_epochs,
                                      distill_images=args.distill_qat_images, distill_seeds=args.distill_qat_seeds,
                                      distill_temperature=args.distill_temperature)
        if args.variant_latency_model and not args.quick:
            agreement["zoo_latency_of_ptq_options"] = zoo_variant_latency(args.variant_latency_model, iters, args.seed)
        print(json.dumps(agreement, indent=1), flush=True)
    import onnxruntime

    if args.append and os.path.exists(args.out):
        with open(args.out) as f:
            done = {r["model"] for r in rows}
            rows = [r for r in json.load(f)["rows"] if r["model"] not in done] + rows
    result = {
        "benchmark": "int8_latency", **machine_facts(args.threads), **cpu_facts(), "batch": 1,
        "onnxruntime": onnxruntime.__version__, "openvino": _openvino_version(), "quick": args.quick, "wall_seconds": round(time.perf_counter() - t_start),
        "ratio_definition": "fp32 median time / int8 median time (> 1: int8 faster), modes timed round-robin",
        "agreement_definition": "share of held-out images whose int8 top-1 class equals fp32's",
        "goals": {"ratio": ">= 2.0 (best int8 vs best fp32)", "top1_agreement": ">= 0.99"},
        "rows": rows, "agreement": agreement,
    }
    save_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
