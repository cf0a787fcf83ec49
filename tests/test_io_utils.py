"""Crash-safe writes: the target holds the old content or the new, never a half; no temp file is left."""

import os

import pytest

from fbnet_zoo.io_utils import UnsafeNameError, atomic_path, atomic_write_bytes, atomic_write_text, output_file


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


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_respect_the_umask_and_keep_an_existing_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        with atomic_path(tmp_path / "model.ts") as tmp:
            with open(tmp, "w") as f:
                f.write("x")
        existing = tmp_path / "private.txt"
        existing.write_text("old")
        existing.chmod(0o600)
        atomic_write_text(existing, "new")
    finally:
        os.umask(old)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "model.ts").stat().st_mode & 0o777 == 0o666 & ~umask
    assert existing.stat().st_mode & 0o777 == 0o600 and existing.read_text() == "new"


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "..", ".", "", "  ", "a/b", "a\\b", "C:x", "a\nb", "x\x00",
                                  ".hidden", "n" * 256])
def test_output_file_refuses_names_that_are_not_one_plain_file_name(tmp_path, name):
    with pytest.raises(UnsafeNameError, match=r"arch name: .* \(output folder .*\); allowed: one file name"):
        output_file(tmp_path, name, ".ts", what="arch name")
    assert isinstance(UnsafeNameError("x"), ValueError)


def test_output_file_joins_plain_names_inside_the_folder(tmp_path):
    assert output_file(tmp_path, "FBNetV3-B_timm 1.0", ".onnx") == os.path.join(tmp_path, "FBNetV3-B_timm 1.0.onnx")
    assert output_file("", "x", ".ts") == "x.ts"
    with pytest.raises(UnsafeNameError, match="leaves the output folder"):
        output_file(tmp_path, "x", "/../../y")
