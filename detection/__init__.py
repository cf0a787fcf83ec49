"""fbnet_zoo.detection: detectron2 and torchvision adapters for FBNet backbones."""
