"""Quantization-aware training distilled from the fp32 model (fbnet_zoo.training.qat,
``tools/train.py --qat``) and the QAT global pool that computes what int8's does. Tiny models;
the agreement on the benchmark's trained model is benchmarks/int8_latency.py's job."""

import importlib.util
import json
import os

import pytest
import torch

import fbnet_zoo
from fbnet_zoo.quantize import (QuantizationError, _quantized_linear_layers, _sqnr, calibrate_qat, convert_qat, freeze_qat_bn_stats, freeze_qat_observers, prepare_qat,
                                quantize_static, top1_agreement)
import fbnet_zoo.quantize as quantize
from fbnet_zoo.training import Recipe, TrainConfigError, TrainSettings, cached_datasets, train_model
from fbnet_zoo.training.final import save_final_checkpoint
from fbnet_zoo.training.qat import DISTILL_QAT_RECIPE, INT8_NAME, QAT_RESULT_NAME, distill_qat, qat_final

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "train.py")
TINY = {"name": "tiny-se", "input_size": 16, "stages": [
    [{"type": "conv", "out_channels": 8, "stride": 1, "act": "hswish"}],
    [{"type": "ir", "out_channels": 16, "stride": 2, "expansion": 3, "act": "hswish", "se": True}],
    [{"type": "ir", "out_channels": 16, "expansion": 3, "act": "hswish", "se": True}],
    [{"type": "ir_pool", "out_channels": 32, "expansion": 4, "act": "hswish"}]]}
TINY_YAML = """\
name: tiny-se
input_size: 16
stages:
- [{type: conv, out_channels: 8, stride: 1, act: hswish}]
- [{type: ir, out_channels: 16, stride: 2, expansion: 3, act: hswish, se: true}]
- [{type: ir_pool, out_channels: 32, expansion: 4, act: hswish}]
"""
RES = 16


def _tiny(seed=0):
    torch.manual_seed(seed)
    return fbnet_zoo.build_model(TINY, num_classes=10, drop_path_rate=0.0).eval()


def _data(n_train, seed=0):
    settings = TrainSettings(embedded_train_size=n_train, embedded_val_size=200, seed=seed, device="cpu",
                             augment=False, threads=1, checkpoint=False)
    train, val, _ = cached_datasets(settings, RES)
    return settings, train, val


def _held(n=600):
    _, _, val = _data(1200)
    return torch.stack([val[i][0] for i in range(min(n, len(val)))])


@pytest.fixture(scope="module")
def trained():
    """The tiny SE model trained on 1200 embedded images (the fp32 reference)."""
    settings, train, val = _data(1200)
    model = _tiny()
    recipe = Recipe(optimizer="sgd", lr=0.05, batch_size=32, ema=False, dropout=0.0, drop_path=0.0, mixup=0.0,
                    label_smoothing=0.1, warmup_epochs=0, lr_decay=0.8, weight_decay=4e-5, resolution=RES)
    result = train_model(model, recipe, 3, train, val, settings, progress=False)
    assert result.status == "ok", result.error
    return model.eval().to(memory_format=torch.contiguous_format)


def _calibrated(model, x):
    qat = prepare_qat(model, example=x[:1], reduce_range="weights").eval()
    with torch.no_grad():
        qat(x)
    freeze_qat_observers(qat)
    freeze_qat_bn_stats(qat)
    return qat


def test_qat_global_pools_compute_what_int8_does_and_do_not_narrow_the_range(monkeypatch):
    model = _tiny()
    x = torch.randn(64, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    qat = prepare_qat(model, example=x[:1], reduce_range="weights").eval()
    fake_quant = qat.get_submodule("stages.1.0.se.pool").fake_quant[0]  # the pool's input quantizer
    seen = []
    fake_quant.register_forward_pre_hook(lambda m, args: seen.append(float(args[0].max())))
    with torch.no_grad():
        qat(x)
    # FX shares one quantizer between the pool's input and output; it used to observe the pooled
    # values too, pulling the range in. One calibration batch: the range is the pool input's.
    assert len(seen) == 1
    assert float(fake_quant.activation_post_process.max_val) == seen[0]
    freeze_qat_observers(qat)
    with torch.no_grad():
        exact = _sqnr(qat(x), convert_qat(qat)(x))
    # without the int8 pool arithmetic: PyTorch's float pool (and the shared, twice-observing quantizer)
    monkeypatch.setattr(quantize, "_int8_global_pools", lambda prepared: None)
    plain = prepare_qat(model, example=x[:1], reduce_range="weights").eval()
    with torch.no_grad():
        plain(x)
    freeze_qat_observers(plain)
    with torch.no_grad():
        float_pool = _sqnr(plain(x), convert_qat(plain)(x))
    assert exact > float_pool + 6, (exact, float_pool)  # measured: 51.9 vs 38.8 dB


def test_calibrate_qat_sets_the_ranges_post_training_quantization_chooses():
    model = _tiny()
    x = torch.randn(64, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    calib = [x[:32], (x[32:], None)]
    ptq = dict(_quantized_linear_layers(quantize_static(model, [x[:32], x[32:]], example=x[:1])))
    import math

    def distance(ranges):  # mean |log| ratio of the int8 convs' output scales to PTQ's
        qat = prepare_qat(model, example=x[:1])
        assert calibrate_qat(qat, calib, ranges) == 64
        assert qat.training  # left as it was
        freeze_qat_observers(qat)
        int8 = dict(_quantized_linear_layers(convert_qat(qat)))
        return sum(abs(math.log(float(int8[n].scale) / float(ptq[n].scale))) for n in ptq) / len(ptq)

    # PTQ observes the fp32 model, QAT its fake-quant weights: close, not equal
    hist, minmax = distance("histogram"), distance("minmax")
    assert hist < 0.04 and hist < minmax / 1.5, (hist, minmax)
    fresh = prepare_qat(model, example=x[:1])
    with pytest.raises(QuantizationError, match="ranges"):
        calibrate_qat(fresh, calib, "percentile")
    with pytest.raises(QuantizationError, match="empty"):
        calibrate_qat(fresh, [], "histogram")


def test_distilled_qat_agrees_with_fp32_more_than_label_qat_and_ptq(trained):
    held = _held()
    settings, train, val = _data(1200)
    calib = [torch.stack([train[i][0] for i in range(128)])]
    ptq = quantize_static(trained, calib, example=held[:1])
    recipe = DISTILL_QAT_RECIPE.replace(resolution=RES, batch_size=32)
    out = distill_qat(trained, recipe, 2, train, val, settings, calibration=calib, freeze_observers=0,
                      progress=False, example=held[:1])
    # label QAT: the same start, schedule and steps, cross-entropy on the labels instead
    # (measured: distilled 0.90, labels 0.645, PTQ 0.87 on these 200 images)
    labels = distill_qat(trained, recipe.replace(distill_weight=1e-9), 2, train, val, settings, calibration=calib,
                         freeze_observers=0, progress=False, example=held[:1])
    agree = {name: top1_agreement(trained, q, [held])[0] for name, q in
             (("distilled", out.int8), ("labels", labels.int8), ("ptq", ptq))}
    assert agree["distilled"] > agree["labels"] + 0.01, agree
    assert agree["distilled"] >= agree["ptq"], agree
    with torch.no_grad():  # the int8 model computes what the trained fake-quant model did
        assert _sqnr(out.qat(held), out.int8(held)) > 30


def test_distill_qat_refuses_what_it_cannot_do(trained):
    settings, train, val = _data(1200)
    with pytest.raises(TrainConfigError, match="train.teacher"):
        distill_qat(trained, DISTILL_QAT_RECIPE, 1, train, val, settings.replace(teacher="FBNetV3-B"))
    with pytest.raises(TrainConfigError, match="distill_weight"):
        distill_qat(trained, DISTILL_QAT_RECIPE.replace(distill_weight=0.0), 1, train, val, settings)
    with pytest.raises(TrainConfigError, match="freeze_observers=0"):
        distill_qat(trained, DISTILL_QAT_RECIPE, 1, train, val, settings, freeze_observers=0)
    with pytest.raises(TrainConfigError, match="freeze_bn"):
        distill_qat(trained, DISTILL_QAT_RECIPE, 1, train, val, settings, freeze_bn=-1)


def _tool():
    spec = importlib.util.spec_from_file_location("train_tool", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat_cli")
    (root / "tiny.yaml").write_text(TINY_YAML)
    model = fbnet_zoo.build_model(str(root / "tiny.yaml"), num_classes=10)
    spec = fbnet_zoo.load_spec(str(root / "tiny.yaml"))
    save_final_checkpoint(str(root / "fp32.pth"), model.state_dict(), spec, 10, {})
    return root


SMALL = ["--set", "train.embedded_train_size=96", "--set", "train.embedded_val_size=32", "--set",
         "recipe.resolution=16", "--set", "recipe.batch_size=32", "--set", "train.threads=1"]


def test_train_cli_qat_writes_an_int8_torchscript_of_the_weights(tiny_arch, capsys):
    workdir = tiny_arch / "run"
    rc = _tool().main([str(tiny_arch / "tiny.yaml"), "--qat", "--weights", str(tiny_arch / "fp32.pth"),
                       "--workdir", str(workdir), "--epochs", "1", "--calibration-images", "32", "--no-progress",
                       *SMALL])
    assert rc == 0, capsys.readouterr().err
    assert "int8 agrees with fp32" in capsys.readouterr().out
    ts = torch.jit.load(str(workdir / INT8_NAME))
    assert any(n.kind() == "quantized::conv2d" for n in ts.inlined_graph.nodes())
    summary = json.loads((workdir / QAT_RESULT_NAME).read_text())
    assert 0.0 <= summary["top1_agreement_int8_vs_fp32"] <= 1.0 and summary["validation_images"] == 32
    assert summary["recipe"]["distill_weight"] == 1.0
    fp32 = fbnet_zoo.build_model(str(tiny_arch / "tiny.yaml"), num_classes=10,
                                 pretrained=str(tiny_arch / "fp32.pth")).eval()
    x = torch.randn(8, 3, RES, RES, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _sqnr(fp32(x), ts(x)) > 10  # the int8 model is that fp32 model's, not another


@pytest.mark.parametrize("flags, message", [
    (["--qat"], "--qat needs --weights"),
    (["--weights", "w.pth"], "--weights: only with --qat"),
    (["--bit-split", "weights"], "--bit-split: only with --qat"),
    (["--qat", "--weights", "w.pth", "--teacher", "FBNetV3-G"], "--teacher: not with --qat"),
    (["--qat", "--weights", "w.pth", "--no-teacher"], "--no-teacher: not with --qat"),
    (["--qat", "--weights", "W", "--calibration-images", "0"], "calibration_images: 0 is below the minimum 1"),
])
def test_train_cli_refuses_meaningless_qat_flags(tiny_arch, capsys, flags, message):
    flags = [f.replace("W", str(tiny_arch / "fp32.pth")) if f == "W" else f for f in flags]
    rc = _tool().main([str(tiny_arch / "tiny.yaml"), "--workdir", str(tiny_arch / "bad"), "--no-progress",
                       *SMALL, *flags])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_qat_final_calibrates_on_training_images_without_augmentation(tiny_arch):
    """The ranges ``tools/train.py --qat`` freezes are the ones PTQ's calibration on the first
    training images, as the model sees them at test time, chooses (not random crops / flips)."""
    from torch.utils.data import DataLoader, Subset

    from fbnet_zoo.training import build_datasets

    settings = TrainSettings(embedded_train_size=96, embedded_val_size=32, threads=1, device="cpu")
    assert settings.augment  # the training set itself is augmented
    recipe = DISTILL_QAT_RECIPE.replace(resolution=RES, batch_size=32)
    out, _, _ = qat_final(str(tiny_arch / "tiny.yaml"), str(tiny_arch / "fp32.pth"), recipe, settings,
                          str(tiny_arch / "calibrated"), 1, calibration_images=32, progress=False)
    fp32 = fbnet_zoo.build_model(str(tiny_arch / "tiny.yaml"), num_classes=10,
                                 pretrained=str(tiny_arch / "fp32.pth")).eval()
    plain = build_datasets(settings.replace(augment=False), RES)[0]
    want = prepare_qat(fp32, example=torch.zeros(1, 3, RES, RES))
    calibrate_qat(want, DataLoader(Subset(plain, range(32)), batch_size=32))
    scales = {k: v for k, v in want.state_dict().items() if k.endswith(".scale") and "weight_fake_quant" not in k}
    got = out.qat.state_dict()
    assert scales
    differ = [k for k, v in scales.items() if not torch.equal(v, got[k])]
    assert not differ, differ[:3]
