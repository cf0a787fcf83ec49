"""PTQ accuracy features of fbnet_zoo.quantize: the saturation-free bit split
(``reduce_range="weights"``), empirical bias correction, least-squared-error ranges, block-wise
reconstruction (``reconstruct``) and the per-unit sensitivity report.
Tiny models; the agreement figures on a trained model are benchmarks/int8_latency.py's job
(``--agreement-only``)."""

import pytest
import torch
from torch import nn

from fbnet_zoo.quantize import QuantizationError, correct_bias, quantize_static, sensitivity
from fbnet_zoo.deploy import prepare_for_deploy
from test_deploy import _model


def _images(n, seed, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _vnni():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return True  # unknown CPU: do not claim saturation
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _int8_conv_error(reduce_range):
    """Max |int8 conv output - the same integer arithmetic done exactly in float| in output
    steps, for a conv whose weights and inputs sit at the top of their ranges: the case
    where fbgemm's AVX2 u8 x s8 pair sums overflow int16."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 32, 3, padding=1)).eval()
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 1.0)
        model[0].bias.zero_()
    x = torch.rand(4, 64, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.8
    q = quantize_static(model, [x], example=x[:1], reduce_range=reduce_range)
    conv = q.get_submodule("0")
    seen = {}
    conv.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    with torch.no_grad():
        q(x)
        xq = seen["x"]
        assert int(xq.int_repr().max()) >= (250 if reduce_range == "weights" else 0)
        exact = nn.functional.conv2d(xq.dequantize(), conv.weight().dequantize(), conv.bias(), padding=1)
        got = conv(xq).dequantize()
    step = conv.scale
    weights = conv.weight().int_repr()
    return float((got - exact).abs().max() / step), int(weights.max()), int(weights.min())


def test_reduce_range_weights_gives_8_bit_activations_that_never_saturate_int16():
    err, wmax, wmin = _int8_conv_error("weights")
    assert -64 <= wmin and wmax <= 64 and wmax >= 60, (wmin, wmax)      # 7-bit weights
    assert err <= 0.5 + 1e-3, f"int8 conv is {err:.1f} steps from its own integer arithmetic"
    if not _vnni():                                                   # AVX2: 8 + 8 bits overflow int16 pair sums
        err8, wmax8, _ = _int8_conv_error("none")
        assert wmax8 == 127 and err8 > 2, err8
    with pytest.raises(QuantizationError, match="reduce_range: 'both' is not None, True, False or one of"):
        quantize_static(_model(), [_images(4, 0)], reduce_range="both")


def test_the_default_bit_split_on_x86_is_8_bit_activations_with_7_bit_weights():
    """fbgemm / x86 (and onednn without VNNI) default to reduce_range="weights", PTQ and QAT alike
    (PyTorch's default, 7-bit activations, agrees less with fp32); qnnpack keeps 8 + 8 bits."""
    from fbnet_zoo.quantize import _bit_split, _quantized_linear_layers, prepare_qat

    model, calib, x = _model(), [_images(16, s) for s in range(2)], _images(8, 9)
    default = quantize_static(model, calib, backend="x86")
    weights = quantize_static(model, calib, backend="x86", reduce_range="weights")
    with torch.no_grad():
        assert torch.equal(default(x), weights(x))
    assert max(int(layer.weight().int_repr().abs().max()) for _, layer in _quantized_linear_layers(default)) <= 64
    fake = [m.weight_fake_quant for m in prepare_qat(model, backend="x86", example=x[:1]).modules()
            if hasattr(m, "weight_fake_quant")]
    assert fake and all(f.quant_max == 63 for f in fake)
    assert _bit_split("fbgemm", None, "t") == "weights" and _bit_split("qnnpack", None, "t") == "none"
    assert _bit_split("onednn", None, "t") == ("none" if torch.cpu._is_vnni_supported() else "weights")


def _mean_errors(q, float_model, batches):
    """Per int8 conv / linear: max over channels of |mean (int8 accumulator - fp32 output)| / RMS."""
    from fbnet_zoo.quantize import _accumulator, _quantized_linear_layers

    floats = dict(float_model.named_modules())
    layers = _quantized_linear_layers(q)
    seen = {(name, side): [] for name, _ in layers for side in "qf"}
    hooks = []
    for name, layer in layers:
        hooks.append(layer.register_forward_pre_hook(
            lambda m, a, name=name: seen[name, "q"].append(_accumulator(m, a[0]))))
        hooks.append(floats[name].register_forward_hook(
            lambda m, a, o, name=name: seen[name, "f"].append(o.clone())))
    with torch.no_grad():
        for x in batches:
            q(x)
            float_model(x)
    for h in hooks:
        h.remove()
    out = {}
    for name, _ in layers:
        qa, fa = torch.cat(seen[name, "q"]), torch.cat(seen[name, "f"])
        dims = [d for d in range(qa.dim()) if d != 1]
        out[name] = float(((qa - fa).mean(dims).abs() / fa.pow(2).mean(dims).sqrt()).max())
    return out


def test_bias_correction_removes_the_mean_error_of_every_int8_layer():
    model = _model()
    calib = [_images(16, s) for s in range(3)]
    plain = quantize_static(model, calib)
    corrected = quantize_static(model, calib, bias_correction=True)
    float_model = prepare_for_deploy(model)
    before, after = _mean_errors(plain, float_model, calib), _mean_errors(corrected, float_model, calib)
    assert before.keys() == after.keys() and len(before) >= 10
    # on the calibration images every layer is unbiased once the layers before it are
    assert max(after.values()) < 1e-4, max(after.items(), key=lambda kv: kv[1])
    assert max(before.values()) > 100 * max(after.values())
    held = [_images(32, 50 + s) for s in range(2)]          # and on other images the mean error shrinks
    assert sum(_mean_errors(corrected, float_model, held).values()) < 0.5 * sum(
        _mean_errors(plain, float_model, held).values())
    names = [n for n, _ in plain.named_modules()]
    assert names == [n for n, _ in corrected.named_modules()]  # only biases moved
    with pytest.raises(QuantizationError, match="calibration set is empty"):
        correct_bias(plain, float_model, [])


def test_sensitivity_quantizes_one_unit_at_a_time_and_ranks_them():
    model = _model()
    calib, held = [_images(16, s) for s in range(2)], [_images(32, 60)]
    units = ["stages.0.0", "stages.2.1", "stages.2.1.se", "classifier"]
    rows = sensitivity(model, calib, held, units=units)
    assert sorted(r["unit"] for r in rows) == sorted(units)
    assert [r["logit_sqnr_db"] for r in rows] == sorted(r["logit_sqnr_db"] for r in rows)  # most harmful first
    by = {r["unit"]: r for r in rows}
    assert by["stages.2.1"]["ops"] == ["function"]                        # the residual add alone
    assert "Hardsigmoid" in by["stages.2.1.se"]["ops"] and "function" in by["stages.2.1.se"]["ops"]
    full = quantize_static(model, calib)
    x = held[0]
    with torch.no_grad():
        ref, q = model(x), full(x)
    full_sqnr = float(10 * torch.log10(ref.pow(2).sum() / (ref - q).pow(2).sum()))
    # one unit in int8 loses less than all of them, and a lone residual add (requantizing one
    # sum) less than the stem conv + hardswish on raw images
    assert all(r["logit_sqnr_db"] > full_sqnr for r in rows), (full_sqnr, rows)
    assert by["stages.2.1"]["logit_sqnr_db"] > full_sqnr + 6
    without = sensitivity(model, calib, held, mode="without", units=["classifier"])
    assert without[0]["unit"] == "classifier" and "agreement_gain" in without[0]
    with pytest.raises(QuantizationError, match="'stages.9' is not a quantization unit"):
        sensitivity(model, calib, held, units=["stages.9"])
    with pytest.raises(QuantizationError, match="sensitivity: mode"):
        sensitivity(model, calib, held, mode="sometimes")


def test_qat_with_7_bit_weights_converts_to_what_it_trained():
    """Weights that grow past the frozen fake-quant range after the observers froze are clamped
    in QAT (to -63..63 with 7-bit weights); convert_fx only clamps to qint8's -128..127, so
    convert_qat clamps them: the int8 model computes what the QAT model did."""
    from fbnet_zoo.quantize import convert_qat, freeze_qat_bn_stats, freeze_qat_observers, prepare_qat

    qat = prepare_qat(_model(), example=_images(1, 0), reduce_range="weights")
    with torch.no_grad():
        for s in range(3):
            qat(_images(16, s))
        freeze_qat_observers(qat)
        freeze_qat_bn_stats(qat)
        for m in qat.modules():             # a training step after the freeze: weights outgrow the range
            if hasattr(m, "weight_fake_quant"):
                m.weight.mul_(1.3)
    qat.eval()
    q = convert_qat(qat)
    from fbnet_zoo.quantize import _quantized_linear_layers

    ints = [layer.weight().int_repr() for _, layer in _quantized_linear_layers(q)]
    assert ints and all(int(w.max()) <= 63 and int(w.min()) >= -63 for w in ints)
    assert any(int(w.abs().max()) == 63 for w in ints)
    x = _images(64, 70)
    with torch.no_grad():
        want, got = qat(x), q(x)
    sqnr = float(10 * torch.log10(want.pow(2).sum() / (want - got).pow(2).sum()))
    assert sqnr > 25, f"int8 is not what QAT computed (SQNR {sqnr:.1f} dB; ~10 without the clamp)"


def _affine_error(x, scale, zero_point, qmin=0, qmax=255):
    """Mean squared error of quantizing ``x`` with (scale, zero_point), PyTorch's arithmetic."""
    q = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), qmin, qmax)
    return float((q - x).pow(2).mean())


def test_mse_activation_ranges_are_the_least_squared_error_ranges():
    from torch.ao.quantization import HistogramObserver, MinMaxObserver
    from fbnet_zoo.quantize import MSEHistogramObserver

    g = torch.Generator().manual_seed(0)
    # hardswish-like activations: a heavy positive tail, a bounded negative side, a few outliers
    u = torch.rand(20000, generator=g) - 0.5
    body = 0.3 - 0.4 * u.sign() * torch.log1p(-2 * u.abs())            # Laplace(0.3, 0.4)
    x = torch.cat([body.clamp_min(-0.375), torch.tensor([6.0, 9.0, 12.0])])
    errors = {}
    for name, cls in (("mse", MSEHistogramObserver), ("histogram", HistogramObserver), ("minmax", MinMaxObserver)):
        obs = cls(reduce_range=False)
        for chunk in x.split(4096):
            obs(chunk)
        errors[name] = _affine_error(x, *obs.calculate_qparams())
    # brute force on the raw values (not the histogram): the best of a fine grid of ranges
    best = min(_affine_error(x, (hi + 0.375) / 255, round(0.375 / ((hi + 0.375) / 255)))
               for hi in torch.linspace(0.5, 12.0, 400).tolist())
    assert errors["mse"] <= 1.02 * best, (errors, best)
    # PyTorch's greedy search stops early here (~10% more error), min / max keeps the outliers
    assert errors["mse"] < 0.95 * errors["histogram"] and errors["mse"] < 0.95 * errors["minmax"], errors


def test_mse_weight_ranges_clip_per_channel_within_7_bits():
    from torch.ao.quantization import PerChannelMinMaxObserver
    from fbnet_zoo.quantize import MSEPerChannelWeightObserver

    w = torch.randn(16, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    w[::2, 0, 0, 0] = 8.0                                   # one far outlier in every other channel
    kw = dict(dtype=torch.qint8, qscheme=torch.per_channel_symmetric, reduce_range=True)
    per_channel = {}
    for name, cls in (("mse", MSEPerChannelWeightObserver), ("minmax", PerChannelMinMaxObserver)):
        obs = cls(**kw)
        obs(w)
        obs(w)                                              # observing again does not shrink further
        scale, zero_point = obs.calculate_qparams()
        assert (obs.quant_min, obs.quant_max) == (-64, 63)                      # 7 bits
        q = torch.fake_quantize_per_channel_affine(w, scale, zero_point.int(), 0, -64, 63)
        per_channel[name] = (q - w).pow(2).flatten(1).mean(1)
    assert bool((per_channel["mse"] <= per_channel["minmax"] * (1 + 1e-6)).all())
    ratio = per_channel["mse"] / per_channel["minmax"]
    assert bool((ratio[::2] > 1 - 1e-6).all())              # clipping a far outlier to 7 bits costs more: kept
    assert int((ratio[1::2] < 0.97).sum()) >= 4, ratio      # Gaussian channels: clipped, less error


def test_quantize_static_mse_ranges_option():
    from fbnet_zoo.quantize import _quantized_linear_layers

    model = _model()
    calib, held = [_images(16, s) for s in range(2)], _images(64, 80)
    plain = quantize_static(model, calib, reduce_range="weights")
    mse = quantize_static(model, calib, reduce_range="weights", ranges="mse")
    scales = {n: layer.weight().q_per_channel_scales() for n, layer in _quantized_linear_layers(plain)}
    clipped = 0
    for name, layer in _quantized_linear_layers(mse):
        w = layer.weight()
        # clipped weights clamp to 7 bits (convert_fx alone would store them up to 127: saturation)
        assert int(w.int_repr().min()) >= -64 and int(w.int_repr().max()) <= 63, name
        assert bool((w.q_per_channel_scales() <= scales[name] * (1 + 1e-6)).all()), name
        clipped += int((w.q_per_channel_scales() < scales[name] * 0.999).sum())
    assert clipped > 0
    with torch.no_grad():
        ref, out = model(held), mse(held)
    # a working int8 model (per-tensor least error is no promise of a better output: on this
    # random tiny model the histogram ranges give more logit SQNR, on the trained one less)
    assert float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())) > 20
    with pytest.raises(QuantizationError, match=r"quantize_static: ranges: 'minmax' is not one of \['histogram', 'mse'\]"):
        quantize_static(model, calib, ranges="minmax")


def test_reconstruct_learns_the_rounding_of_7_bit_weights_and_lowers_the_int8_error():
    """Block-wise reconstruction (AdaRound-style rounding, QDrop, on the calibration images) keeps
    every weight on the grid plain PTQ chose (same per-channel scales, each integer rounded down
    or up from the float weight: at most one step from plain PTQ's) within 7 bits (|w| <= 64:
    exact on AVX2), the same int8 modules, and brings the int8 logits closer to fp32's."""
    from fbnet_zoo.quantize import _quantized_linear_layers, _sqnr

    model = _model()
    calib, held = [_images(8, s) for s in range(2)], _images(48, 80)
    plain = quantize_static(model, calib)
    rebuilt = quantize_static(model, calib, reconstruct=12)
    assert [(n, type(m).__name__) for n, m in plain.named_modules()] == [
        (n, type(m).__name__) for n, m in rebuilt.named_modules()]
    grid = dict(_quantized_linear_layers(plain))
    moved = 0
    for name, layer in _quantized_linear_layers(rebuilt):
        w, w0 = layer.weight(), grid[name].weight()
        assert torch.equal(w.q_per_channel_scales(), w0.q_per_channel_scales()), name
        ints, ints0 = w.int_repr().int(), w0.int_repr().int()
        assert int(ints.min()) >= -64 and int(ints.max()) <= 64, name
        assert int((ints - ints0).abs().max()) <= 1, name
        moved += int((ints != ints0).sum())
    assert moved > 0
    with torch.no_grad():
        ref, before, after = model(held), plain(held), rebuilt(held)
    assert _sqnr(ref, after) > _sqnr(ref, before) + 1.0, (_sqnr(ref, before), _sqnr(ref, after))
    with pytest.raises(QuantizationError, match=r"quantize_static: reconstruct: -1 is below the minimum 0"):
        quantize_static(model, calib, reconstruct=-1)
    with pytest.raises(QuantizationError, match=r"quantize_static: reconstruct: .*2\.0.* is not an integer >= 0"):
        quantize_static(model, calib, reconstruct=2.0)
