"""Datasets for candidate training: the embedded set, CIFAR-10 pickle batches, ImageFolder."""

import os
import pickle
import time

import numpy as np
import pytest
import torch

from fbnet_zoo.training import TrainConfigError, TrainSettings, build_datasets
from fbnet_zoo.training.data import (EMBEDDED_CLASSES, DataError, holdout_split, load_cifar10, make_embedded_arrays,
                                     make_embedded_dataset)


# ---------------------------------------------------------------------------------- embedded

def test_embedded_set_is_deterministic_balanced_and_fast():
    t0 = time.perf_counter()
    a_img, a_lab = make_embedded_arrays(500, seed=3)
    assert time.perf_counter() - t0 < 5.0
    b_img, b_lab = make_embedded_arrays(500, seed=3)
    c_img, _ = make_embedded_arrays(500, seed=4)
    assert a_img.shape == (500, 3, 32, 32) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert np.bincount(a_lab, minlength=10).tolist() == [50] * 10
    # real images, not flat colour: every image has spread in every channel
    assert (a_img.reshape(500, 3, -1).std(-1) > 5).all()


def test_embedded_classes_are_not_separable_by_mean_colour():
    # colour is a weak cue: a nearest-class-mean classifier on mean RGB stays far from perfect
    img, lab = make_embedded_arrays(2000, seed=0)
    feats = img.reshape(2000, 3, -1).mean(-1)
    means = np.stack([feats[lab == k].mean(0) for k in range(10)])
    pred = np.argmin(((feats[:, None] - means[None]) ** 2).sum(-1), 1)
    assert (pred == lab).mean() < 0.35


def test_embedded_splits_do_not_overlap_and_transforms_apply():
    tr = make_embedded_dataset("train", train_size=100, val_size=50)
    va = make_embedded_dataset("val", train_size=100, val_size=50)
    assert len(tr) == 100 and len(va) == 50 and tr.classes == list(EMBEDDED_CLASSES)
    train_set = {bytes(x.numpy()) for x in tr.images}
    assert not any(bytes(x.numpy()) in train_set for x in va.images)
    s = TrainSettings(embedded_train_size=100, embedded_val_size=50)
    train, val, n = build_datasets(s, 40)
    x, y = val[0]
    assert n == 10 and x.shape == (3, 40, 40) and x.dtype == torch.float32 and isinstance(y, int)
    assert -5 < float(x.mean()) < 5
    # val transform is deterministic, train transform is random (crop + flip)
    assert torch.equal(val[3][0], val[3][0])
    torch.manual_seed(0)
    assert any(not torch.equal(train[3][0], train[3][0]) for _ in range(5))


def test_embedded_holdout_carves_validation_from_train():
    s = TrainSettings(embedded_train_size=100, embedded_val_size=20, holdout=0.25)
    train, val, _ = build_datasets(s, 32)
    assert len(train) == 75 and len(val) == 25
    with pytest.raises(DataError, match="embedded split"):
        make_embedded_dataset("test")


def test_holdout_split():
    tr, va = holdout_split(100, 10, seed=0)
    assert len(va) == 10 and len(tr) == 90 and not set(tr) & set(va)
    assert holdout_split(100, 10, seed=0) == (tr, va)
    assert len(holdout_split(100, 0.3, seed=1)[1]) == 30
    with pytest.raises(DataError, match="holdout"):
        holdout_split(10, 10, seed=0)


# ---------------------------------------------------------------------------------- CIFAR-10

def _write_cifar(root, n_per_batch=6, n_test=8):
    """A tiny cifar-10-batches-py folder in the real format (python pickles, bytes keys as
    the original python-2 pickles load under encoding='bytes')."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        d = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": rng.integers(0, 10, n_per_batch).tolist(),
             b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
             b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n_per_batch)]}
        with open(os.path.join(folder, f"data_batch_{i}"), "wb") as f:
            pickle.dump(d, f, protocol=2)
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": list(range(n_test)),
            b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), b"filenames": []}
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump(test, f, protocol=2)
    meta = {"num_cases_per_batch": n_per_batch, "num_vis": 3072,
            "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder, test


def test_cifar10_reads_the_standard_folder(tmp_path):
    folder, test = _write_cifar(str(tmp_path))
    for root in (str(tmp_path), folder):
        d = load_cifar10(root)
        assert d["train"][0].shape == (30, 3, 32, 32) and d["train"][1].shape == (30,)
        assert d["classes"][0] == "airplane" and len(d["classes"]) == 10
    # row-major 3072 = R plane, G plane, B plane of 32x32
    assert np.array_equal(d["test"][0][1], test[b"data"][1].reshape(3, 32, 32))
    s = TrainSettings(dataset="cifar10", data_dir=str(tmp_path))
    train, val, n = build_datasets(s, 32)
    assert (len(train), len(val), n) == (30, 8, 10)
    x, y = val[2]
    assert x.shape == (3, 32, 32) and y == 2
    held = build_datasets(s.replace(holdout=5), 32)
    assert (len(held[0]), len(held[1])) == (25, 5)


def test_cifar10_is_read_once_for_every_resolution_until_its_files_change(tmp_path):
    folder, _ = _write_cifar(str(tmp_path))
    s = TrainSettings(dataset="cifar10", data_dir=str(tmp_path))
    a, b = build_datasets(s, 32)[0], build_datasets(s, 40)[0]
    assert a.images.data_ptr() == b.images.data_ptr()  # one copy of the images
    assert a[0][0].shape == (3, 32, 32) and b[0][0].shape == (3, 40, 40)
    with open(os.path.join(folder, "data_batch_1"), "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d[b"data"][0] = 7
    with open(os.path.join(folder, "data_batch_1"), "wb") as f:
        pickle.dump(d, f, protocol=2)
    os.utime(os.path.join(folder, "data_batch_1"), ns=(0, 123))  # a changed file is read again
    c = build_datasets(s, 32)[0]
    assert c.images.data_ptr() != a.images.data_ptr() and int(c.images[0].max()) == 7


def test_cifar10_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar10(str(tmp_path / "nowhere"))
    folder, _ = _write_cifar(str(tmp_path))
    os.remove(os.path.join(folder, "data_batch_3"))
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(str(tmp_path))
    with open(os.path.join(folder, "data_batch_3"), "wb") as f:
        f.write(b"this is not a pickle")
    with pytest.raises(DataError, match="data_batch_3.*not a CIFAR-10"):
        load_cifar10(str(tmp_path))
    with open(os.path.join(folder, "data_batch_3"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="3072"):
        load_cifar10(str(tmp_path))


# ---------------------------------------------------------------------------------- ImageFolder

def _write_imagefolder(root, classes=("n01", "n02", "n03", "n04", "n05"), per_class=4, val=True):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in (("train", "val") if val else ("train",)):
        for c in classes:
            d = os.path.join(root, split, c)
            os.makedirs(d)
            for j in range(per_class):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(os.path.join(d, f"{j}.JPEG"))


def test_imagefolder_random_classes_and_holdout(tmp_path):
    _write_imagefolder(str(tmp_path))
    s = TrainSettings(dataset="imagefolder", data_dir=str(tmp_path), num_classes=3, data_seed=1)
    train, val, n = build_datasets(s, 16)
    assert n == 3 and len(train) == 12 and len(val) == 12
    x, y = train[0]
    assert x.shape == (3, 16, 16) and 0 <= y < 3
    idx = train.source_class_indices
    assert len(idx) == 3 and idx == sorted(idx) and max(idx) < 5
    assert train.classes == [f"n0{i + 1}" for i in idx]
    # another data seed picks other classes (the draw is seeded, not fixed)
    picks = {tuple(build_datasets(s.replace(data_seed=k), 16)[0].source_class_indices) for k in range(6)}
    assert len(picks) > 1
    held = build_datasets(s.replace(holdout=0.25), 16)
    assert (len(held[0]), len(held[1])) == (9, 3)
    assert held[1][0][0].shape == (3, 16, 16)


def test_imagefolder_bad_input(tmp_path):
    with pytest.raises(DataError, match="train"):
        build_datasets(TrainSettings(dataset="imagefolder", data_dir=str(tmp_path)), 16)
    _write_imagefolder(str(tmp_path), val=False)
    with pytest.raises(DataError, match="holdout"):
        build_datasets(TrainSettings(dataset="imagefolder", data_dir=str(tmp_path)), 16)
    with pytest.raises(DataError, match="num_classes: 9"):
        build_datasets(TrainSettings(dataset="imagefolder", data_dir=str(tmp_path), num_classes=9, holdout=2), 16)


# ---------------------------------------------------------------------------------- settings

def test_train_settings_strict_validation():
    assert TrainSettings.from_dict({}) == TrainSettings()
    assert TrainSettings.from_dict({"dataset": "embedded", "seed": 3}).seed == 3
    with pytest.raises(TrainConfigError, match=r"train\.bogus: unknown key"):
        TrainSettings.from_dict({"bogus": 1})
    with pytest.raises(TrainConfigError, match=r"train\.dataset: 'imagenet' is not one of"):
        TrainSettings.from_dict({"dataset": "imagenet"})
    with pytest.raises(TrainConfigError, match=r"train\.data_dir: required"):
        TrainSettings(dataset="cifar10")
    with pytest.raises(TrainConfigError, match=r"train\.num_classes"):
        TrainSettings(num_classes=10)
    with pytest.raises(TrainConfigError, match=r"train\.holdout"):
        TrainSettings(holdout=-1)
    with pytest.raises(TrainConfigError, match=r"train\.teacher"):
        TrainSettings(teacher={"weights": "x.pth"})
    with pytest.raises(TrainConfigError, match=r"train\.eval_batch_size"):
        TrainSettings(eval_batch_size=0)


# ---------------------------------------------------------------------------------- hostile / bad files

class _RunsShell:
    """A pickle payload: unpickling it calls os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_cifar10_batch_that_runs_code_is_refused_before_it_runs(tmp_path):
    folder, _ = _write_cifar(str(tmp_path))
    marker = tmp_path / "pwned"
    with open(os.path.join(folder, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": _RunsShell(f"touch {marker}"), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError) as info:
        load_cifar10(str(tmp_path))
    msg = str(info.value)
    assert "data_batch_1" in msg and f"'{os.system.__module__}.system'" in msg
    assert not marker.exists()  # the payload never ran
    # The real format (numpy arrays, python-3 protocol-2 bytes, lists, str keys) still loads.
    with open(os.path.join(folder, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": np.zeros((6, 3072), np.uint8), b"labels": [0] * 6}, f, protocol=2)
    assert load_cifar10(str(tmp_path))["train"][0].shape == (30, 3, 32, 32)


def _imagefolder_with(tmp_path, make_bad):
    """A valid 2-class ImageFolder plus one bad file made by ``make_bad(class_dir)``."""
    root = str(tmp_path / "if")
    _write_imagefolder(root, classes=("a", "b"), per_class=2)
    bad = make_bad(os.path.join(root, "train", "b"))
    return root, bad


def _corrupt(d):
    p = os.path.join(d, "corrupt.jpg")
    with open(p, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 definitely not a jpeg body" * 3)
    return p


def _truncated(d):
    from PIL import Image

    p = os.path.join(d, "truncated.png")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
    data = open(p, "rb").read()
    with open(p, "wb") as f:
        f.write(data[: len(data) // 2])
    return p


def _zero(d):
    p = os.path.join(d, "empty.jpg")
    open(p, "wb").close()
    return p


def _dangling(d):
    p = os.path.join(d, "gone.jpg")
    os.symlink(os.path.join(d, "does-not-exist.jpg"), p)
    return p


def _bomb(d):
    from PIL import Image

    p = os.path.join(d, "bomb.png")
    Image.new("1", (8000, 8000)).save(p)  # 64M pixels (> MAX_IMAGE_PIXELS), a few KB on disk
    return p


@pytest.mark.parametrize("make_bad, why", [(_corrupt, "cannot decode"), (_truncated, "cannot decode"),
                                           (_zero, "zero-byte"), (_dangling, "dangling symlink"),
                                           (_bomb, "exceeds the limit")])
def test_imagefolder_bad_file_is_a_clear_error_at_build_time(tmp_path, make_bad, why):
    root, bad = _imagefolder_with(tmp_path, make_bad)
    with pytest.raises(DataError) as info:
        build_datasets(TrainSettings(dataset="imagefolder", data_dir=root), 16)
    msg = str(info.value)
    assert bad in msg and why in msg and "1 of 5 image(s)" in msg


def test_imagefolder_symlink_loop_counts_images_once(tmp_path, caplog):
    root = str(tmp_path / "if")
    _write_imagefolder(root, classes=("a", "b"), per_class=3)
    s = TrainSettings(dataset="imagefolder", data_dir=root)
    plain = len(build_datasets(s, 16)[0])
    os.symlink(os.path.join(root, "train", "a"), os.path.join(root, "train", "a", "loop"))  # a -> a -> a ...
    os.symlink(os.path.join(root, "train"), os.path.join(root, "train", "b", "up"))  # b -> train -> a, b ...
    with caplog.at_level("WARNING"):
        looped = build_datasets(s.replace(data_seed=1), 16)[0]
    assert plain == 6 and len(looped) == 6 + 3  # b/up/a/* is a real, separate path once; loops add nothing
    assert "counted once" in caplog.text


# ---------------------------------------------------------------------------------- hardware

def test_device_auto_without_a_gpu_picks_cpu_and_says_why(monkeypatch, caplog):
    from fbnet_zoo.training import resolve_hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("INFO", logger="fbnet_zoo.training.settings"):
        hw = resolve_hardware(TrainSettings())
    assert TrainSettings().device == "auto" and hw.device == torch.device("cpu")
    assert not hw.amp and hw.channels_last  # bf16 autocast only on CUDA
    assert "device auto: cpu" in caplog.text and "no CUDA device" in caplog.text
    assert "training on cpu" in caplog.text
    # data-loader workers fit the CPUs given; in-memory sets need none; an explicit count wins
    assert resolve_hardware(TrainSettings(cpus=4)).num_workers == 0
    assert resolve_hardware(TrainSettings(cpus=4), "imagefolder").num_workers == 3
    assert resolve_hardware(TrainSettings(cpus=1), "imagefolder").num_workers == 1
    assert resolve_hardware(TrainSettings(cpus=4, num_workers=2), "imagefolder").num_workers == 2
    assert resolve_hardware(TrainSettings(device="cpu", amp=True)).amp is False
    with pytest.raises(TrainConfigError, match=r"train\.device: 'gpu0'"):
        TrainSettings(device="gpu0")


def test_settings_split_into_data_and_run():
    s = TrainSettings(dataset="cifar10", data_dir="/x", seed=3, device="cpu", holdout=100)
    assert s.data.dataset == "cifar10" and s.data.holdout == 100 and not hasattr(s.data, "device")
    assert s.run.device == "cpu" and s.run.seed == 3 and not hasattr(s.run, "dataset")
    assert set(s.to_dict()) == set(s.data.to_dict()) | set(s.run.to_dict())
