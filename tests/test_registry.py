"""Names, user arch dirs and torch.hub."""

import os

import pytest
import torch

import fbnet_zoo
from fbnet_zoo import UnknownModelError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_zoo_lists_fbnetv3_a_to_g():
    names = fbnet_zoo.list_models("fbnetv3_?")
    assert names == [f"FBNetV3-{c}" for c in "ABCDEFG"]


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownModelError) as e:
        fbnet_zoo.get_spec("FBNetV3-H")
    assert "FBNetV3-" in str(e.value) and "did you mean" in str(e.value)
    with pytest.raises(UnknownModelError, match="resnet50"):
        fbnet_zoo.build_model("resnet50")


def test_user_arch_dir_and_env_var(tmp_path, monkeypatch):
    spec = fbnet_zoo.scale("FBNetV3-A", width=0.5, name="MyNet-Half")
    spec.save_yaml(tmp_path / "mynet_half.yaml")
    assert fbnet_zoo.register_arch_dir(tmp_path) == ["mynet_half"]
    assert fbnet_zoo.get_spec("mynet-half") == spec
    other = tmp_path / "env"
    other.mkdir()
    fbnet_zoo.scale("FBNetV3-A", depth=2, name="EnvNet").save_yaml(other / "envnet.yaml")
    monkeypatch.setenv("FBNET_ZOO_ARCH_DIRS", str(other))
    assert "EnvNet" in fbnet_zoo.list_models()
    with pytest.raises(fbnet_zoo.SpecError, match="not a directory"):
        fbnet_zoo.register_arch_dir(tmp_path / "nope")


def test_register_refuses_silent_overwrite():
    spec = fbnet_zoo.scale("FBNetV3-A", width=0.75, name="Clash")
    fbnet_zoo.register_arch(spec)
    fbnet_zoo.register_arch(spec)  # the same spec again is fine
    with pytest.raises(fbnet_zoo.SpecError, match="already registered"):
        fbnet_zoo.register_arch(spec.replace(input_size=192))
    fbnet_zoo.register_arch(spec.replace(input_size=192), overwrite=True)
    assert fbnet_zoo.get_spec("clash").input_size == 192


def test_build_model_spec_overrides():
    model = fbnet_zoo.build_model("FBNetV3-A", num_classes=3, input_size=160, dropout=0.0)
    assert model.spec.input_size == 160 and model.classifier.fc.out_features == 3


def test_torch_hub_local_exposes_every_model():
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("hubconf", os.path.join(REPO, "hubconf.py"))
    hubconf = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(hubconf)
    for name in fbnet_zoo.list_models():
        assert callable(getattr(hubconf, fbnet_zoo.normalize_name(name)))
    model = torch.hub.load(REPO, "fbnetv3_e", source="local", num_classes=7, trust_repo=True)
    assert model.spec.name == "FBNetV3-E" and model.classifier.fc.out_features == 7


# ---- issue 16 item 9: one bad YAML in an environment folder
def _arch_dir_with_a_bad_file(tmp_path):
    d = tmp_path / "archs"
    d.mkdir()
    fbnet_zoo.scale("FBNetV3-A", width=0.5, name="AaaBefore").save_yaml(d / "a_before.yaml")
    (d / "m_bad.yaml").write_text("name: Broken\ninput_size: 224\nstages: [[{type: ir, out_channels: 8, stride: 2.0}]]\n")
    fbnet_zoo.scale("FBNetV3-A", width=0.75, name="ZzzAfter").save_yaml(d / "z_after.yaml")
    return d


def test_a_bad_file_in_the_arch_env_dirs_is_skipped_the_same_way_every_time(tmp_path, monkeypatch, caplog):
    d = _arch_dir_with_a_bad_file(tmp_path)
    monkeypatch.setenv("FBNET_ZOO_ARCH_DIRS", str(d))
    with caplog.at_level("WARNING"):
        for _ in range(3):  # built-in models, files before and after the bad one: every call alike
            assert fbnet_zoo.get_spec("FBNetV3-A").name == "FBNetV3-A"
            assert fbnet_zoo.get_spec("AaaBefore").name == "AaaBefore"
            assert fbnet_zoo.get_spec("ZzzAfter").name == "ZzzAfter"
            with pytest.raises(UnknownModelError, match=r"m_bad.yaml: stages\[0\]\[0\].stride"):
                fbnet_zoo.get_spec("Broken")
    assert "m_bad.yaml" in caplog.text and "FBNET_ZOO_ARCH_DIRS" in caplog.text
    # an explicit registration of the same folder fails, naming the file, and registers nothing of it
    monkeypatch.delenv("FBNET_ZOO_ARCH_DIRS")
    fresh = tmp_path / "explicit"
    fresh.mkdir()
    for f in d.iterdir():
        (fresh / f.name).write_text(f.read_text().replace("AaaBefore", "Explicit1").replace("ZzzAfter", "Explicit2"))
    with pytest.raises(fbnet_zoo.SpecError, match="m_bad.yaml"):
        fbnet_zoo.register_arch_dir(fresh)
    assert not fbnet_zoo.list_models("explicit*")


def test_a_bad_checkpoint_source_file_is_skipped_the_same_way_every_time(tmp_path, monkeypatch, caplog):
    from fbnet_zoo import checkpoints

    d = tmp_path / "sources"
    d.mkdir()
    (d / "a_good.yaml").write_text("model: GoodNet\nsources:\n  mine: {url: 'https://example.com/a.pth'}\n")
    (d / "m_bad.yaml").write_text("model: BadNet\nsources:\n  mine: {url: not-a-url}\n")
    (d / "z_good.yaml").write_text("model: LaterNet\nsources:\n  mine: {url: 'https://example.com/z.pth'}\n")
    monkeypatch.setenv("FBNET_ZOO_CHECKPOINT_DIRS", str(d))
    with caplog.at_level("WARNING"):
        for _ in range(3):
            assert checkpoints.get_source("FBNetV3-B-timm").name == "timm"  # built-in sources unaffected
            assert checkpoints.get_source("GoodNet").url.endswith("a.pth")
            assert checkpoints.get_source("LaterNet").url.endswith("z.pth")
            with pytest.raises(checkpoints.CheckpointError, match=r"m_bad.yaml: BadNet.sources.mine.url"):
                checkpoints.get_source("BadNet")
    assert "m_bad.yaml" in caplog.text


def test_duplicate_keys_in_a_zoo_yaml_are_refused(tmp_path):
    (tmp_path / "dup.yaml").write_text("name: DupNet\ninput_size: 224\nname: Other\n"
                                       "stages: [[{type: conv, out_channels: 8}]]\n")
    with pytest.raises(fbnet_zoo.SpecError, match="dup.yaml: .*duplicate key 'name'"):
        fbnet_zoo.register_arch_dir(tmp_path)
