"""The CIFAR-10 experiment (fbnet_zoo.training.cifar10) end to end on a tiny CIFAR-10 folder
written here in the real format (python pickle batches data_batch_1..5, test_batch,
batches.meta): training, results files, resume, plots; bad input gives clear errors; the two
tools are thin command lines over it."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from fbnet_zoo import count_flops, fvcore_flops, load_spec, scale
from fbnet_zoo.cifar import cifar_variant
from fbnet_zoo.training.cifar10 import (RESULTS_SCHEMA, CifarError, cifar_baseline, load_results, plot_results,
                                        results_table, run_experiment)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = "airplane automobile bird cat deer dog frog horse ship truck".split()


def make_cifar_folder(root, per_batch=8, n_test=16, seed=0):
    """A CIFAR-10 folder in the format of the official cifar-10-python.tar.gz (pickled
    dicts with bytes keys, uint8 N x 3072 rows in R, G, B plane order, python-list labels)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)

    def batch(name, n):
        labels = [int(v) for v in rng.integers(0, 10, n)]
        # Learnable: the class sets the mean brightness of the red plane.
        data = rng.integers(0, 64, (n, 3072)).astype(np.uint8)
        data[:, :1024] += np.asarray(labels, dtype=np.uint8)[:, None] * 19
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"img_{i}.png".encode() for i in range(n)]}, f, protocol=2)

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_batch)
    batch("test_batch", n_test)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in LABELS],
                     b"num_vis": 3072}, f, protocol=2)
    return folder




@pytest.fixture()
def cifar(tmp_path):
    return make_cifar_folder(str(tmp_path / "data"))


@pytest.fixture()
def small_arch(tmp_path):
    """A searched-style arch YAML: FBNetV3-A scaled down to a quarter width, a third depth."""
    spec = scale("FBNetV3-A", width=0.25, depth=0.34, name="tiny-searched")
    path = str(tmp_path / "tiny-searched.yaml")
    spec.save_yaml(path)
    return path


def _run(data, archs, out, epochs, batch_size=None, lr=None, **kw):
    overrides = {"batch_size": batch_size, "lr": lr}
    return run_experiment(str(data), [str(a) for a in archs], str(out), epochs=epochs,
                          recipe_overrides={k: v for k, v in overrides.items() if v is not None}, progress=False,
                          **kw)


def _tool(name, *argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), *map(str, argv)],
                          capture_output=True, text=True, timeout=300)


def test_trains_evaluates_resumes_and_writes_results(cifar, small_arch, tmp_path):
    out = tmp_path / "runs"
    records = _run(cifar, [small_arch, "efficientnet_b0"], out, 1, batch_size=16)
    assert [r["status"] for r in records] == ["ok", "ok"]
    run_dir = out / "tiny_searched-cifar"
    res = json.loads((run_dir / "results.json").read_text())
    variant = cifar_variant(small_arch)
    assert res["schema"] == RESULTS_SCHEMA and res["status"] == "ok" and res["error"] is None
    assert res["arch"] == "tiny-searched-CIFAR" and res["family"] == "searched"
    assert res["input_size"] == 32 and res["recipe"]["resolution"] == 32
    assert res["flops"] == count_flops(variant, num_classes=10)
    assert res["unstrided"] == "stages[2][0]"
    assert len(res["top1"]) == res["epochs_done"] == 1 and 0.0 <= res["final_top1"] <= 100.0
    assert res["settings"]["dataset"] == "cifar10" and res["recipe"]["optimizer"] == "sgd"
    assert (run_dir / "checkpoint.pt").is_file()
    assert load_spec(str(run_dir / "arch.yaml")) == variant
    base = json.loads((out / "efficientnet_b0-cifar" / "results.json").read_text())
    assert base["status"] == "ok" and base["family"] == "EfficientNet (timm)"
    assert base["unstrided"] == "blocks.1.0.conv_dw" and base["flops"] > 0
    table = (out / "results_table.md").read_text()
    assert "tiny-searched-CIFAR" in table and "efficientnet_b0-CIFAR" in table

    # A second run over the same folder must not silently discard the checkpoint.
    with pytest.raises(CifarError, match="--resume"):
        _run(cifar, [small_arch], out, 2, batch_size=16)
    # --resume continues after epoch 1 and keeps epoch 1's history.
    _run(cifar, [small_arch], out, 2, batch_size=16, resume=True)
    res2 = json.loads((run_dir / "results.json").read_text())
    assert res2["resumed_from"] == 1 and res2["epochs_done"] == 2 and res2["top1"][0] == res["top1"][0]
    assert res2["status"] == "ok" and res2["final_top1"] == res2["top1"][1]

    # The plot and table from the results files.
    rows = load_results(str(out))
    assert {r["arch"] for r in rows} == {"tiny-searched-CIFAR", "efficientnet_b0-CIFAR"}
    png = tmp_path / "fig.png"
    assert plot_results(rows, str(png)) == 2
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "tiny-searched-CIFAR" in results_table(rows)

    # The tools are thin command lines over the same functions.
    png, md = tmp_path / "fig2.png", tmp_path / "table.md"
    plot = _tool("plot_cifar10", out, "--out", png, "--table", md)
    assert plot.returncode == 0, plot.stderr
    assert png.read_bytes()[:4] == b"\x89PNG" and "tiny-searched-CIFAR" in md.read_text()
    dry = _tool("train_cifar10", cifar, "--arch", f"{small_arch},efficientnet_b0", "--dry-run", "--out", out)
    assert dry.returncode == 0, dry.stderr
    assert "tiny-searched-CIFAR" in dry.stdout and "blocks.1.0.conv_dw" in dry.stdout


def test_bad_input_gives_clear_errors(cifar, small_arch, tmp_path):
    out = tmp_path / "runs"

    def err(data, arch, **kw):
        with pytest.raises(CifarError) as info:
            _run(data, [arch], out, 1, **kw)
        return str(info.value)

    assert "does not exist" in err(tmp_path / "nowhere", small_arch)
    assert "no 'cifar-10-batches-py' folder" in err(tmp_path, small_arch)
    assert "unknown model 'FBNetV3-Q'" in err(cifar, "FBNetV3-Q")
    assert "no such arch YAML file" in err(cifar, tmp_path / "missing.yaml")
    assert "recipe.optimiser: unknown key" in err(cifar, small_arch, recipe_path=str(_yaml(tmp_path, "optimiser: sgd")))
    # Wrong format: a batch that is not a pickle, a missing batch, a batch of the wrong shape.
    with open(os.path.join(cifar, "data_batch_3"), "wb") as f:
        f.write(b"this is not a pickle")
    assert "data_batch_3: not a CIFAR-10 python pickle batch" in err(cifar, small_arch)
    os.remove(os.path.join(cifar, "data_batch_3"))
    assert "lacks ['data_batch_3']" in err(cifar, small_arch)
    with open(os.path.join(cifar, "data_batch_3"), "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, f)
    assert "expected uint8 N x 3072" in err(cifar, small_arch)
    # a --resolution too small for the arch: was count_flops's SpecError traceback
    assert "input_size: 8 is too small for FBNetV3-A-CIFAR: stages[4][0]" in err(cifar, "FBNetV3-A", resolution=8)
    assert not out.exists() or not any(out.iterdir())          # nothing was trained


def test_resume_refuses_an_unreadable_checkpoint_and_keeps_the_run(cifar, small_arch, tmp_path):
    # it used to be ignored: training started over and overwrote the checkpoint and results.json
    out = tmp_path / "runs"
    run_dir = out / "tiny_searched-cifar"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 torn")
    (run_dir / "results.json").write_text("{}")
    with pytest.raises(CifarError, match=r"--resume: .*checkpoint.pt cannot be read .*--overwrite"):
        _run(cifar, [small_arch], out, 2, resume=True)
    assert (run_dir / "checkpoint.pt").read_bytes() == b"PK\x03\x04 torn" and (run_dir / "results.json").read_text() == "{}"


def test_plot_tool_bad_outputs_are_one_line_and_write_nothing(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_cifar10_tool", os.path.join(ROOT, "tools", "plot_cifar10.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    run = tmp_path / "runs" / "m-cifar"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"schema": RESULTS_SCHEMA, "arch": "M-CIFAR", "family": "FBNetV3",
                                                  "flops": 2e6, "params": 1e6, "status": "ok", "final_top1": 50.0,
                                                  "top1": [50.0], "epochs_planned": 1}))
    table = tmp_path / "table.md"
    # an unknown format was matplotlib's traceback, after --table had been written
    assert tool.main([str(run.parent), "--out", str(tmp_path / "fig.xyz"), "--table", str(table)]) == 2
    assert "--out" in capsys.readouterr().err and not table.exists() and not (tmp_path / "fig.xyz").exists()
    # a folder as --out: was atomic_path's IsADirectoryError traceback
    assert tool.main([str(run.parent), "--out", str(tmp_path)]) == 2
    assert f"error: {tmp_path}: cannot be written (is a directory" in capsys.readouterr().err
    assert tool.main([str(run.parent), "--out", str(tmp_path / "fig.png"), "--table", str(table)]) == 0
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG" and "M-CIFAR" in table.read_text()


def _yaml(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_efficientnet_baseline_is_adapted_like_the_fbnets():
    import timm

    model, size, changed = cifar_baseline("efficientnet_b0")
    plain = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10)
    assert size == 32 and changed == "blocks.1.0.conv_dw"
    assert plain.blocks[1][0].conv_dw.stride == (2, 2) and model.blocks[1][0].conv_dw.stride == (1, 1)
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in plain.parameters()]
    strided = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert strided == ["conv_stem", "blocks.2.0.conv_dw", "blocks.3.0.conv_dw", "blocks.5.0.conv_dw"]  # was 5
    with torch.no_grad():
        assert model.eval().forward_features(torch.zeros(1, 3, 32, 32)).shape[-1] == 2
    assert fvcore_flops(model, input_size=32) > fvcore_flops(plain, input_size=32)
    assert cifar_baseline("efficientnet_b1")[1] == round(32 * 240 / 224)
    with pytest.raises(ValueError, match="efficientnet_b0"):
        cifar_baseline("resnet50")


def test_a_diverging_run_is_recorded_as_failed(cifar, small_arch, tmp_path):
    out = tmp_path / "runs"
    [rec] = _run(cifar, [small_arch], out, 1, batch_size=8, lr=1e30)
    res = json.loads((out / "tiny_searched-cifar" / "results.json").read_text())
    assert rec["status"] == res["status"] == "failed" and res["final_top1"] is None
    assert "diverged" in res["error"] or "nan" in res["error"].lower() or "inf" in res["error"].lower()
