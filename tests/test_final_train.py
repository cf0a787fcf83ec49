"""Final training (tools/train.py, fbnet_zoo.training.final): DDP over gloo matches one process,
kill -9 + resume is exact, distillation is 0.8 KD + 0.2 CE, the output loads through build_model."""

import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fbnet_zoo
from fbnet_zoo.checkpoints import register_sources
from fbnet_zoo.training import Recipe, RecipeError, TrainConfigError, TrainResult, TrainSettings
from fbnet_zoo.training.distributed import DistContext, process_device
from fbnet_zoo.training.final import FINAL_NAME, RESULT_NAME, load_final_config, train_final
from fbnet_zoo.training.loop import CHECKPOINT_NAME, _setup, load_teacher, train_one_epoch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "train.py")

TINY_YAML = """\
name: tiny_winner
input_size: 16
stages:
- [{type: conv, out_channels: 8, stride: 2, act: hswish}]
- [{type: ir, out_channels: 8, expansion: 1, act: hswish}]
- [{type: ir, out_channels: 16, stride: 2, expansion: 3, act: hswish, se: true}]
- [{type: ir_pool, out_channels: 32, expansion: 4, act: hswish}]
"""
# Deterministic recipe: no augmentation, mixup, dropout or drop-path, so 2 x b and 1 x 2b see
# the same images in every step and the only differences are float summation orders.
CONFIG_YAML = """\
recipe: {optimizer: sgd, lr: 0.02, batch_size: 8, ema: true, ema_decay: 0.9, dropout: 0.0, drop_path: 0.0,
  mixup: 0.0, label_smoothing: 0.1, lr_decay: 0.9, warmup_epochs: 1, epochs: 3, resolution: 16}
train: {dataset: imagefolder, augment: false, num_workers: 0, eval_batch_size: 16, threads: 1}
sync_bn: true
"""
CLASSES, PER_CLASS = 3, 24   # 72 training images: 9 steps of 8 per epoch


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("final")
    rng = np.random.default_rng(0)
    for split, n in (("train", PER_CLASS), ("val", 4)):
        for c in range(CLASSES):
            d = root / "data" / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = (rng.random((16, 16, 3)) * 90 + c * 60).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    (root / "tiny.yaml").write_text(TINY_YAML)
    (root / "cfg.yaml").write_text(CONFIG_YAML)
    return root


def config_for(root):
    return load_final_config(root / "cfg.yaml", {"train.data_dir": str(root / "data")})


@pytest.fixture(scope="module")
def reference(setup_dir):
    """The uninterrupted one-process run (global batch 8), in this process."""
    workdir = setup_dir / "ref"
    result, path = train_final(str(setup_dir / "tiny.yaml"), config_for(setup_dir), str(workdir), progress=False)
    return result, path


def tool_args(root, workdir, epochs=None):
    args = [TOOL, str(root / "tiny.yaml"), "--config", str(root / "cfg.yaml"), "--data-dir", str(root / "data"),
            "--workdir", str(workdir), "--no-progress"]
    return args + (["--epochs", str(epochs)] if epochs else [])


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def final_weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow  # two torchrun processes importing torch + the package: 30-50 s on 2 shared cores
def test_two_gloo_processes_match_one_process_with_twice_the_batch(setup_dir, reference):
    """2 processes x 4 images (torchrun, gloo, SyncBN) vs 1 process x 8 images: compared are the
    global mean training loss of each of the 18 steps of 2 epochs (the 2-process loss is the
    all-reduced mean over both halves of the batch), the EMA top-1 and the final EMA weights.
    SyncBN normalises each half with the statistics of the whole 8-image batch, as one process
    does; without it the losses would differ from the first step."""
    ref, _ = reference
    workdir = setup_dir / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *tool_args(setup_dir, workdir, epochs=2)], capture_output=True, text=True, env=env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((workdir / RESULT_NAME).read_text())
    assert ddp["extra"]["world_size"] == 2 and ref.extra["world_size"] == 1
    steps = 2 * (CLASSES * PER_CLASS // 8)
    assert len(ddp["extra"]["step_losses"]) == steps
    np.testing.assert_allclose(ddp["extra"]["step_losses"], ref.extra["step_losses"][:steps], rtol=2e-3, atol=1e-5)
    # first step: same data, same initial weights, global BN statistics -> equal up to float rounding
    assert ddp["extra"]["step_losses"][0] == pytest.approx(ref.extra["step_losses"][0], rel=1e-5)
    assert ddp["top1"] == pytest.approx(ref.top1[:2])
    # rank 0 wrote the checkpoint and result once; the 2-epoch weights match an in-process 2-epoch run
    two_epochs, path2 = train_final(str(setup_dir / "tiny.yaml"), config_for(setup_dir), str(setup_dir / "ref2"),
                                    epochs=2, progress=False)
    a, b = final_weights(workdir / FINAL_NAME), final_weights(path2)
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-2, atol=2e-3, msg=k)


def _load_tool():
    spec = importlib.util.spec_from_file_location("train_tool", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # a tool subprocess, killed, then resumed: ~30 s on 2 shared cores
def test_kill_9_mid_run_then_resume_ends_with_the_uninterrupted_weights(setup_dir, reference):
    _, ref_path = reference
    workdir = setup_dir / "killed"
    ckpt = workdir / CHECKPOINT_NAME
    proc = subprocess.Popen([sys.executable, *tool_args(setup_dir, workdir)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert ckpt.exists(), "the run wrote no epoch checkpoint"
        os.kill(proc.pid, signal.SIGKILL)  # at once: epochs take well under a second on an idle machine
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    killed_at = state["epoch"]  # 1, or 2 where the kill landed after the next checkpoint
    assert 1 <= killed_at < 3, "killed after a checkpoint, before the run ended"
    assert not (workdir / FINAL_NAME).exists()
    # resume through the tool's entry point (in this process): from epoch 1 to the end
    assert _load_tool().main(tool_args(setup_dir, workdir)[1:]) == 0
    result = json.loads((workdir / RESULT_NAME).read_text())
    assert result["extra"]["resumed_from"] == killed_at and len(result["top1"]) == 3
    a, b = final_weights(workdir / FINAL_NAME), final_weights(ref_path)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical on CPU


def test_a_checkpoint_the_run_cannot_resume_stops_it_and_is_kept(setup_dir, reference, capsys):
    """A torn or foreign workdir/checkpoint.pt was logged and the run started over, overwriting
    the user's progress at its first epoch. Now the tool stops naming the file and what to do,
    and the file is left as it was."""
    workdir = setup_dir / "kept"
    workdir.mkdir()
    ckpt = workdir / CHECKPOINT_NAME
    ckpt.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    tool = _load_tool()
    assert tool.main(tool_args(setup_dir, workdir)[1:]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt}: cannot resume from it" in err and "move it away" in err, err
    assert ckpt.read_bytes() == b"PK\x03\x04 not a whole checkpoint"
    # another run's checkpoint (here: the same arch with another learning rate)
    state = torch.load(setup_dir / "ref" / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    torch.save(state, ckpt)
    before = ckpt.read_bytes()
    assert tool.main(tool_args(setup_dir, workdir)[1:] + ["--set", "recipe.lr=0.05"]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt}: it was written by another run" in err and "move it away" in err, err
    assert ckpt.read_bytes() == before and not (workdir / FINAL_NAME).exists()


def test_kd_loss_is_point_8_kd_plus_point_2_ce_by_hand(setup_dir):
    """One training step with a teacher: the loss the loop reports equals a hand computation of
    0.8 * T^2 * KL(teacher_T || student_T) + 0.2 * label-smoothed CE, from the same logits."""
    torch.manual_seed(0)
    student = fbnet_zoo.build_model(str(setup_dir / "tiny.yaml"), num_classes=5, dropout=0.0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5)).eval()
    with torch.no_grad():  # a confident teacher (logits of a few units), so that KD and CE differ
        teacher[1].weight.normal_(0.0, 0.1)
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    recipe = Recipe(optimizer="sgd", lr=1e-3, batch_size=6, ema=False, dropout=0.0, drop_path=0.0, mixup=0.0,
                    label_smoothing=0.1, distill_weight=0.8)
    settings = TrainSettings(distill_temperature=2.0, channels_last=False, threads=1)
    before = copy.deepcopy(student).train()
    run = _setup(student, recipe, 1, None, settings, None, teacher, 5, TrainResult("kd", "ok"))
    loss, n, _ = train_one_epoch(run, [(x, y)], 0)
    assert n == 6
    with torch.no_grad():
        s, t = before(x).double(), teacher(x).double()
    T = 2.0
    p_t = torch.exp(t / T) / torch.exp(t / T).sum(-1, keepdim=True)
    log_p_s = s / T - torch.log(torch.exp(s / T).sum(-1, keepdim=True))
    kd = T * T * (p_t * (torch.log(p_t) - log_p_s)).sum(-1).mean()
    target = torch.full((6, 5), 0.1 / 5, dtype=torch.float64)
    target[torch.arange(6), y] = 0.9 + 0.1 / 5
    ce = -(target * (s - torch.log(torch.exp(s).sum(-1, keepdim=True)))).sum(-1).mean()
    assert kd > 0.01 and abs(float(kd - ce)) > 0.01  # both terms matter
    assert loss == pytest.approx(float(0.8 * kd + 0.2 * ce), rel=1e-5)


def test_final_checkpoint_loads_through_build_model_and_as_a_registered_source(setup_dir, reference, tmp_path,
                                                                              monkeypatch):
    _, path = reference
    saved = final_weights(path)
    meta = torch.load(path, map_location="cpu", weights_only=True)
    assert meta["weights"] == "ema" and meta["num_classes"] == CLASSES and meta["arch"]["name"] == "tiny_winner"
    arch = str(setup_dir / "tiny.yaml")
    model = fbnet_zoo.build_model(arch, num_classes=CLASSES, pretrained=str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    register_sources({"model": "tiny_winner", "default": "final",
                      "sources": {"final": {"url": Path(path).resolve().as_uri(), "format": "torch",
                                            "converter": "ours", "num_classes": CLASSES}}})
    monkeypatch.setenv("FBNET_ZOO_CACHE", str(tmp_path / "cache"))  # file:// URLs are copied into the cache
    again = fbnet_zoo.build_model(arch, num_classes=CLASSES, pretrained=True)
    assert all(torch.equal(v, saved[k]) for k, v in again.state_dict().items())


def test_shipped_final_recipe_is_the_papers():
    path = os.path.join(ROOT, "model_configs", "recipes", "fbnetv3_final.yaml")
    with pytest.raises(TrainConfigError, match="data_dir: required"):  # the tool's --data-dir
        load_final_config(path)
    cfg = load_final_config(path, {"train.data_dir": "/data/imagenet"})
    r = cfg.recipe
    assert (r.epochs, r.warmup_epochs, r.lr_decay, r.distill_weight, r.ema) == (400, 5, 0.9875, 0.8, True)
    assert cfg.sync_bn is True
    assert cfg.train.teacher["arch"] == "FBNetV3-G-timm" and cfg.train.dataset == "imagefolder"


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: {lr_decay: 2.0}\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: recipe.lr_decay: 2.0"):
        load_final_config(bad)
    bad.write_text("train: {devcie: cuda}\n")
    with pytest.raises(TrainConfigError, match=r"train.devcie: unknown key"):
        load_final_config(bad)
    with pytest.raises(TrainConfigError, match="not recipe.<field>"):
        load_final_config(None, {"lr": 0.1})
    # a resolution the arch runs out of pixels at: was a conv's traceback in the first step
    cfg = load_final_config(None, {"recipe.resolution": 32, "train.data_dir": str(tmp_path / "nowhere")})
    with pytest.raises(RecipeError, match=r"recipe.resolution 32 does not fit FBNetV3-A: .* too small"):
        train_final("FBNetV3-A", cfg, str(tmp_path / "work"), progress=False)
    assert not (tmp_path / "work").exists()
    # a workdir that is a file: was os.makedirs' FileExistsError after the data had been read
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainConfigError, match=r"workdir .*file' is a file, not a folder"):
        train_final("FBNetV3-A", load_final_config(None, {"train.data_dir": str(tmp_path)}), str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "x"
    with pytest.raises(fbnet_zoo.UnknownModelError, match=r"train.teacher: unknown model 'FBNetV3-Q'"):
        load_teacher("FBNetV3-Q")                                      # named the model, not whose it was
    model = fbnet_zoo.build_model(fbnet_zoo.ArchSpec.from_yaml(TINY_YAML), num_classes=3)
    with pytest.raises(TrainConfigError, match="batch_size: 8 .* not divisible by the 3 processes"):
        _setup(model, Recipe(batch_size=8), 1, None, TrainSettings(), None, None, 3, TrainResult("x", "ok"),
               dist=DistContext(rank=0, world_size=3))


def test_a_cuda_device_without_index_becomes_this_process_local_gpu():
    # torch.cuda.set_device refuses a bare "cuda" (found running `tools/train.py --device cuda`
    # on a GPU machine); device objects are built without touching CUDA, so this runs anywhere
    assert process_device("cuda", 1, 0) == torch.device("cuda", 0)
    assert process_device("cuda", 4, 3) == torch.device("cuda", 3)
    assert process_device("cuda:2", 4, 3) == torch.device("cuda", 2)
    assert process_device("cpu", 4, 3) == torch.device("cpu")
