"""torch.hub entry points: every zoo model by its snake-case name.

    torch.hub.load("<owner>/fbnet_zoo", "fbnetv3_e", num_classes=1000, pretrained=False)
    torch.hub.load("/path/to/fbnet_zoo", "fbnetv3_a", source="local")
"""

dependencies = ["torch", "yaml", "iopath"]

import fbnet_zoo as _zoo  # noqa: E402


def _entry(name):
    def entry(pretrained=False, num_classes=1000, **overrides):
        return _zoo.build_model(name, num_classes=num_classes, pretrained=pretrained, **overrides)

    entry.__name__ = _zoo.normalize_name(name)
    entry.__doc__ = f"{name} from the fbnet_zoo registry (see fbnet_zoo.build_model for options)."
    return entry


for _name in _zoo.list_models():
    globals()[_zoo.normalize_name(_name)] = _entry(_name)
