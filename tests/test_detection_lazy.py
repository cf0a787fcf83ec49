"""detectron2 LazyConfig files (model_configs/detection/lazy/*.py) that call our
build_backbone and head builders: each instantiates to the same model as its YAML twin, and
trains one step (then evaluates) on the toy COCO set through tools/train_net.py."""

import glob
import importlib.util
import os

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is not on PyPI; see README: Detection)")

from detectron2.config import LazyConfig, get_cfg, instantiate  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from fbnet_zoo.detection import d2  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAZY_DIR = os.path.join(ROOT, "model_configs", "detection", "lazy")
LAZY = sorted(os.path.basename(p) for p in glob.glob(os.path.join(LAZY_DIR, "*.py")))
TWINS = {"faster_rcnn_fbnet_C4.py": "faster_rcnn_fbnetv3a_C4.yaml", "mask_rcnn_fbnet_C4.py": "mask_rcnn_fbnetv3a_C4.yaml",
         "faster_rcnn_fbnet_fpn.py": "faster_rcnn_fbnetv3g_fpn.yaml", "mask_rcnn_fbnet_fpn.py": "mask_rcnn_fbnetv3g_fpn.yaml"}


def test_every_lazy_config_has_a_yaml_twin():
    assert sorted(TWINS) == LAZY


@pytest.mark.parametrize("name", LAZY)
def test_lazy_config_instantiates_the_yaml_model(name):
    cfg = LazyConfig.load(os.path.join(LAZY_DIR, name))
    torch.manual_seed(0)
    lazy_model = instantiate(cfg.model)
    yaml_cfg = get_cfg()
    d2.add_fbnet_config(yaml_cfg)
    yaml_cfg.merge_from_file(os.path.join(ROOT, "model_configs", "detection", TWINS[name]))
    yaml_cfg.MODEL.DEVICE = "cpu"
    yaml_model = build_model(yaml_cfg)
    ours = {k: tuple(v.shape) for k, v in lazy_model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in yaml_model.state_dict().items()}
    assert ours == theirs
    assert lazy_model.input_format == yaml_model.input_format
    # the arch is named once: changing it changes every part
    cfg.fbnet.arch = "FBNetV3-E"
    other = instantiate(cfg.model)
    for part in ("backbone", "proposal_generator", "roi_heads"):
        assert sum(p.numel() for p in getattr(other, part).parameters()) != \
            sum(p.numel() for p in getattr(lazy_model, part).parameters()), part


def _train_net():
    spec = importlib.util.spec_from_file_location("fbnet_train_net", os.path.join(ROOT, "tools", "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", LAZY)
def test_lazy_config_trains_one_step_on_toy_coco(name, tmp_path):
    from fbnet_zoo.detection.toy_data import make_toy_coco

    train_net = _train_net()
    make_toy_coco(str(tmp_path / "toy"), num_images=4, image_size=(96, 128), seed=2)  # small: the step, then eval
    out = tmp_path / "out"
    args = train_net.build_parser().parse_args([
        "--config-file", os.path.join(LAZY_DIR, name), "--toy-coco", str(tmp_path / "toy"),
        f"train.output_dir={out}", "train.max_iter=1", "train.eval_period=0", "dataloader.train.total_batch_size=2",
        "dataloader.train.mapper.augmentations=[]", "dataloader.test.mapper.augmentations=[]",
        "model.proposal_generator.post_nms_topk=[64,32]", "model.roi_heads.batch_size_per_image=32"])
    trainer = train_net.main(args)
    assert trainer.iter == 1 and os.path.exists(out / "model_final.pth")
    losses = trainer.storage.latest()
    assert {"loss_rpn_cls", "loss_cls", "loss_box_reg"} <= set(losses)
    assert ("loss_mask" in losses) == name.startswith("mask")
    assert all(torch.isfinite(torch.tensor(v[0])) for k, v in losses.items() if k.startswith("loss"))
