"""Deployment: fold BatchNorm into convs, channels_last, TorchScript and ONNX export.

    >>> model = fbnet_zoo.build_model("FBNetV3-B-timm", pretrained=True)
    >>> fast = prepare_for_deploy(model, channels_last=True)      # eval copy, BN folded
    >>> export_torchscript(model, "fbnetv3_b.ts")                  # folds BN first
    >>> export_onnx(model, "fbnetv3_b.onnx"); check_onnx("fbnetv3_b.onnx", model)

Folding rewrites every conv -> BatchNorm pair of our blocks (``ConvBNAct``) into one conv
with a bias, using the BN's running statistics (so it is an eval-mode transformation: the
folded model equals the original in eval mode). Exports are written atomically; a folder
that cannot be written is a DeployError naming it, raised before any export work.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .blocks import ConvBNAct
from .errors import DeployError, check_int
from .io_utils import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["ConvAct", "DeployError", "check_onnx", "example_input", "export_onnx", "export_torchscript", "fold_bn",
           "prepare_for_deploy", "strip_identities"]


def check_output_path(path: str, step: str) -> None:
    """DeployError naming the folder when ``path``'s folder cannot be created or written,
    checked before any export work is done."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise DeployError(f"{step}: {path} is a directory; give a file name")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DeployError(f"{step}: cannot create the output folder {folder} ({e.strerror or e})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DeployError(f"{step}: the output folder {folder} is not writable (read-only or permission denied); "
                          "choose another --out / path")


@contextlib.contextmanager
def _writing(path: str, step: str, suffix: str = ".tmp") -> Iterator[str]:
    """``atomic_path(path)`` whose OS errors (read-only folder, disk full) are DeployErrors naming the folder."""
    try:
        with atomic_path(path, suffix=suffix) as tmp:
            yield tmp
    except OSError as e:
        folder = os.path.dirname(os.path.abspath(path))
        raise DeployError(f"{step}: cannot write {path} in the folder {folder} ({e.strerror or e})") from None


def fold_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` (a copy unless ``inplace``) in eval mode with every conv->BN pair folded into the conv.

    Covers ``ConvBNAct`` blocks (stems, expand / depthwise / project convs, heads); their
    ``bn`` becomes ``nn.Identity``. Returns the model; ``model.folded_bn`` counts the folds.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    n = 0
    for module in model.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            if not module.bn.track_running_stats or module.bn.running_mean is None:
                raise DeployError(f"fold_bn: a BatchNorm without running statistics cannot be folded ({module.bn})")
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
            n += 1
    model.folded_bn = n  # type: ignore[assignment]
    logger.info("fold_bn: folded %d BatchNorm layers", n)
    return model


class ConvAct(nn.Module):
    """A folded ``ConvBNAct`` without its ``nn.Identity`` placeholders: conv, then act if any.
    Same ``conv`` key names; fewer module calls per block (Python overhead at batch 1)."""

    def __init__(self, conv: nn.Conv2d, act: Optional[nn.Module]):
        super().__init__()
        self.conv = conv
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.act is not None:
            x = self.act(x)
        return x


def strip_identities(model: nn.Module) -> nn.Module:
    """Replace every BN-free ``ConvBNAct`` (e.g. after ``fold_bn``) by a ``ConvAct``, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ConvBNAct) and isinstance(child.bn, nn.Identity):
                act = None if isinstance(child.act, nn.Identity) else child.act
                setattr(parent, name, ConvAct(child.conv, act))
    return model


def prepare_for_deploy(model: nn.Module, fold: bool = True, channels_last: bool = False,
                       lean: bool = True) -> nn.Module:
    """An eval-mode copy for inference: BN folded (``fold``), identity placeholders removed
    (``lean``, see ``ConvAct``), in channels_last memory format if asked.

    Feed channels_last models channels_last inputs (``x.contiguous(memory_format=torch.channels_last)``)
    to avoid a layout conversion at the first conv.
    """
    out = fold_bn(model) if fold else copy.deepcopy(model).eval()
    if lean:
        strip_identities(out)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    return out


def example_input(model: nn.Module, batch: int = 1, input_size: Union[None, int, Tuple[int, int]] = None
                  ) -> torch.Tensor:
    """A random input of the model's native size (``model.spec.input_size``) unless given."""
    spec = getattr(model, "spec", None)
    size = (spec.input_size if spec is not None else 224) if input_size is None else input_size
    h, w = (size, size) if isinstance(size, int) else size
    check_int("batch", batch, 1, error=DeployError)
    check_int("input_size[0]", h, 1, error=DeployError)
    check_int("input_size[1]", w, 1, error=DeployError)
    c = spec.in_channels if spec is not None else 3
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, c, h, w, generator=g)


def export_torchscript(model: nn.Module, path: Optional[str] = None, fold: bool = True, method: str = "script",
                       example: Optional[torch.Tensor] = None, freeze: bool = True,
                       atol: float = 1e-4) -> torch.jit.ScriptModule:
    """TorchScript of ``model`` (BN folded when ``fold``), checked against eager and saved to ``path``.

    method: "script" (keeps control flow; any input size) or "trace" (with ``example``).
    freeze: ``torch.jit.freeze`` (inlines weights as constants). Raises DeployError if the
    scripted output differs from eager by more than ``atol`` on ``example``.
    """
    if method not in ("script", "trace"):
        raise DeployError(f"export_torchscript: method {method!r} is not one of ['script', 'trace']")
    if path is not None:
        check_output_path(path, "export_torchscript")
    eager = prepare_for_deploy(model, fold=fold, lean=False)
    x = example if example is not None else example_input(model)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            ts = torch.jit.script(eager) if method == "script" else torch.jit.trace(eager, x)
            if freeze:
                ts = torch.jit.freeze(ts.eval())
    except Exception as e:  # TorchScript raises many types; name the step
        raise DeployError(f"export_torchscript: torch.jit.{method} failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    with torch.no_grad():
        diff = (ts(x) - eager(x)).abs().max().item()
    if not diff <= atol:
        raise DeployError(f"export_torchscript: scripted output differs from eager by {diff:.3g} > {atol}")
    if path is not None:
        with _writing(path, "export_torchscript") as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            torch.jit.save(ts, tmp)
        logger.info("export_torchscript: wrote %s (max |diff| vs eager %.3g)", path, diff)
    return ts


# the opsets torch.onnx.export (TorchScript-based) accepts: 7 .. 23 with torch 2.14
_ONNX_CONSTANTS = getattr(torch.onnx, "_constants", None)  # private; absent: the range torch 2.1 had
ONNX_OPSETS = (getattr(_ONNX_CONSTANTS, "ONNX_MIN_OPSET", 7), getattr(_ONNX_CONSTANTS, "ONNX_MAX_OPSET", 17))


def export_onnx(model: nn.Module, path: str, fold: bool = True, batch: int = 1,
                input_size: Union[None, int, Tuple[int, int]] = None, opset: int = 17,
                dynamic: Sequence[str] = ("batch",), check: bool = True, atol: float = 1e-4) -> str:
    """ONNX export (BN folded when ``fold``; the ONNX exporter would fold it anyway).

    dynamic: which input axes stay symbolic: any of "batch", "height", "width". With
    ``check``, the file is validated by ``onnx.checker`` and its onnxruntime output
    compared with eager (``check_onnx``). Written atomically; returns ``path``.
    """
    allowed = {"batch": 0, "height": 2, "width": 3}
    bad = [d for d in dynamic if d not in allowed]
    if bad:
        raise DeployError(f"export_onnx: dynamic axis {bad[0]!r} is not one of {sorted(allowed)}")
    # checked here: an opset the exporter lacks fails after it has printed the whole graph
    check_int("export_onnx: opset", opset, ONNX_OPSETS[0], ONNX_OPSETS[1], error=DeployError)
    check_output_path(path, "export_onnx")
    eager = prepare_for_deploy(model, fold=fold, lean=False)
    x = example_input(model, batch, input_size)
    axes = {"input": {allowed[d]: d for d in dynamic}, "logits": ({0: "batch"} if "batch" in dynamic else {})}
    try:
        with _writing(path, "export_onnx") as tmp:
            # The torch.export-based exporter (dynamo=True) needs onnxscript; the TorchScript-based one
            # handles these convnets fully, so it is used here (its deprecation notice is silenced).
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                torch.onnx.export(eager, (x,), tmp, input_names=["input"], output_names=["logits"],
                                  opset_version=opset, dynamic_axes=axes, dynamo=False, do_constant_folding=True)
            if check:
                import onnx

                onnx.checker.check_model(onnx.load(tmp))
                check_onnx(tmp, eager, x, atol=atol)
    except DeployError:
        raise
    except Exception as e:
        raise DeployError(f"export_onnx: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    logger.info("export_onnx: wrote %s", path)
    return path


def check_onnx(path: str, model: nn.Module, x: Optional[torch.Tensor] = None, atol: float = 1e-4) -> float:
    """Max |onnxruntime(path)(x) - model(x)| (model in eval mode); DeployError if above ``atol``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DeployError("check_onnx: needs the 'onnxruntime' package") from None
    x = example_input(model) if x is None else x
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    got = sess.run(None, {name: x.numpy()})[0]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    model.train(was_training)
    if got.shape != ref.shape:
        raise DeployError(f"check_onnx: {path} output shape {got.shape} != eager {ref.shape}")
    diff = float(abs(got - ref).max())
    if not diff <= atol:
        raise DeployError(f"check_onnx: {path} output differs from eager by {diff:.3g} > {atol}")
    return diff
