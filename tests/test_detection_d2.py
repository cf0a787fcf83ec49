"""detectron2 adapters (skipped where detectron2 is not installed; CI has none).

Every shipped config builds and runs a train step and an inference step on the toy COCO
set; a 100-iteration smoke training lowers the loss; COCO evaluation returns metrics; output
shapes/strides are right for every zoo arch; bad input fails at build time."""

import glob
import os

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is not on PyPI; see README: Detection)")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader  # noqa: E402
from detectron2.data.build import get_detection_dataset_dicts  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import fbnet_zoo  # noqa: E402
from fbnet_zoo.detection import DetectionError  # noqa: E402
from fbnet_zoo.detection import d2  # noqa: E402
from fbnet_zoo.detection.toy_data import make_toy_coco  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model_configs", "detection")
SHIPPED = sorted(os.path.relpath(p, CONFIG_DIR) for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))
                 + glob.glob(os.path.join(CONFIG_DIR, "authors", "*.yaml"))
                 if not os.path.basename(p).startswith(("Base-", "coco_schedule", "keypoint_", "qat_")))
# (keypoint configs need a keypoint data set: tests/test_detection_keypoint.py; the QAT config: test_detection_qat.py)


@pytest.fixture(autouse=True)
def event_storage():
    """detectron2's training-time losses log into an EventStorage, as inside its trainers."""
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        yield


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    paths = make_toy_coco(str(tmp_path_factory.mktemp("toy_coco_d2")), num_images=4, image_size=(96, 128), seed=1)
    return d2.register_coco_dataset("fbnet_toy_coco_test", paths["json"], paths["images"], paths["sem_seg"])


def tiny_cfg(name, toy, **opts):
    cfg = get_cfg()
    d2.add_fbnet_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, name))
    semantic = cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor"
    dataset = toy["sem_seg"] if semantic else toy["instances"]
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", (dataset,), "DATASETS.TEST", (dataset,),
        "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2,
        "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 128, "INPUT.MIN_SIZE_TEST", 96,
        "INPUT.MAX_SIZE_TEST", 128, "INPUT.RANDOM_FLIP", "none",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
        "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 32,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 64,
        "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 4, "TEST.DETECTIONS_PER_IMAGE", 20,
    ])
    if opts:
        cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def batch(cfg, n=2):
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN)
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(dict(d)) for d in dicts[:n]]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_builds_trains_and_infers(name, toy):
    torch.manual_seed(0)
    cfg = tiny_cfg(name, toy)
    model = build_model(cfg)
    inputs = batch(cfg)
    model.train()
    losses = model(inputs)
    expected = {"loss_sem_seg"} if "semantic" in name else {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    if cfg.MODEL.MASK_ON:
        expected.add("loss_mask")
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model([{"image": inputs[0]["image"], "height": 96, "width": 128}])[0]
    if "semantic" in name:
        assert out["sem_seg"].shape == (4, 96, 128)
    else:
        inst = out["instances"]
        assert inst.image_size == (96, 128) and len(inst) <= 20
        if cfg.MODEL.MASK_ON:
            assert inst.pred_masks.shape[1:] == (96, 128)


def test_100_iteration_smoke_training_lowers_loss_and_eval_returns_coco_metrics(toy, tmp_path):
    """detectron2's own loop, loader, SGD and warm-up schedule; about a minute on 2 CPU cores."""
    from detectron2.engine import SimpleTrainer, hooks
    from detectron2.engine.train_loop import HookBase
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset
    from detectron2.solver import build_lr_scheduler, build_optimizer

    torch.manual_seed(0)
    cfg = tiny_cfg("mask_rcnn_fbnetv3a_C4.yaml", toy, **{
        "SOLVER.BASE_LR": 0.02, "SOLVER.WARMUP_ITERS": 10, "SOLVER.MAX_ITER": 100, "SEED": 0})
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), optimizer)
    losses = []

    class RecordLoss(HookBase):
        def after_step(self):
            losses.append(self.trainer.storage.history("total_loss").latest())

    trainer.register_hooks([hooks.LRScheduler(optimizer, build_lr_scheduler(cfg, optimizer)), RecordLoss()])
    trainer.train(0, 100)
    assert len(losses) == 100
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    evaluator = COCOEvaluator(toy["instances"], output_dir=str(tmp_path), distributed=False)
    loader = build_detection_test_loader(cfg, toy["instances"])
    results = inference_on_dataset(model, loader, evaluator)
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75"} <= set(results[task])


@pytest.mark.parametrize("name", fbnet_zoo.list_models("fbnetv3*"))
def test_backbone_shapes_and_strides_for_every_zoo_arch(name):
    for variant in ("c4", "fpn"):
        bb = fbnet_zoo.detection.build_backbone(name, variant=variant, fpn_channels=32)
        bb.eval()
        with torch.no_grad():
            out = bb(torch.zeros(1, 3, 128, 160))
        shapes = bb.output_shape()
        assert list(out) == list(shapes)
        if variant == "c4":
            assert list(shapes) == ["res4"] and shapes["res4"].stride == 16
        else:
            assert list(shapes) == ["p2", "p3", "p4", "p5", "p6"]
            assert [s.stride for s in shapes.values()] == [4, 8, 16, 32, 64]
        for k, v in out.items():
            assert v.shape[1] == shapes[k].channels
            # reference archs pad some stride-2 depthwise convs asymmetrically: within one pixel
            assert abs(v.shape[2] - 128 / shapes[k].stride) <= 1 and abs(v.shape[3] - 160 / shapes[k].stride) <= 1


def test_lazy_config_gets_the_same_classes():
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    bb = instantiate(L(d2.FBNetBackbone)(arch="FBNetV3-A", out_features=["res4"], norm="FrozenBN", freeze_at=2))
    assert isinstance(bb, d2.FBNetBackbone) and bb.output_shape()["res4"].stride == 16
    assert not any(p.requires_grad for p in bb.body.stage1.parameters())
    assert any(p.requires_grad for p in bb.body.stage4.parameters())


def test_bad_input_fails_at_build_time(toy):
    with pytest.raises(DetectionError, match="unknown model 'FBNetV3-Q'"):
        build_model(tiny_cfg("faster_rcnn_fbnetv3a_C4.yaml", toy, **{"MODEL.FBNET.ARCH": "FBNetV3-Q"}))
    with pytest.raises(DetectionError, match="'res6' is not a feature"):
        build_model(tiny_cfg("faster_rcnn_fbnetv3g_fpn.yaml", toy, **{"MODEL.FPN.IN_FEATURES": ["res4", "res5", "res6"]}))
    with pytest.raises(DetectionError, match="MODEL.FBNET.NORM"):
        build_model(tiny_cfg("faster_rcnn_fbnetv3a_C4.yaml", toy, **{"MODEL.FBNET.NORM": "BatchNorm"}))
    with pytest.raises(DetectionError, match="no stride-16 stage"):
        d2.build_backbone({"name": "tiny", "input_size": 64, "stages": [[{"type": "conv", "out_channels": 8, "stride": 2}]]})


def test_d2go_checkpoint_keys_round_trip(toy):
    from fbnet_zoo.detection.convert import d2go_key_map, d2go_to_ours, ours_to_d2go

    cfg = tiny_cfg("faster_rcnn_fbnetv3a_C4.yaml", toy, **{"MODEL.FBNET.ARCH": "FBNetV3-A-d2go"})
    model = build_model(cfg)
    ours = model.state_dict()
    theirs = ours_to_d2go(ours, model)
    assert len(theirs) == len(ours)
    for key in ("backbone.body.trunk0.fbnetv2_0_0.conv.weight", "backbone.body.trunk0.fbnetv2_0_0.conv.bias",
                "backbone.body.trunk2.fbnetv2_2_0.se.se.0.conv.weight", "backbone.body.trunk3.fbnetv2_3_9.pwl.bn.weight",
                "proposal_generator.rpn_head.rpn_feature.0.fbnetv2_0_4.dw.conv.weight",
                "proposal_generator.rpn_head.rpn_regressor.cls_logits.weight",
                "roi_heads.box_head.roi_box_conv.0.fbnetv2_0_5.se.se.1.weight",
                "roi_heads.box_predictor.cls_score.weight"):
        assert key in theirs, key
    # d2go's depthwise convs have no BN: no dw.bn keys anywhere
    assert not any(".dw.bn." in k for k in theirs)
    back = d2go_to_ours(theirs, model)
    assert list(back) == list(ours) and all(torch.equal(back[k], ours[k]) for k in ours)
    model.load_state_dict(back)
    from fbnet_zoo.converters import CheckpointError

    broken = dict(theirs)
    broken["roi_heads.box_head.roi_box_conv.0.fbnetv2_0_99.pw.conv.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="fbnetv2_0_99"):
        d2go_to_ours(broken, model)
    assert len(d2go_key_map(model)) == len(ours)


def test_d2go_checkpoint_file_loads_through_the_verified_loader(toy, tmp_path):
    """A checkpoint as d2go writes it ({"model": d2go-keyed tensors}) loads from a path or a
    file:// URL into a fresh detector built from the authors' config, and reproduces the
    original's weights exactly; a detector that reads RGB / ImageNet-normalised input is refused."""
    from fbnet_zoo.detection import load_d2go_weights
    from fbnet_zoo.detection.convert import ours_to_d2go

    cfg = tiny_cfg("authors/faster_rcnn_fbnetv3a_C4.yaml", toy)
    source = build_model(cfg)
    path = tmp_path / "model_final.pth"
    torch.save({"model": ours_to_d2go(source.state_dict(), source), "iteration": 1}, path)
    for where in (str(path), path.as_uri()):
        target = build_model(cfg)
        result = load_d2go_weights(target, where, cache=str(tmp_path / "cache"))
        assert result.format == "d2go_detection"
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), key
    ours_cfg = tiny_cfg("faster_rcnn_fbnetv3a_C4.yaml", toy, **{"MODEL.FBNET.ARCH": "FBNetV3-A-d2go"})
    with pytest.raises(DetectionError, match="INPUT.FORMAT: 'RGB' is not 'BGR'.*MODEL.PIXEL_STD"):
        load_d2go_weights(build_model(ours_cfg), str(path))


@pytest.mark.parametrize("source, config, mask", [
    ("FBNetV3-A-d2go:faster_rcnn_c4", "authors/faster_rcnn_fbnetv3a_C4.yaml", False),
    ("FBNetV3-A-d2go:mask_rcnn_c4", "authors/mask_rcnn_fbnetv3a_C4.yaml", True),
    ("FBNetV3-G-d2go:faster_rcnn_fpn", "authors/faster_rcnn_fbnetv3g_fpn.yaml", False),
    ("FBNetV3-G-d2go:mask_rcnn_fpn", "authors/mask_rcnn_fbnetv3g_fpn.yaml", True)])
def test_each_d2go_source_names_the_authors_config_and_its_published_ap(source, config, mask):
    from fbnet_zoo.checkpoints import get_source

    cfg = d2.d2go_config(source)
    assert d2.d2go_config_path(source).endswith(config)
    assert cfg.MODEL.FBNET.D2GO_WEIGHTS == source
    assert cfg.INPUT.FORMAT == "BGR" and list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]
    assert cfg.MODEL.MASK_ON == mask
    published = get_source(*source.split(":")).published[0]
    assert published["box_ap"] > 20 and (("mask_ap" in published) == mask)
    if "fpn" in source:
        assert (cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.FPN.NORM) == (128, "naiveSyncBN")
        assert list(cfg.MODEL.ROI_HEADS.IN_FEATURES) == ["p3", "p4", "p5", "p6"]
    else:
        assert list(cfg.MODEL.ANCHOR_GENERATOR.SIZES) == [[32, 64, 96, 128, 160]]
        assert (cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TEST) == (1000, 30)


@pytest.mark.parametrize("config, task, metric", [("faster_rcnn_fbnetv3a_C4.yaml", "bbox", "AP"),
                                                   ("semantic_fbnetv3g_fpn.yaml", "sem_seg", "mIoU")])
def test_train_net_cli_trains_then_evaluates(config, task, metric, tmp_path):
    import importlib.util

    path = os.path.join(os.path.dirname(CONFIG_DIR), "..", "tools", "train_net.py")
    spec = importlib.util.spec_from_file_location("fbnet_train_net", path)
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    common = ["--config-file", os.path.join(CONFIG_DIR, config),
              "--toy-coco", str(tmp_path / "toy"), "OUTPUT_DIR", str(tmp_path / "out"),
              "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
              "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96",
              "INPUT.MAX_SIZE_TEST", "128", "MODEL.RPN.POST_NMS_TOPK_TEST", "20"]
    train_net.main(train_net.build_parser().parse_args(common))
    assert os.path.exists(tmp_path / "out" / "model_final.pth")
    res = train_net.main(train_net.build_parser().parse_args(
        ["--eval-only"] + common + ["MODEL.WEIGHTS", str(tmp_path / "out" / "model_final.pth")]))
    assert {metric} <= set(res[task])


def test_train_net_config_errors_are_one_line(tmp_path):
    """A missing config file, an unknown key or an odd override list were yacs' AssertionError /
    KeyError tracebacks; now a DetectionError the tool prints as one line."""
    import importlib.util

    path = os.path.join(os.path.dirname(CONFIG_DIR), "..", "tools", "train_net.py")
    spec = importlib.util.spec_from_file_location("fbnet_train_net_errors", path)
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    config = os.path.join(CONFIG_DIR, "faster_rcnn_fbnetv3a_C4.yaml")
    for argv, message in ((["--config-file", str(tmp_path / "none.yaml")], "none.yaml' does not exist"),
                          (["--config-file", config, "MODEL.FBNET.NOSUCH", "1"], "Non-existent key: MODEL.FBNET.NOSUCH"),
                          (["--config-file", config, "MODEL.FBNET.NORM"], "Override list has odd length")):
        with pytest.raises(DetectionError, match=f"config: .*{message}"):
            train_net.main(train_net.build_parser().parse_args(["--eval-only"] + argv))
    assert not os.path.exists(tmp_path / "none.yaml")


def test_a_missing_coco_folder_is_one_line_naming_the_path_and_the_layout(tmp_path, monkeypatch):
    """COCO absent where detectron2 looks ($DETECTRON2_DATASETS, default ./datasets) was pycocotools'
    FileNotFoundError traceback once the test loader was built (after training, for a training run)."""
    import importlib.util

    path = os.path.join(os.path.dirname(CONFIG_DIR), "..", "tools", "train_net.py")
    spec = importlib.util.spec_from_file_location("fbnet_train_net_data", path)
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    monkeypatch.chdir(tmp_path)  # detectron2's built-in COCO paths are relative: datasets/coco/...
    yaml = ["--config-file", os.path.join(CONFIG_DIR, "faster_rcnn_fbnetv3a_C4.yaml"), "OUTPUT_DIR", str(tmp_path)]
    layout = r"expected \$DETECTRON2_DATASETS \(default: ./datasets\) holding coco/annotations/instances_"
    for argv, option, split in ((["--eval-only"], "DATASETS.TEST", "val"), ([], "DATASETS.TRAIN", "train")):
        if not argv:
            os.makedirs("datasets/coco/annotations")
            open("datasets/coco/annotations/instances_val2017.json", "w").close()
            os.makedirs("datasets/coco/val2017")
        with pytest.raises(DetectionError, match=rf"^{option}: data set 'coco_2017_{split}': annotation file "
                                                 rf"datasets/coco/annotations/instances_{split}2017.json does not "
                                                 rf"exist; {layout}"):
            train_net.main(train_net.build_parser().parse_args(argv + yaml))
    with pytest.raises(DetectionError, match=r"^DATASETS.TEST: 'my_coco' is not a registered data set"):
        train_net.main(train_net.build_parser().parse_args(["--eval-only"] + yaml + ["DATASETS.TEST", "('my_coco',)"]))
    lazy_config = os.path.join(CONFIG_DIR, "lazy", "faster_rcnn_fbnet_C4.py")
    with pytest.raises(DetectionError, match=r"^dataloader.train.dataset.names: data set 'coco_2017_train': annotation "
                                             r"file datasets/coco/annotations/instances_train2017.json does not exist"):
        train_net.main(train_net.build_parser().parse_args(["--config-file", lazy_config]))
    with pytest.raises(DetectionError, match=r"data set 'mine': annotation file .*none.json does not exist; expected "
                                             r"a COCO instances JSON file and the folder of the images it lists"):
        d2.register_coco_dataset("mine", str(tmp_path / "none.json"), str(tmp_path))
    assert "mine" not in d2.data.DatasetCatalog.list()


def test_model_weights_pkl_is_refused_and_never_unpickled(tmp_path):
    """MODEL.WEIGHTS went through detectron2's checkpointer, which pickle.loads .pkl files: a
    hostile one ran code under train_net --eval-only (and lazy configs' init_checkpoint)."""
    import pickle

    from fbnet_zoo.checkpoints import CheckpointError
    from fbnet_zoo.detection.d2.model import SafeDetectionCheckpointer

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {}, "__author__": Payload()}, f, protocol=2)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"evil.pkl: refused: .*pickle, which can run code"):
        SafeDetectionCheckpointer(model).load(str(evil))
    assert not (tmp_path / "ran").exists()
    good = tmp_path / "good.pth"
    torch.save({"model": {k: torch.ones_like(v) for k, v in model.state_dict().items()}}, good)
    SafeDetectionCheckpointer(model).load(str(good))
    assert bool((model.weight == 1).all())


def test_model_weights_that_do_not_fit_the_backbone_are_refused_not_half_loaded(toy, tmp_path):
    """MODEL.WEIGHTS went through detectron2's checkpointer, which loads what fits and only logs
    the rest: a checkpoint of another arch trained (or --eval-only evaluated) a partly random
    backbone. Training now refuses a backbone that does not fit and still takes what detectron2
    users fine-tune from (another class count, backbone-only weights); evaluation needs all."""
    import importlib.util

    from fbnet_zoo.detection.d2.model import SafeDetectionCheckpointer

    torch.manual_seed(0)
    model = build_model(tiny_cfg("faster_rcnn_fbnetv3a_C4.yaml", toy))
    other = build_model(tiny_cfg("faster_rcnn_fbnetv3a_C4.yaml", toy, **{"MODEL.FBNET.ARCH": "FBNetV3-D"}))
    torch.save({"model": other.state_dict()}, tmp_path / "other_arch.pth")
    with pytest.raises(DetectionError, match=r"other_arch.pth: does not fit this detector's backbone: unexpected \d+ "
                                             r"key\(s\): backbone\..*; shape mismatch in \d+ key\(s\): backbone\."):
        SafeDetectionCheckpointer(model).load(str(tmp_path / "other_arch.pth"))

    five = build_model(tiny_cfg("faster_rcnn_fbnetv3a_C4.yaml", toy, **{"MODEL.ROI_HEADS.NUM_CLASSES": 5}))
    state = {k: v + 1 if v.is_floating_point() else v for k, v in five.state_dict().items()}
    torch.save({"model": state}, tmp_path / "five_classes.pth")
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("backbone.")}}, tmp_path / "backbone.pth")
    for name in ("five_classes.pth", "backbone.pth"):  # fine-tuning: the backbone loads, the heads may differ
        SafeDetectionCheckpointer(model).load(str(tmp_path / name))
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if k.startswith("backbone."))
    with pytest.raises(DetectionError, match=r"five_classes.pth: does not fit this detector: shape mismatch in 4 "
                                             r"key\(s\): roi_heads.box_predictor.bbox_pred.bias"):
        SafeDetectionCheckpointer(model, fit="all").load(str(tmp_path / "five_classes.pth"))

    path = os.path.join(os.path.dirname(CONFIG_DIR), "..", "tools", "train_net.py")
    spec = importlib.util.spec_from_file_location("fbnet_train_net_weights", path)
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    with pytest.raises(DetectionError, match=r"backbone.pth: does not fit this detector: missing \d+ key\(s\): "
                                             r"proposal_generator"):
        train_net.main(train_net.build_parser().parse_args([
            "--eval-only", "--config-file", os.path.join(CONFIG_DIR, "faster_rcnn_fbnetv3a_C4.yaml"),
            "--toy-coco", str(tmp_path / "toy"), "OUTPUT_DIR", str(tmp_path / "out"),
            "MODEL.WEIGHTS", str(tmp_path / "backbone.pth")]))


def test_c4_box_head_builds_only_its_stages_and_reuses_the_backbone_read(toy, tmp_path, monkeypatch):
    """The C4 RoI box head is the stride-32 stages alone (no second FBNet), with the
    checkpoint's weights for them, from the same read as the backbone's."""
    from fbnet_zoo import checkpoints, model as model_module
    from fbnet_zoo.detection import core

    spec = fbnet_zoo.get_spec("FBNetV3-A")
    torch.manual_seed(3)
    reference = model_module.FBNet(spec)
    for m in reference.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
    path = tmp_path / "fbnetv3_a.pth"
    torch.save(reference.state_dict(), path)

    reads, builds = [], []
    real_read, real_init = checkpoints.load_checkpoint, model_module.FBNet.__init__
    monkeypatch.setattr(checkpoints, "load_checkpoint", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    monkeypatch.setattr(model_module.FBNet, "__init__", lambda self, *a, **k: builds.append(a) or real_init(self, *a, **k))
    model = build_model(tiny_cfg("faster_rcnn_fbnetv3a_C4.yaml", toy, **{"MODEL.FBNET.PRETRAINED": str(path)}))
    assert len(reads) == 1 and len(builds) == 1
    _, box = core.c4_split(spec)
    head = model.roi_heads.box_head.roi_box_conv
    assert [n for n, _ in head.named_children()] == [f"stage{i}" for i in box]
    for i in box:
        for k, v in reference.stages[i].state_dict().items():
            assert torch.equal(getattr(head, f"stage{i}").state_dict()[k], v), (i, k)
    own = sum(p.numel() for p in head.parameters())
    assert own == sum(p.numel() for i in box for p in reference.stages[i].parameters())
