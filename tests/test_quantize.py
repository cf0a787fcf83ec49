"""int8: post-training static quantization, QAT (prepare -> a few real optimisation steps ->
convert), the int8 TorchScript export and the export CLI's int8 format. Tiny arch: the
speed and agreement figures of the zoo models are benchmarks/int8_latency.py's job."""

import copy
import os

import pytest
import torch
from torch import nn

import fbnet_zoo
from fbnet_zoo.quantize import (QATSchedule, QuantizationError, SamePaddedQuantizedConv, convert_qat,
                                export_int8_torchscript, prepare_qat, quantize_static, same_pad_depthwise,
                                top1_agreement)
from test_deploy import TINY, _model, _saved_tiny, _tool


def _images(n, seed):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _int8_modules(model):
    return [m for m in model.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]


def test_post_training_quantization_gives_an_int8_model_close_to_fp32():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = [_images(8, s) for s in range(4)]
    q = quantize_static(model, calib)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())      # the input is untouched
    kinds = {type(m).__name__ for m in _int8_modules(q)}
    assert {"Conv2d", "Linear", "Hardswish"} <= kinds or {"ConvReLU2d", "Linear", "Hardswish"} <= kinds, kinds
    convs = [m for m in q.modules() if type(m).__name__ in ("Conv2d", "ConvReLU2d")
             and type(m).__module__.startswith("torch.ao.nn")]
    float_convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(float_convs)                                   # every conv runs in int8
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    x = _images(64, 100)
    with torch.no_grad():
        ref, got = model(x), q(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (ref - got).pow(2).sum())
    assert sqnr > 15, f"int8 logits too far from fp32 (SQNR {sqnr:.1f} dB)"
    agree, n = top1_agreement(model, q, [x])
    assert n == 64 and agree >= 0.8
    with pytest.raises(QuantizationError, match="calibration set is empty"):
        quantize_static(model, [])
    with pytest.raises(QuantizationError, match="backend: 'tpu' is not one of"):
        quantize_static(model, calib, backend="tpu")


def test_post_training_quantization_can_keep_named_layers_in_fp32():
    model = _model()
    q = quantize_static(model, [_images(8, s) for s in range(2)], keep_float=("stages.0", "classifier"))
    assert isinstance(q.get_submodule("stages.0.0.conv"), nn.Conv2d)                # float conv (BN folded)
    assert isinstance(q.get_submodule("classifier.fc"), nn.Linear)
    assert type(q.get_submodule("stages.1.0.dw.conv")).__module__.startswith("torch.ao.nn.quantized")
    x = _images(16, 7)
    with torch.no_grad():
        assert _sqnr(model(x), q(x)) > 15
    with pytest.raises(QuantizationError, match="keep_float: 'stem' is not a submodule"):
        quantize_static(model, [_images(8, 0)], keep_float=("stem",))


def test_int8_torchscript_export_round_trips(tmp_path):
    model = _model()
    q = quantize_static(model, [_images(8, s) for s in range(2)])
    path = tmp_path / "tiny_int8.ts"
    export_int8_torchscript(q, str(path), example=_images(1, 5))
    loaded = torch.jit.load(str(path))
    for n, size in ((1, 32), (3, 48)):
        x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            assert torch.allclose(loaded(x), q(x), rtol=0, atol=1e-5)
    graph = str(loaded.inlined_graph)
    assert "quantized::conv2d" in graph and "quantized::linear" in graph and "aten::conv2d" not in graph


def test_quantization_aware_training_steps_then_converts_to_int8():
    torch.manual_seed(0)
    model = _model()
    qat = prepare_qat(model)
    assert qat.training and any("FakeQuantize" in type(m).__name__ for m in qat.modules())
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(10, 3, 32, 32, generator=g)                    # a learnable 10-class task
    y = torch.arange(64) % 10
    x = templates[y] + 0.5 * torch.randn(64, 3, 32, 32, generator=g)
    opt = torch.optim.SGD(qat.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(12):                                                  # real optimisation steps
        opt.zero_grad()
        loss = nn.functional.cross_entropy(qat(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    schedule = QATSchedule(qat, freeze_bn=1, freeze_observers=2)
    schedule(0, None)                                                       # after epoch 1: BN stats frozen
    bn = next(m for m in qat.modules() if hasattr(m, "freeze_bn"))
    assert bn.freeze_bn
    fq = next(m for m in qat.modules() if "FakeQuantize" in type(m).__name__)
    assert fq.observer_enabled[0] == 1
    schedule(1, None)
    assert fq.observer_enabled[0] == 0
    q = convert_qat(qat)
    assert _int8_modules(q) and not q.training
    with torch.no_grad():
        qat.eval()
        want, got = qat(x), q(x)
    sqnr = 10 * torch.log10(want.pow(2).sum() / (want - got).pow(2).sum())
    assert sqnr > 15, f"int8 is not what QAT simulated (SQNR {sqnr:.1f} dB)"
    with pytest.raises(QuantizationError, match="expected the model returned by prepare_qat"):
        convert_qat(model)


@pytest.fixture
def engine_restored():
    """The quantized engine is process-wide: put it back for the tests that follow."""
    engine = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = engine


def test_onednn_backend_runs_int8_kernels_without_saturating_and_exports(engine_restored):
    """PyTorch's onednn default (8-bit activations and weights) saturates int16 pair sums on
    CPUs without VNNI; ours is exact wherever it runs: the int8 model stays as close to fp32
    as fbgemm's, and its TorchScript export computes the same."""
    model = _model()
    calib = [_images(8, s) for s in range(2)]
    x = _images(32, 11)
    with torch.no_grad():
        ref = model(x)
        got = {b: quantize_static(model, calib, backend=b) for b in ("fbgemm", "onednn")}
        assert torch.backends.quantized.engine == "onednn"
        outs = {b: q(x) for b, q in got.items()}
        ts = export_int8_torchscript(got["onednn"], None, example=x[:1])
        assert torch.allclose(ts(x), outs["onednn"], rtol=0, atol=1e-5)
    sqnr = {b: float(10 * torch.log10(ref.pow(2).sum() / (ref - o).pow(2).sum())) for b, o in outs.items()}
    assert sqnr["onednn"] > 15 and sqnr["onednn"] > sqnr["fbgemm"] - 3, sqnr
    assert "quantized::conv2d" in str(ts.inlined_graph)


def test_every_backend_quantizes_weights_per_channel(engine_restored):
    """qnnpack included, where PyTorch's default mapping is per-tensor (less exact, and the
    depthwise convs suffer most), with 8 + 8 bits: its kernels accumulate in int32."""
    q = quantize_static(_model(), [_images(8, 0)], backend="qnnpack")
    convs = [m for m in _int8_modules(q) if hasattr(m, "weight") and callable(m.weight)]
    assert convs and all(m.weight().qscheme() == torch.per_channel_affine for m in convs)
    assert max(int(m.weight().int_repr().abs().max()) for m in convs) > 64   # 8-bit weights


def test_convert_qat_converts_for_the_backend_prepare_qat_trained_for(engine_restored):
    model = _model()
    qat = prepare_qat(model, backend="qnnpack")       # 8-bit activations and weights: qnnpack's split
    qat(_images(8, 0))
    torch.backends.quantized.engine = "x86"
    q = convert_qat(copy.deepcopy(qat))                # a copy (as the trainer's EMA is) keeps the backend
    assert torch.backends.quantized.engine == "qnnpack" and _int8_modules(q)
    with pytest.raises(QuantizationError, match="backend 'x86' differs from the 'qnnpack' that prepare_qat"):
        convert_qat(qat, backend="x86")
    convert_qat(prepare_qat(model, backend="x86"), backend="fbgemm")   # the same kernels: allowed


def test_qat_with_stochastic_depth_names_the_fix():
    model = fbnet_zoo.build_model(TINY, num_classes=10, drop_path_rate=0.2)
    with pytest.raises(QuantizationError, match="drop_path_rate=0"):
        prepare_qat(model)


def test_export_cli_int8(tmp_path, capsys):
    model, ckpt, arch, out = _saved_tiny(tmp_path)
    rc = _tool("export").main(["--arch", str(arch), "--weights", str(ckpt), "--num-classes", "10",
                               "--format", "int8", "--calibration-images", "16", "--out", str(out) + os.sep])
    assert rc == 0, capsys.readouterr().err
    path = out / "tiny_deploy_int8.ts"
    assert path.exists(), os.listdir(out)
    assert "top-1 agreement" in capsys.readouterr().out
    loaded = torch.jit.load(str(path))
    x = _images(4, 9)
    with torch.no_grad():
        assert (loaded(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.75


def test_export_cli_int8_bit_split_is_quantize_statics_reduce_range(tmp_path, capsys):
    """--bit-split reaches quantize_static: the file computes what quantize_static with that
    reduce_range gives on the same calibration images (and differs from the default split)."""
    from fbnet_zoo.quantize import quantize_static

    export = _tool("export")
    model, ckpt, arch, out = _saved_tiny(tmp_path)
    files = {}
    for split in ("activations", None):
        path = out / f"{split}.ts"
        rc = export.main(["--arch", str(arch), "--weights", str(ckpt), "--num-classes", "10", "--format", "int8",
                          "--calibration-images", "16", "--out", str(path)] + (["--bit-split", split] if split else []))
        assert rc == 0, capsys.readouterr().err
        files[split] = torch.jit.load(str(path))
    calib, _ = export.calibration_images(None, 16, model.spec.input_size, 0)
    want = quantize_static(model, [calib[i:i + 8] for i in range(0, len(calib), 8)], reduce_range="activations")
    x = _images(4, 9)
    with torch.no_grad():
        assert torch.allclose(files["activations"](x), want(x), rtol=0, atol=1e-5)
        assert not torch.allclose(files[None](x), want(x), rtol=0, atol=1e-5)
    with pytest.raises(SystemExit):
        export.main(["--arch", str(arch), "--format", "int8", "--bit-split", "both", "--out", str(out)])


def _sqnr(want, got):
    return float(10 * torch.log10(want.pow(2).sum() / (want - got).pow(2).sum()))


def test_qat_through_the_projects_trainer_converts_to_what_it_trained(tmp_path):
    """The trainer's defaults (channels_last) and EMA: both the trained model and the trainer's
    averaged copy (from the run's checkpoint) convert to int8 models that compute what their
    fake-quant forward did. (PyTorch's default QAT fake-quant does not: its per-channel weight
    scale and its reduce_range clamp both differ from the converted model's; see
    qat_qconfig_mapping. The EMA paired tensors by position, which a GraphModule reorders.)"""
    import copy

    from fbnet_zoo.training import CHECKPOINT_NAME, Recipe, TrainSettings, cached_datasets, train_model

    settings = TrainSettings(embedded_train_size=240, embedded_val_size=100, threads=1, channels_last=True)
    recipe = Recipe(optimizer="sgd", lr=0.02, batch_size=32, ema=True, ema_decay=0.9, dropout=0.0, drop_path=0.0,
                    mixup=0.0, label_smoothing=0.0, lr_decay=0.9, weight_decay=1e-5, resolution=32)
    train, val, _ = cached_datasets(settings, 32)
    qat = prepare_qat(_model(), example=torch.randn(1, 3, 32, 32))
    before = {k: v.clone() for k, v in qat.state_dict().items() if v.is_floating_point()}
    schedule = QATSchedule(qat, freeze_bn=2, freeze_observers=2)
    result = train_model(qat, recipe, 2, train, val, settings, workdir=str(tmp_path), progress=False,
                         on_epoch_end=schedule)
    assert result.status == "ok", result.error
    assert len(result.top1) == 2
    ema = copy.deepcopy(qat)
    ema.load_state_dict(torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["ema"]["module"])
    changed = [k for k, v in qat.state_dict().items() if k in before and not torch.equal(before[k], v)]
    assert any(k.endswith("weight") for k in changed)                      # the trainer's steps moved the weights
    fq = next(m for m in qat.modules() if "FakeQuantize" in type(m).__name__)
    assert fq.observer_enabled[0] == 0                                      # the schedule ran at the epoch end
    x = next(iter(torch.utils.data.DataLoader(val, batch_size=64)))[0]
    for name, trained in (("model", qat), ("ema", ema)):
        q = convert_qat(trained)
        assert _int8_modules(q)
        with torch.no_grad():
            trained.eval()
            want, got = trained(x), q(x)
        assert got.shape == (64, 10)
        assert _sqnr(want, got) > 15, f"{name}: int8 is not what QAT trained (SQNR {_sqnr(want, got):.1f} dB)"
    assert any(not torch.equal(v, ema.state_dict()[k]) for k, v in qat.state_dict().items() if k.endswith("weight"))
    ema_scales = {k: v for k, v in ema.state_dict().items() if k.endswith(".scale")}
    bad = [(k, v, qat.state_dict()[k]) for k, v in ema_scales.items() if not torch.equal(v, qat.state_dict()[k])]
    assert not bad, bad[:2]  # ranges copied, not averaged


def test_same_padded_depthwise_conv_is_the_same_integer_conv():
    from torch.ao.nn import quantized as nnq

    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else "qnnpack"
    g = torch.Generator().manual_seed(0)
    for k, p, stride, size in ((5, 1, 2, 40), (3, 0, 2, 19), (5, 0, 1, 13), (3, 1, 2, 7)):
        conv = nnq.Conv2d(16, 16, k, stride=stride, padding=p, groups=16)
        w = torch.quantize_per_channel(torch.randn(16, 1, k, k, generator=g), torch.rand(16, generator=g) * 0.02 + 0.01,
                                       torch.zeros(16, dtype=torch.long), 0, torch.qint8)
        conv.set_weight_bias(w, torch.randn(16, generator=g))
        conv.scale, conv.zero_point = 0.07, 60
        graph = torch.nn.Sequential(conv)
        assert same_pad_depthwise(graph) == (p != k // 2)
        x = torch.quantize_per_tensor(torch.randn(2, 16, size, size + 3, generator=g), 0.05, 64, torch.quint8)
        want, got = conv(x), graph(x)
        assert got.shape == want.shape, (k, p, stride)
        assert torch.equal(got.int_repr(), want.int_repr()), (k, p, stride)


def test_zoo_models_under_padded_stride_2_depthwise_convs_get_the_fast_kernel_with_the_same_outputs():
    # FBNetV3-A pads its stride-2 5x5 by 1 and 3x3 by 0: fbgemm's depthwise kernel wants k // 2
    model = fbnet_zoo.build_model("FBNetV3-A", num_classes=10).eval()
    under = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1
             and m.padding[0] < m.kernel_size[0] // 2]
    assert len(under) == 2
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    q = quantize_static(model, [x], example=x[:1])
    assert len([m for m in q.modules() if isinstance(m, SamePaddedQuantizedConv)]) == len(under)
    plain = copy.deepcopy(q)
    for name, m in list(plain.named_modules()):
        if isinstance(m, SamePaddedQuantizedConv):
            parent, _, attr = name.rpartition(".")
            orig = type(m.conv)(m.conv.in_channels, m.conv.out_channels, m.kernel, stride=m.stride, padding=m.padding,
                                groups=m.conv.groups)
            orig.set_weight_bias(m.conv.weight(), m.conv.bias())
            orig.scale, orig.zero_point = m.conv.scale, m.conv.zero_point
            setattr(plain.get_submodule(parent), attr, orig)
    assert torch.equal(q(x), plain(x))


def test_a_resumed_qat_run_keeps_the_schedules_freezes_and_ends_where_an_uninterrupted_one_does(tmp_path):
    """BN statistics frozen by ``QATSchedule`` are not in the epoch checkpoint (a module flag):
    the trainer hands the resumed epoch count to the schedule, which freezes again, so a QAT run
    killed after the freeze and resumed trains what an uninterrupted run trains, bit for bit."""
    from fbnet_zoo.training import Recipe, TrainSettings, cached_datasets, train_model

    settings = TrainSettings(embedded_train_size=96, embedded_val_size=32, threads=1)
    recipe = Recipe(optimizer="sgd", lr=0.02, batch_size=32, ema=False, dropout=0.0, drop_path=0.0, mixup=0.0,
                    label_smoothing=0.0, lr_decay=0.9, weight_decay=0.0, resolution=32)
    train, val, _ = cached_datasets(settings, 32)

    class KilledAfter(QATSchedule):
        def __init__(self, model, stop_after):
            super().__init__(model, freeze_bn=1)
            self.stop_after = stop_after

        def __call__(self, epoch, result=None):
            super().__call__(epoch, result)
            if epoch + 1 == self.stop_after:
                raise KeyboardInterrupt  # killed after the epoch's checkpoint

    def run(workdir, stop_after=None):
        torch.manual_seed(0)
        qat = prepare_qat(_model(), example=torch.randn(1, 3, 32, 32))
        try:
            train_model(qat, recipe, 3, train, val, settings, workdir=str(workdir), progress=False,
                        on_epoch_end=KilledAfter(qat, stop_after))
        except KeyboardInterrupt:
            return None
        return qat.state_dict()

    whole = run(tmp_path / "whole")
    assert run(tmp_path / "killed", stop_after=1) is None
    resumed = run(tmp_path / "killed")
    differ = [k for k, v in whole.items() if not torch.equal(v, resumed[k])]
    assert not differ, differ[:4]
