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
