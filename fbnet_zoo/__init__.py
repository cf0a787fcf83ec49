"""fbnet_zoo: FBNetV3 models as data, one builder, exact FLOPs/params.

    >>> import fbnet_zoo
    >>> model = fbnet_zoo.build_model("FBNetV3-E", num_classes=1000)
    >>> fbnet_zoo.count_flops("FBNetV3-E")        # fvcore convention, no tracing
    785869248
"""

from .complexity import complexity, count_flops, count_params, fvcore_flops
from .errors import FBNetZooError, SpecError, UnknownModelError
from .factory import build_model
from .model import FBNet
from .registry import get_spec, list_models, load_spec, normalize_name, register_arch, register_arch_dir
from .scaling import scale
from .spec import ArchSpec, BlockSpec, make_divisible

__version__ = "0.1.0"

__all__ = [
    "ArchSpec", "BlockSpec", "FBNet", "FBNetZooError", "SpecError", "UnknownModelError", "build_model",
    "complexity", "count_flops", "count_params", "fvcore_flops", "get_spec", "list_models", "load_spec",
    "make_divisible", "normalize_name", "register_arch", "register_arch_dir", "scale",
]
