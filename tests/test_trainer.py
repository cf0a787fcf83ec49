"""The candidate trainer honours every recipe dimension, is deterministic, resumes, and turns
divergence or errors into failed results."""

import math
import os

import pytest
import torch
from torch import nn

from fbnet_zoo.blocks import DropPath
from fbnet_zoo.search.candidate import Candidate
from fbnet_zoo.search.trainer import build_candidate_model, train_candidate
from fbnet_zoo.training import CHECKPOINT_NAME, Recipe, TrainSettings, cached_datasets, evaluate, train_model
from fbnet_zoo.training.losses import distillation_loss, mixup, soft_targets
from fbnet_zoo.training.loop import _teacher_logits
from fbnet_zoo.training.optim import RMSpropTF, build_optimizer
from fbnet_zoo.training.schedule import lr_at
from fbnet_zoo.spec import ArchSpec

TINY = ArchSpec.from_dict({"name": "tiny", "input_size": 32, "stages": [
    [{"type": "conv", "out_channels": 8, "stride": 2, "act": "hswish"}],
    [{"type": "ir", "out_channels": 8, "expansion": 1, "act": "hswish"}],
    [{"type": "ir", "out_channels": 16, "stride": 2, "expansion": 3, "repeats": 2, "act": "hswish"}],
    [{"type": "ir", "out_channels": 24, "stride": 2, "expansion": 3, "repeats": 2, "se": True, "act": "hswish"}],
    [{"type": "ir_pool", "out_channels": 64, "expansion": 4, "act": "hswish"}]]})

# small data: 240 training / 100 validation images keep each run well under a second
SMALL = TrainSettings(embedded_train_size=240, embedded_val_size=100, threads=1)
BASE = Recipe(optimizer="sgd", lr=0.02, batch_size=32, ema=False, dropout=0.0, drop_path=0.0, mixup=0.0,
              label_smoothing=0.0, lr_decay=0.9, weight_decay=1e-5, resolution=32)


def cand(recipe=BASE, key="c0", arch=TINY):
    return Candidate(key, arch, recipe)


def run(recipe=BASE, epochs=1, settings=SMALL, **kw):
    res = train_candidate(cand(recipe), epochs, settings, progress=False, **kw)
    assert res.ok, res.error
    return res


# ---------------------------------------------------------------------------------- pieces

def test_optimizer_type_and_sgd_lr_multiplier():
    model = build_candidate_model(cand(), 10)
    rms = build_optimizer(model, BASE.replace(optimizer="rmsprop"))
    sgd = build_optimizer(model, BASE.replace(optimizer="sgd"))
    assert isinstance(rms, RMSpropTF) and isinstance(sgd, torch.optim.SGD)
    assert rms.param_groups[0]["lr"] == pytest.approx(0.02)
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.08)  # x4, as in the paper
    # weight decay on conv/linear weights only
    groups = {g["weight_decay"]: g["params"] for g in sgd.param_groups}
    assert all(p.dim() >= 2 for p in groups[1e-5]) and all(p.dim() == 1 for p in groups[0.0])


def test_rmsprop_tf_semantics():
    p = nn.Parameter(torch.tensor([1.0]))
    opt = RMSpropTF([p], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.0)
    p.grad = torch.tensor([2.0])
    opt.step()
    ms = 0.9 * 1.0 + 0.1 * 4.0  # mean square starts at 1
    assert float(p.detach()) == pytest.approx(1.0 - 0.1 * 2.0 / math.sqrt(ms + 1e-3))


def test_lr_schedule_warmup_then_per_epoch_decay():
    r = BASE.replace(optimizer="rmsprop", lr=0.1, warmup_epochs=2, lr_decay=0.5)
    assert lr_at(r, 0, 0, 10) == pytest.approx(0.1 * 0.1 / 2)       # first warm-up step
    assert lr_at(r, 1, 9, 10) == pytest.approx(0.1)                 # warm-up reaches the peak
    assert lr_at(r, 2, 0, 10) == lr_at(r, 2, 9, 10) == pytest.approx(0.1)
    assert lr_at(r, 3, 5, 10) == pytest.approx(0.05)
    assert lr_at(r, 5, 0, 10) == pytest.approx(0.1 * 0.5 ** 3)
    assert lr_at(r.replace(warmup_epochs=0), 0, 0, 10) == pytest.approx(0.1)
    assert lr_at(r.replace(optimizer="sgd", warmup_epochs=0), 1, 0, 10) == pytest.approx(0.4 * 0.5)


def test_mixup_mixes_inputs_and_targets():
    torch.manual_seed(0)
    x = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(8)])
    t = soft_targets(torch.arange(8), 8, 0.0)
    xm, tm, lam = mixup(x, t, 0.4)
    assert 0.0 < lam < 1.0
    assert not torch.equal(xm, x)
    # each mixed sample is lam * own + (1 - lam) * partner, in the inputs and in the targets alike
    partner = ((xm[:, 0, 0, 0] - lam * torch.arange(8.0)) / (1 - lam)).round().long()
    assert torch.allclose(tm, lam * t + (1 - lam) * t[partner], atol=1e-5)
    assert torch.allclose(tm.sum(1), torch.ones(8))
    assert mixup(x, t, 0.0)[0] is x


def test_label_smoothing_targets():
    t = soft_targets(torch.tensor([2, 0]), 5, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert t[0, 2] == pytest.approx(0.9 + 0.02) and t[0, 0] == pytest.approx(0.02)


def test_dropout_and_drop_path_built_from_the_recipe_and_only_active_in_training():
    arch = TINY.replace(stages=TINY.stages[:2] + ((TINY.stages[2][0].__class__(
        type="ir", out_channels=16, stride=1, expansion=3, repeats=3, act="hswish"),),) + TINY.stages[3:])
    model = build_candidate_model(cand(BASE.replace(dropout=0.3, drop_path=0.2), arch=arch), 10)
    assert model.classifier.dropout.p == pytest.approx(0.3)
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.2) and rates == sorted(rates)
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    for m in model.modules():  # fixed BN statistics: only drop-path/dropout could differ now
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    torch.manual_seed(0)
    assert not torch.allclose(model(x), model(x))
    plain = build_candidate_model(cand(BASE), 10)
    assert not any(isinstance(m, DropPath) for m in plain.modules())


def test_distillation_loss():
    s = torch.randn(4, 10)
    assert float(distillation_loss(s, s)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(s, torch.randn(4, 10))) > 0


# ---------------------------------------------------------------------------------- training runs

def test_training_is_deterministic_for_a_seed_and_records_per_epoch_metrics():
    a = run(epochs=2)
    b = run(epochs=2)
    c = run(epochs=2, settings=SMALL.replace(seed=1))
    assert a.top1 == b.top1 and a.loss == b.loss
    assert c.loss != a.loss
    assert len(a.top1) == len(a.loss) == len(a.epoch_seconds) == 2 and a.epochs_planned == 2
    assert a.extra["steps_per_epoch"] == 240 // 32
    assert a.extra["lr"][1] == pytest.approx(0.08 * 0.9)  # sgd x4, one decay step
    assert all(0 <= t <= 100 for t in a.top1)


def test_each_recipe_dimension_changes_training():
    ref = run()
    changed = {
        "optimizer": BASE.replace(optimizer="rmsprop", lr=0.005),
        "lr": BASE.replace(lr=0.01),
        "weight_decay": BASE.replace(weight_decay=1e-2),
        "warmup": BASE.replace(warmup_epochs=1.0),
        "batch_size": BASE.replace(batch_size=48),
        "dropout": BASE.replace(dropout=0.5),
        "mixup": BASE.replace(mixup=0.4),
        "label_smoothing": BASE.replace(label_smoothing=0.2),
        "ema": BASE.replace(ema=True, ema_decay=0.9),
    }
    for name, r in changed.items():
        res = run(r)
        assert res.loss != ref.loss or res.top1 != ref.top1, name
    assert run(BASE.replace(batch_size=48)).extra["steps_per_epoch"] == 240 // 48
    res = run(BASE.replace(resolution=40))
    assert res.extra["resolution"] == 40 and res.loss != ref.loss


def test_ema_weights_differ_from_raw_and_evaluation_uses_them(tmp_path):
    from torch.utils.data import DataLoader

    r = BASE.replace(ema=True, ema_decay=0.9)
    res = run(r, epochs=1, workdir=str(tmp_path))
    state = torch.load(os.path.join(tmp_path, CHECKPOINT_NAME), weights_only=True)
    raw, avg = state["model"], state["ema"]["module"]
    w = "stages.2.0.pw.conv.weight"
    assert not torch.allclose(raw[w], avg[w])
    _, val, _ = cached_datasets(SMALL, 32)
    loader = DataLoader(val, batch_size=64)
    m = build_candidate_model(cand(r), 10)
    x = next(iter(loader))[0]
    m.load_state_dict(avg)
    top1_ema, loss_ema = evaluate(m, loader, torch.device("cpu"))
    out_ema = m(x)
    m.load_state_dict(raw)
    out_raw = m(x)
    assert top1_ema == pytest.approx(res.top1[-1])
    assert loss_ema == pytest.approx(res.extra["val_loss"][-1], rel=1e-5)
    assert not torch.allclose(out_raw, out_ema, rtol=1e-3, atol=1e-5)


def test_weight_decay_shrinks_weights(tmp_path):
    norms = {}
    for wd in (0.0, 5e-2):
        d = tmp_path / str(wd)
        run(BASE.replace(weight_decay=wd), workdir=str(d))
        sd = torch.load(d / CHECKPOINT_NAME, weights_only=True)["model"]
        norms[wd] = sum(float(v.norm()) for k, v in sd.items() if k.endswith("conv.weight"))
    assert norms[5e-2] < norms[0.0]


def test_distillation_from_a_teacher_changes_the_loss():
    teacher = build_candidate_model(cand(), 10)
    data = cached_datasets(SMALL, 32)
    plain = train_model(build_candidate_model(cand(), 10), BASE, 1, data[0], data[1], SMALL, progress=False)

    def with_teacher(weight):
        torch.manual_seed(0)
        model = build_candidate_model(cand(), 10)
        torch.manual_seed(SMALL.seed)
        return train_model(model, BASE.replace(distill_weight=weight), 1, data[0], data[1], SMALL,
                           teacher=teacher, progress=False)

    torch.manual_seed(SMALL.seed)
    no_kd = with_teacher(0.0)
    kd = with_teacher(0.8)
    assert kd.ok and no_kd.ok
    assert kd.loss != no_kd.loss
    assert plain.ok


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    full = run(epochs=3)
    first = run(epochs=2, workdir=str(tmp_path))
    resumed = run(epochs=3, workdir=str(tmp_path))
    assert resumed.extra["resumed_from"] == 2
    assert resumed.top1 == full.top1 and resumed.loss == full.loss
    assert resumed.top1[:2] == first.top1
    again = run(epochs=2, workdir=str(tmp_path))  # already covered by the checkpoint: no training
    assert again.top1 == full.top1[:2] and again.extra["resumed_from"] == 3
    # a checkpoint of another recipe is ignored, not loaded
    other = run(BASE.replace(lr=0.01), epochs=1, workdir=str(tmp_path))
    assert "resumed_from" not in other.extra


def test_resume_is_exact_with_data_loader_workers(tmp_path):
    """ImageFolder data gets worker processes by default; their augmentation RNG is seeded per
    epoch, so a resumed run still continues exactly."""
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        os.makedirs(tmp_path / "data" / "train" / c)
        for j in range(8):
            img = torch.randint(0, 256, (24, 24, 3), generator=rng, dtype=torch.uint8).numpy()
            Image.fromarray(img).save(tmp_path / "data" / "train" / c / f"{j}.png")
    settings = TrainSettings(dataset="imagefolder", data_dir=str(tmp_path / "data"), holdout=4, cpus=2)
    recipe = BASE.replace(batch_size=4, resolution=16)
    full = run(recipe, epochs=2, settings=settings)
    assert full.extra["steps_per_epoch"] == 3
    run(recipe, epochs=1, settings=settings, workdir=str(tmp_path / "w"))
    resumed = run(recipe, epochs=2, settings=settings, workdir=str(tmp_path / "w"))
    assert resumed.extra["resumed_from"] == 1 and resumed.loss == full.loss and resumed.top1 == full.top1


def test_nan_recipe_fails_with_a_reason():
    res = train_candidate(cand(BASE.replace(lr=1e6)), 2, SMALL, progress=False)
    assert res.status == "failed" and not res.ok
    assert "diverged" in res.error and ("nan" in res.error.lower() or "inf" in res.error.lower())
    assert res.final_top1 is None


def test_exceptions_become_failed_results():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 10)

        def forward(self, x):
            raise RuntimeError("boom in forward")

    data = cached_datasets(SMALL, 32)
    res = train_model(Broken(), BASE, 1, data[0], data[1], SMALL, progress=False)
    assert res.status == "failed" and "boom in forward" in res.error
    bad = train_candidate(cand(), 0, SMALL, progress=False)
    assert bad.status == "failed" and "epochs" in bad.error
    nodata = train_candidate(cand(), 1, {"dataset": "cifar10", "data_dir": "/nonexistent"}, progress=False)
    assert nodata.status == "failed" and "cifar-10-batches-py" in nodata.error


def test_trains_any_module():
    from torchvision.models import mobilenet_v3_small

    data = cached_datasets(SMALL, 32)
    torch.manual_seed(0)
    model = mobilenet_v3_small(num_classes=10)
    res = train_model(model, BASE, 1, data[0], data[1], SMALL.replace(max_train_images=64), progress=False)
    assert res.ok, res.error and len(res.top1) == 1


def test_few_epochs_on_the_embedded_set_beat_chance_clearly():
    settings = TrainSettings(embedded_train_size=1500, embedded_val_size=500, threads=1)
    r = BASE.replace(batch_size=32, lr=0.02, lr_decay=0.8, ema=True, ema_decay=0.99)
    res = train_candidate(cand(r), 4, settings, progress=False)
    assert res.ok, res.error
    # chance is 10%; with 500 held-out images 25% is more than ten standard errors above it
    assert res.top1[-1] > 25.0, res.top1
    assert res.loss[-1] < res.loss[0]


def test_teacher_from_settings_with_local_weights(tmp_path):
    teacher = build_candidate_model(cand(), 10)
    weights = str(tmp_path / "teacher.pth")
    torch.save(teacher.state_dict(), weights)
    arch_path = str(tmp_path / "tiny.yaml")
    TINY.save_yaml(arch_path)
    settings = SMALL.replace(teacher={"arch": arch_path, "weights": weights, "num_classes": 10})
    kd = run(epochs=1, settings=settings)
    plain = run(epochs=1)
    assert kd.loss != plain.loss
    bad = train_candidate(cand(), 1, SMALL.replace(teacher={"arch": arch_path, "weights": str(tmp_path / "no.pth")}),
                          progress=False)
    assert bad.status == "failed" and "no.pth" in bad.error


def test_teacher_logits_follow_the_chosen_classes():
    teacher = nn.Linear(4, 6)
    x = torch.randn(3, 4)
    picked = _teacher_logits(teacher, x, torch.tensor([1, 4, 5]), 3)
    assert torch.allclose(picked, teacher(x)[:, [1, 4, 5]])
    with pytest.raises(ValueError, match="teacher predicts 6 classes"):
        _teacher_logits(teacher, x, None, 3)
