"""Deployment: BN folding is exact (1e-5), channels_last changes nothing, TorchScript and
ONNX exports reproduce eager (onnxruntime within 1e-4, other batch sizes and resolutions),
and the export / convert CLIs work end to end. Tiny arch to keep it fast."""

import importlib.util
import os

import pytest
import torch
from torch import nn

import fbnet_zoo
from conftest import randomize_bn
from fbnet_zoo.deploy import DeployError, check_onnx, export_onnx, export_torchscript, fold_bn, prepare_for_deploy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"name": "Tiny-Deploy", "input_size": 40, "stages": [
    [{"type": "conv", "out_channels": 8, "stride": 2, "kernel": 3, "act": "hswish", "bias": True}],
    [{"type": "ir", "out_channels": 8, "expansion": 1, "kernel": 3}],
    [{"type": "ir", "out_channels": 16, "stride": 2, "expansion": 4, "kernel": 5, "se": True},
     {"type": "ir", "out_channels": 16, "repeats": 2, "expansion": 3, "se": True, "act": "relu"}],
    [{"type": "ir", "out_channels": 24, "stride": 2, "expansion": 4, "kernel": 3, "dw_padding": [0, 0]}],
    [{"type": "ir_pool", "out_channels": 64, "expansion": 6}]]}


def _model(num_classes=10, seed=0):
    torch.manual_seed(seed)
    model = fbnet_zoo.build_model(TINY, num_classes=num_classes)
    randomize_bn(model, seed)
    with torch.no_grad():
        model.classifier.fc.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    return model.eval()


def _x(n=2, size=40, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_fold_bn_is_exact_and_removes_every_batchnorm():
    model = _model()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_bn(model)
    assert folded.folded_bn == n_bn and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())          # the original is untouched
    for size in (40, 57):
        x = _x(size=size)
        with torch.no_grad():
            want, got = model(x), folded(x)
        assert want.abs().max() > 1e-2                                         # a real signal, not ~0
        assert torch.allclose(got, want, rtol=0, atol=1e-5), (got - want).abs().max()


def test_channels_last_lean_deploy_model_matches():
    model = _model()
    fast = prepare_for_deploy(model, channels_last=True)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Identity)) for m in fast.modules())
    assert set(fast.state_dict()) <= {k for k in model.state_dict() if ".bn." not in k} | {
        k.replace(".weight", ".bias") for k in model.state_dict() if k.endswith("conv.weight")}
    x = _x().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), rtol=0, atol=1e-5)
    ts = torch.jit.script(fast)                                               # lean models still script
    with torch.no_grad():
        assert torch.allclose(ts(x), model(x), rtol=0, atol=1e-5)


def test_torchscript_export_round_trips_at_other_sizes(tmp_path):
    model = _model()
    path = tmp_path / "tiny.ts"
    export_torchscript(model, str(path), example=_x())
    loaded = torch.jit.load(str(path))
    for n, size in ((1, 40), (3, 64)):
        x = _x(n, size)
        with torch.no_grad():
            assert torch.allclose(loaded(x), model(x), rtol=0, atol=1e-5)
    traced = export_torchscript(model, None, method="trace", freeze=False, example=_x())
    with torch.no_grad():
        assert torch.allclose(traced(_x()), model(_x()), rtol=0, atol=1e-5)
    with pytest.raises(DeployError, match="method 'compile' is not one of"):
        export_torchscript(model, None, method="compile")


def test_onnx_export_matches_eager_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX outputs are checked with onnxruntime")
    model = _model()
    path = tmp_path / "tiny.onnx"
    export_onnx(model, str(path), dynamic=("batch", "height", "width"))
    assert path.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    for n, size in ((1, 40), (4, 72)):
        diff = check_onnx(str(path), model, _x(n, size))
        assert diff <= 1e-4
    with pytest.raises(DeployError, match="dynamic axis 'time'"):
        export_onnx(model, str(tmp_path / "x.onnx"), dynamic=("time",))


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _saved_tiny(tmp_path):
    """(model, its checkpoint, its arch YAML, an output folder) for the CLI tests."""
    model = _model()
    ckpt = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), ckpt)
    arch = tmp_path / "tiny.yaml"
    fbnet_zoo.load_spec(TINY).save_yaml(str(arch))
    return model, ckpt, arch, tmp_path / "exported"


def test_export_cli_writes_checked_files(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="ONNX outputs are checked with onnxruntime")
    model, ckpt, arch, out = _saved_tiny(tmp_path)
    rc = _tool("export").main(["--arch", str(arch), "--weights", str(ckpt), "--num-classes", "10",
                               "--format", "both", "--out", str(out), "--input-size", "48"])
    assert rc == 0
    ts, onnx_path = out / "tiny_deploy.ts", out / "tiny_deploy.onnx"
    assert ts.exists() and onnx_path.exists()
    assert check_onnx(str(onnx_path), model, _x(1, 48)) <= 1e-4
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(ts))(_x()), model(_x()), rtol=0, atol=1e-5)
    assert "onnxruntime vs eager" in capsys.readouterr().out
    assert _tool("export").main(["--arch", str(arch), "--weights", str(tmp_path / "nope.pth"),
                                 "--format", "onnx", "--out", str(out / "x.onnx")]) == 1


@pytest.mark.parametrize("args, message", [
    (["--input-size", "0"], "input_size[0]: 0 is below the minimum 1"),       # was: silently the arch's size
    (["--input-size", "-4"], "input_size[0]: -4 is below the minimum 1"),     # was: torch's traceback
    (["--input-size", "8"], "input_size: (8, 8) is too small for Tiny-Deploy: stages[3][0]"),  # was: a conv's traceback
    (["--batch", "0"], "--batch: 0 is below the minimum 1"),
    (["--format", "int8", "--calibration-images", "-3"], "--calibration-images: -3 is below the minimum 1"),
    (["--format", "onnx", "--opset", "3"], "opset: 3 is below the minimum 7"),  # was: the whole graph printed
])
def test_export_cli_bad_numbers_are_one_line_errors_and_write_nothing(tmp_path, capsys, args, message):
    arch = tmp_path / "tiny.yaml"
    fbnet_zoo.load_spec(TINY).save_yaml(str(arch))
    out = tmp_path / "out"
    assert _tool("export").main(["--arch", str(arch), "--num-classes", "10", "--out", str(out) + os.sep] + args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or os.listdir(out) == []


def test_export_cli_refuses_an_arch_whose_own_input_size_is_too_small(tmp_path, capsys):
    arch = tmp_path / "small.yaml"
    arch.write_text(fbnet_zoo.load_spec(TINY).to_yaml().replace("input_size: 40", "input_size: 8"))
    assert _tool("export").main(["--arch", str(arch), "--num-classes", "10", "--out", str(tmp_path / "o") + os.sep]) == 1
    err = capsys.readouterr().err                                       # was a conv's traceback
    assert "small.yaml: input_size: 8 is too small for Tiny-Deploy: stages[3][0] (kernel 3, stride 2, padding 0) " \
           "gets 2x2 pixels and leaves none; the smallest input this arch takes is 9" in err and "Traceback" not in err


def test_convert_cli_ours_to_mobile_cv_and_back(tmp_path, capsys):
    pytest.importorskip("safetensors", reason="writes a .safetensors output")
    model = _model()
    arch = tmp_path / "tiny.yaml"
    fbnet_zoo.load_spec(TINY).save_yaml(str(arch))
    ours, mc, back = tmp_path / "ours.pth", tmp_path / "mc.pth", tmp_path / "back.safetensors"
    torch.save(model.state_dict(), ours)
    tool = _tool("convert_checkpoint")
    assert tool.main(["--from", "ours", "--to", "mobile_cv", "--arch", str(arch), str(ours), str(mc)]) == 0
    sd = torch.load(mc, weights_only=True)
    assert "backbone.stages.xif0_0.conv.bias" in sd and sd["head.conv.weight"].shape == (10, 64, 1, 1)
    assert tool.main(["--from", "mobile_cv", "--to", "ours", "--arch", str(arch), str(mc), str(back)]) == 0
    from safetensors.torch import load_file

    again = load_file(str(back))
    assert set(again) == set(model.state_dict())
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())
    assert tool.main(["--from", "timm", "--arch", str(arch), str(ours), str(tmp_path / "bad.pth")]) == 1
    assert "error:" in capsys.readouterr().err


def test_convert_cli_bad_paths_are_one_line_errors(tmp_path, capsys):
    model = _model()
    arch, ours = tmp_path / "tiny.yaml", tmp_path / "ours.pth"
    fbnet_zoo.load_spec(TINY).save_yaml(str(arch))
    torch.save(model.state_dict(), ours)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    tool = _tool("convert_checkpoint")
    # OUTPUT an existing folder: was os.replace's IsADirectoryError traceback naming a temp file
    assert tool.main(["--from", "ours", "--arch", str(arch), str(ours), str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"error: {folder}: cannot be written (is a directory" in err and "Traceback" not in err
    assert folder.is_dir() and os.listdir(folder) == [] and sorted(os.listdir(tmp_path)) == ["a_folder", "ours.pth",
                                                                                            "tiny.yaml"]
    # a missing INPUT: the message named an empty model ("'' has no registered sources")
    assert tool.main(["--from", "ours", "--arch", str(arch), str(tmp_path / "nope.pth"), str(tmp_path / "o.pth")]) == 1
    err = capsys.readouterr().err
    assert "nope.pth' is not an existing path or a URL" in err and "''" not in err


def test_export_to_a_read_only_folder_is_a_clear_error_naming_the_folder(tmp_path):
    from unprivileged import remove_tree, run_unprivileged, shared_tmp_dir

    model = _model()
    root = shared_tmp_dir()
    try:
        ro = os.path.join(root, "read_only")
        os.makedirs(ro)
        os.chmod(ro, 0o555)
        for fn, name in ((lambda: export_torchscript(model, os.path.join(ro, "m.ts"), example=_x()), "torchscript"),
                         (lambda: export_onnx(model, os.path.join(ro, "m.onnx"), check=False), "onnx")):
            with pytest.raises(DeployError, match=f"export_{name}: the output folder {ro} is not writable"):
                run_unprivileged(fn)
        assert os.listdir(ro) == []
        out = os.path.join(ro, "sub", "m.ts")                            # a folder that cannot be created
        with pytest.raises(DeployError, match=f"cannot create the output folder {ro}/sub"):
            run_unprivileged(lambda: export_torchscript(model, out, example=_x()))
    finally:
        remove_tree(root)


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/fbnet_zoo_absolute_escape"])
def test_export_cli_never_writes_outside_out_for_hostile_arch_names(tmp_path, capsys, name):
    arch = tmp_path / "hostile.yaml"
    arch.write_text(fbnet_zoo.load_spec(TINY).to_yaml().replace("name: Tiny-Deploy", f"name: '{name}'"))
    out = tmp_path / "a" / "b" / "out"
    before = set(os.listdir(tmp_path))
    rc = _tool("export").main(["--arch", str(arch), "--format", "torchscript", "--num-classes", "10",
                               "--out", str(out) + os.sep])
    assert rc == 1
    assert name in capsys.readouterr().err
    assert set(os.listdir(tmp_path)) == before and not os.path.exists(name + ".ts")
    assert not os.path.exists(out) or os.listdir(out) == []
