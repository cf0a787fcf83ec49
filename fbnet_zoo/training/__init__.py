"""fbnet_zoo.training: the training layer under the search, the CIFAR-10 experiment and final training.

recipe (``Recipe``), settings (``DataSettings`` / ``RunSettings`` / the flat ``TrainSettings``,
hardware resolution), optim, schedule, losses, ema, loop (``train_model``), data (datasets
behind a registry: embedded, cifar10, imagefolder), datasets (``build_datasets``), result
(``TrainResult``), cifar10 (the CIFAR-10 transfer experiment), distributed (torchrun / DDP:
process group, SyncBN, reductions), final (``train_final``: final training of a winner, the
library behind ``tools/train.py``), qat (``distill_qat``: quantization-aware training distilled
from the fp32 model, ``tools/train.py --qat``; imported on its own: it needs fbnet_zoo.quantize). Imports point down: nothing
here imports ``fbnet_zoo.search``.
"""

from .data import DATASETS, DataError, register_dataset
from .datasets import build_datasets, cached_datasets
from .ema import ModelEma
from .loop import CHECKPOINT_NAME, Diverged, evaluate, load_teacher, train_model
from .recipe import Recipe, RecipeError
from .result import TrainResult
from .settings import (DataSettings, Hardware, RunSettings, TrainConfigError, TrainSettings, resolve_device,
                       resolve_hardware)

__all__ = ["CHECKPOINT_NAME", "DATASETS", "DataError", "DataSettings", "Diverged", "Hardware", "ModelEma", "Recipe",
           "RecipeError", "RunSettings", "TrainConfigError", "TrainResult", "TrainSettings", "build_datasets",
           "cached_datasets", "evaluate", "load_teacher", "register_dataset", "resolve_device", "resolve_hardware",
           "train_model"]
