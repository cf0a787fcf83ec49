"""Crash-safe writes: the target holds the old content or the new, never a half; no temp file is left."""

import os

import pytest

from fbnet_zoo.io_utils import atomic_path, atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["f.txt"]


def test_atomic_path_renames_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.onnx"]
    with atomic_path(target, suffix=".png") as tmp:
        assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "w") as f:
            f.write("new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["model.onnx"]
