"""Pretrained checkpoints: sources registry, verified fetch + cache, safe and strict loading.

    >>> model = fbnet_zoo.build_model("FBNetV3-B-timm", pretrained=True)        # default source
    >>> model = fbnet_zoo.build_model("FBNetV3-B-timm", num_classes=10, pretrained="timm")
    >>> model = fbnet_zoo.build_model("FBNetV3-A", pretrained="/path/to/model.pth")   # or a URL

Sources are data: ``model_configs/checkpoints/*.yaml`` (plus ``register_sources(...)`` and
the ``FBNET_ZOO_CHECKPOINT_DIRS`` environment variable, os.pathsep-separated), one file per
zoo model::

    model: FBNetV3-B-timm
    default: timm
    sources:
      timm: {url: https://..., format: torch, converter: timm, num_classes: 1000,
             sha256: <only when verified>, size: <bytes, optional>, published: [...]}

Fetching: local paths (and iopath-registered paths) are read in place; ``http(s)://`` and
``file://`` URLs (and other iopath schemes) are copied into the cache dir
(``$FBNET_ZOO_CACHE``, else ``<torch.hub.get_dir()>/checkpoints/fbnet_zoo``) through a temp
file that is checked (length against Content-Length / the registered size, sha256 when
known) and renamed into place only when complete. Later loads read the cache, offline. A
cached file that fails its checks or does not load is replaced by a fresh download within
the same call. A read-only cache works while it holds what is asked for; anything it would
have to change is a CheckpointError naming the file, the dir and ``$FBNET_ZOO_CACHE``.

Loading: ``torch.load(weights_only=True)`` (or safetensors) only -- a file that needs
arbitrary unpickling is refused and nothing in it runs; a file that is not a torch zip /
pickle at all is reported as "not a checkpoint". Keys are converted (timm / mobile_cv, see
converters.py), then checked: missing, unexpected and shape-mismatched keys are reported by
name; NaN/inf weights, negative BN variances and integer tensors for float weights are
refused unless ``check_values=False``. A classifier for another number of classes is
dropped and re-initialised (logged); one for another input width is a shape mismatch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pickle
import urllib.parse
import urllib.request
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .converters import CONVERTERS, _names, convert_to_ours, detect_format, strip_prefix
from .errors import CheckpointError
from .io_utils import YamlFolderRegistry, atomic_path
from .registry import normalize_name

logger = logging.getLogger(__name__)

ENV_CACHE = "FBNET_ZOO_CACHE"
ENV_SOURCE_DIRS = "FBNET_ZOO_CHECKPOINT_DIRS"
FORMATS = ("torch", "safetensors")
_CHUNK = 1 << 20

__all__ = [
    "CheckpointError", "CheckpointSource", "LoadResult", "bad_values", "cache_dir", "fetch", "get_source", "list_sources",
    "describe_key_diff", "key_diff", "load_checkpoint", "load_pretrained", "load_state_dict_checked", "mismatch_label",
    "read_state_dict", "register_sources",
]


# ----------------------------------------------------------------------------- sources registry

@dataclasses.dataclass(frozen=True)
class CheckpointSource:
    """One place a model's weights can come from."""

    model: str
    name: str
    url: str
    format: str = "torch"
    converter: str = "ours"
    num_classes: Optional[int] = None
    sha256: Optional[str] = None
    size: Optional[int] = None
    hf_hub_id: Optional[str] = None
    published: Tuple[Mapping[str, Any], ...] = ()
    notes: str = ""

    @classmethod
    def from_dict(cls, model: str, name: str, d: Mapping[str, Any]) -> "CheckpointSource":
        where = f"{model}.sources.{name}"
        if not isinstance(d, Mapping):
            raise CheckpointError(f"{where}: {d!r} is not a mapping")
        fields = {f.name for f in dataclasses.fields(cls)} - {"model", "name"}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise CheckpointError(f"{where}.{unknown[0]}: unknown field; allowed: {sorted(fields)}")
        if not isinstance(d.get("url"), str) or "://" not in d["url"]:
            raise CheckpointError(f"{where}.url: {d.get('url')!r} is not a URL")
        fmt = d.get("format", "torch")
        if fmt not in FORMATS:
            raise CheckpointError(f"{where}.format: {fmt!r} is not one of {list(FORMATS)}")
        conv = d.get("converter", "ours")
        # Converters may be registered later (converters.register_converter, e.g. by the detection
        # package); a name is checked against the registered ones when it is used.
        if not isinstance(conv, str) or not conv.replace("_", "").isalnum():
            raise CheckpointError(f"{where}.converter: {conv!r} is not a converter name (registered: "
                                  f"{sorted(CONVERTERS)})")
        sha = d.get("sha256")
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                                or any(c not in "0123456789abcdef" for c in sha.lower())):
            raise CheckpointError(f"{where}.sha256: {sha!r} is not 64 hex digits")
        size = d.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise CheckpointError(f"{where}.size: {size!r} is not a positive integer (bytes)")
        published = d.get("published", ())
        if isinstance(published, Mapping):
            published = (published,)
        return cls(model=model, name=name, url=d["url"], format=fmt, converter=conv,
                   num_classes=d.get("num_classes"), sha256=sha.lower() if sha else None, size=size,
                   hf_hub_id=d.get("hf_hub_id"), published=tuple(published), notes=d.get("notes", ""))


@dataclasses.dataclass(frozen=True)
class _ModelSources:
    """One model's sources as read from one file (or merged over several)."""

    display: str
    sources: Mapping[str, CheckpointSource]
    default: str


def _parse_sources(data: Any, where: str) -> List[Tuple[str, _ModelSources]]:
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), str):
        raise CheckpointError(f"{where}: model: expected a model name, got {data!r:.80}")
    model = data["model"]
    sources = data.get("sources")
    if not isinstance(sources, Mapping) or not sources:
        raise CheckpointError(f"{where}: {model}.sources: expected a non-empty mapping of source name -> source")
    parsed = {str(n): CheckpointSource.from_dict(model, str(n), s) for n, s in sources.items()}
    default = data.get("default", next(iter(parsed)))
    if default not in parsed:
        raise CheckpointError(f"{where}: {model}.default: {default!r} is not one of {sorted(parsed)}")
    return [(normalize_name(model), _ModelSources(model, parsed, default))]


def _merge_sources(old: _ModelSources, new: _ModelSources) -> _ModelSources:
    return _ModelSources(new.display, {**old.sources, **new.sources}, new.default)


class _Sources:
    """The checkpoint-source folders, through the one YAML-folder registry (io_utils)."""

    def __init__(self) -> None:
        self.folders: YamlFolderRegistry[_ModelSources] = YamlFolderRegistry(
            "checkpoint source", _parse_sources, CheckpointError, builtin="checkpoints", env_var=ENV_SOURCE_DIRS,
            merge=_merge_sources)

    def add(self, data: Mapping[str, Any], where: str) -> str:
        return ", ".join(self.folders.add(key, item, where) for key, item in _parse_sources(data, where))

    def get(self, model: str) -> Tuple[Dict[str, CheckpointSource], Optional[str]]:
        item = self.folders.get(normalize_name(model))
        return (dict(item.sources), item.default) if item is not None else ({}, None)

    def models(self) -> List[str]:
        return sorted(item.display for item in self.folders.items().values())


_SOURCES = _Sources()


def register_sources(data: Union[str, os.PathLike, Mapping[str, Any]]) -> str:
    """Register checkpoint sources: a dict (as in the YAML files), a YAML file or a directory of them."""
    if isinstance(data, Mapping):
        return _SOURCES.add(data, "register_sources()")
    path = os.fspath(data)
    if os.path.isdir(path):
        return ", ".join(_SOURCES.folders.add_dir(path))
    return ", ".join(_SOURCES.folders.add_file(path))


# the converters fbnet_zoo itself ships: their checkpoints hold a classifier's weights
_CLASSIFIER_CONVERTERS = frozenset(CONVERTERS)


def list_sources(model: Optional[str] = None) -> Union[List[str], Dict[str, CheckpointSource]]:
    """Models that have sources (no argument), or ``{source name: CheckpointSource}`` of one model."""
    if model is None:
        return _SOURCES.models()
    return _SOURCES.get(model)[0]


def get_source(model: str, source: Union[bool, str] = True) -> CheckpointSource:
    """The named source of ``model`` (``True``: its default source)."""
    sources, default = _SOURCES.get(model)
    if not sources:
        have = _SOURCES.models()
        # only siblings whose default source is a classifier's weights: build_model cannot load the
        # authors' whole-detector checkpoints (FBNetV3-A-d2go), which the hint used to suggest for FBNetV3-A
        variant = [m for m in have if normalize_name(m).startswith(normalize_name(model) + "_")
                   and _SOURCES.get(m)[0][_SOURCES.get(m)[1]].converter in _CLASSIFIER_CONVERTERS]
        hint = (f"; its sibling {', '.join(variant)} has weights (e.g. build_model({variant[0]!r}, pretrained=True))"
                if variant else "")
        raise CheckpointError(f"pretrained: no checkpoint source is registered for {model!r}{hint}. Models with "
                              f"sources: {', '.join(have) or 'none'}; or pass a local path or URL"
                              f"{_SOURCES.folders.missing_hint()}")
    name = default if source is True else source
    if name not in sources:
        raise CheckpointError(f"pretrained: {source!r} is not a source of {model!r}, a URL or an existing path; "
                              f"sources: {sorted(sources)}")
    return sources[name]


# ----------------------------------------------------------------------------- fetch + cache

def cache_dir() -> str:
    """Where downloaded checkpoints live: $FBNET_ZOO_CACHE or <torch hub dir>/checkpoints/fbnet_zoo."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return env
    return os.path.join(torch.hub.get_dir(), "checkpoints", "fbnet_zoo")


def _cache_path(url: str, directory: str) -> str:
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    base = os.path.basename(urllib.parse.urlparse(url).path) or "checkpoint"
    return os.path.join(directory, f"{digest}-{base}")


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _open_url(url: str):
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme in ("http", "https", "file"):
        try:
            resp = urllib.request.urlopen(url, timeout=60)  # noqa: S310 (scheme checked above)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"fetch {url}: {e}") from None
        length = resp.headers.get("Content-Length")
        return resp, int(length) if length and length.isdigit() else None
    from iopath.common.file_io import g_pathmgr

    try:
        return g_pathmgr.open(url, "rb"), None
    except Exception as e:  # iopath raises handler-specific types
        raise CheckpointError(f"fetch {url}: no reader for this URL ({type(e).__name__}: {e})") from None


def fetch(url: str, sha256: Optional[str] = None, size: Optional[int] = None, directory: Optional[str] = None,
          progress: bool = True, force: bool = False) -> str:
    """The cached local copy of ``url``, downloading it when absent (or ``force``).

    The download goes to a temp file in the cache dir; it is renamed into place only after
    its length (Content-Length, ``size``) and sha256 (when given) check out. A cached file
    whose size or hash no longer matches is fetched again.
    """
    from tqdm import tqdm

    directory = directory or cache_dir()
    dst = _cache_path(url, directory)
    if os.path.exists(dst) and not force:
        problem = _verify(dst, sha256, size)
        if problem is None:
            logger.info("checkpoint %s: using cache %s", url, dst)
            return dst
        logger.warning("checkpoint cache %s: %s; fetching again", dst, problem)
        _evict(dst, problem)
    _check_writable(directory, url)
    stream, length = _open_url(url)
    expected = size if size is not None else length
    h = hashlib.sha256()
    n = 0
    try:
        with atomic_path(dst, suffix=".part") as tmp:  # renamed into the cache only once every check passed
            with stream, open(tmp, "wb") as out, tqdm(total=expected, unit="B", unit_scale=True,
                                                       disable=not progress, desc=os.path.basename(dst),
                                                       leave=False) as bar:
                while True:
                    chunk = stream.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if length is not None and n != length:
                raise CheckpointError(f"fetch {url}: got {n} bytes, the server announced {length} (truncated download)")
            if size is not None and n != size:
                raise CheckpointError(f"fetch {url}: size {n} bytes, expected {size}")
            digest = h.hexdigest()
            if sha256 is not None and digest != sha256.lower():
                raise CheckpointError(f"fetch {url}: sha256 {digest} does not match the expected {sha256.lower()}")
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"fetch {url}: {e}") from None
    logger.info("checkpoint %s: cached as %s (%d bytes, sha256 %s)", url, dst, n, digest)
    return dst


def _read_only_cache_hint(directory: str) -> str:
    return (f"the cache dir {directory} is not writable: set {ENV_CACHE} to a writable folder (or make "
            f"{directory} writable)")


def _check_writable(directory: str, url: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"fetch {url}: cannot create the cache dir {directory} ({e.strerror or e}); set "
                              f"{ENV_CACHE} to a writable folder") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CheckpointError(f"fetch {url}: cannot download: {_read_only_cache_hint(directory)}")


def _evict(path: str, problem: str) -> None:
    """Remove a bad cached file, or say clearly why it cannot be removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise CheckpointError(f"{path}: corrupt cached checkpoint ({problem}) that cannot be removed "
                              f"({e.strerror or e}): {_read_only_cache_hint(os.path.dirname(path))}, or delete "
                              f"{path} by hand") from None


def _verify(path: str, sha256: Optional[str], size: Optional[int]) -> Optional[str]:
    if size is not None and os.path.getsize(path) != size:
        return f"size {os.path.getsize(path)} bytes, expected {size}"
    if sha256 is not None:
        digest = _sha256_file(path)
        if digest != sha256.lower():
            return f"sha256 {digest} does not match the expected {sha256.lower()}"
    return None


# ----------------------------------------------------------------------------- reading

def _unwrap(obj: Any, where: str) -> "OrderedDict[str, torch.Tensor]":
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict", "module")
                          if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                dropped = [k for k in obj if k not in tensors]
                logger.debug("%s: ignoring non-tensor entries %s", where, dropped)
                obj = tensors
            break
        break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{where}: holds no state dict (expected a mapping of names to tensors, possibly "
                              "under 'state_dict' or 'model')")
    return OrderedDict((str(k), v) for k, v in obj.items())


_PICKLE_PROTOCOLS = (2, 3, 4, 5)


def _check_torch_file(path: str) -> None:
    """CheckpointError unless ``path`` starts like a file torch.save writes (a zip archive, or a
    legacy pickle stream), so that garbage is not reported as a refused, code-running pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not head:
        raise CheckpointError(f"{path}: not a checkpoint: the file is empty (0 bytes)")
    if head.startswith(b"PK\x03\x04") or (head[0] == 0x80 and len(head) > 1 and head[1] in _PICKLE_PROTOCOLS):
        return
    raise CheckpointError(f"{path}: not a checkpoint (not a zip/pickle torch file; it starts with bytes "
                          f"{head.hex(' ')}). torch.save writes a zip archive (or, legacy, a pickle stream); "
                          "safetensors files need a .safetensors name or format: safetensors")


def read_state_dict(path: str, fmt: Optional[str] = None) -> "OrderedDict[str, torch.Tensor]":
    """A state dict from a local file, read safely (weights_only torch.load, or safetensors)."""
    fmt = fmt or ("safetensors" if path.endswith(".safetensors") else "torch")
    if fmt == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path}: reading safetensors needs the 'safetensors' package") from None
        try:
            return _unwrap(load_file(path, device="cpu"), path)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{path}: corrupted or truncated safetensors file ({e})") from None
    _check_torch_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Only a pickle that names a global or a call is one that "could run code"; an unknown opcode
        # is damage (the file is a torch zip/pickle whose data pickle is garbled).
        if "weights only" in str(e).lower() and "unsupported operand" not in str(e).lower():
            raise CheckpointError(
                f"{path}: refused: it pickles objects other than tensors and plain containers (it could run code "
                "when loaded), and checkpoints are only read with torch.load(weights_only=True); nothing in it was "
                "executed. Re-save its state dict (tensors only) from a trusted environment") from None
        # torch's message runs over several lines; its "Unsupported operand N" line is the fact
        detail = next((line.strip() for line in str(e).splitlines() if "unsupported operand" in line.lower()),
                      str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise CheckpointError(f"{path}: corrupted or truncated checkpoint, or a pickle not written by torch.save "
                              f"(e.g. pickle.dump's protocol 4+), which torch.load(weights_only=True) cannot read "
                              f"({detail[:200]})") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: corrupted or truncated checkpoint, cannot be read ({type(e).__name__}: "
                              f"{msg[:200]})") from None
    return _unwrap(obj, path)


# ----------------------------------------------------------------------------- loading into a model

@dataclasses.dataclass
class LoadResult:
    """What ``load_pretrained`` did."""

    path: str
    source: Optional[str]
    format: str
    classifier_reset: bool = False
    missing: List[str] = dataclasses.field(default_factory=list)
    unexpected: List[str] = dataclasses.field(default_factory=list)
    mismatched: List[str] = dataclasses.field(default_factory=list)


_CLASSIFIER_KEYS = ("classifier.fc.weight", "classifier.fc.bias")


def key_diff(own: Mapping[str, Any], state: Mapping[str, Any], skip_missing: Sequence[str] = ()
             ) -> Tuple[List[str], List[str], List[str]]:
    """(missing, unexpected, mismatched) between a model's state dict ``own`` and a checkpoint's
    ``state``: the model's keys the checkpoint lacks (BN ``num_batches_tracked`` and
    ``skip_missing`` excepted), the checkpoint's keys the model lacks, and the shared keys whose
    shapes differ, as ``"key (checkpoint (..), model (..))"``."""
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked") and k not in skip_missing]
    unexpected = [k for k in state if k not in own]
    mismatched = [mismatch_label(k, state[k].shape, own[k].shape)
                  for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, mismatched


def mismatch_label(key: str, checkpoint_shape: Sequence[int], model_shape: Sequence[int]) -> str:
    return f"{key} (checkpoint {tuple(checkpoint_shape)}, model {tuple(model_shape)})"


def describe_key_diff(missing: Sequence[str], unexpected: Sequence[str], mismatched: Sequence[str]) -> str:
    """One line naming (the first few of) each kind of key problem: "missing 2 key(s): a, b; ..."."""
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s): {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {_names(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatch in {len(mismatched)} key(s): {_names(mismatched, 4)}")
    return "; ".join(parts)


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                            where: str = "checkpoint", check_values: bool = True) -> LoadResult:
    """Load our-format ``state_dict`` into an FBNet, handling the classifier and naming every problem.

    A classifier whose number of classes differs from the model's (or a model without
    one) is dropped, and the model's classifier re-initialised; one with the model's class
    count but another input width is a shape mismatch. Everything else must match exactly
    when ``strict`` (BN ``num_batches_tracked`` may be absent). With ``check_values``
    (default) NaN/inf weights, negative BN running variances and integer tensors for float
    weights are refused (see ``bad_values``). Raises CheckpointError.
    """
    sd = OrderedDict(state_dict)
    result = LoadResult(path=where, source=None, format="ours")
    own = model.state_dict()
    classifier = getattr(model, "classifier", None)
    ckpt_w = sd.get(_CLASSIFIER_KEYS[0])
    if ckpt_w is not None and classifier is None:
        for k in _CLASSIFIER_KEYS:
            sd.pop(k, None)
        logger.info("%s: the model has no classifier (num_classes=0); dropped the checkpoint's %d-class classifier",
                    where, ckpt_w.shape[0])
    elif classifier is not None and (ckpt_w is None or (ckpt_w.dim() == 2 and ckpt_w.shape[0] != own[_CLASSIFIER_KEYS[0]].shape[0]
                                                        and ckpt_w.shape[1] == own[_CLASSIFIER_KEYS[0]].shape[1])):
        # Only another class count is a new task; a classifier whose input width differs comes from
        # another backbone and stays a shape mismatch below.
        for k in _CLASSIFIER_KEYS:
            sd.pop(k, None)
        n = model.num_classes if hasattr(model, "num_classes") else own[_CLASSIFIER_KEYS[0]].shape[0]
        if hasattr(model, "reset_classifier"):
            model.reset_classifier(n)
            own = model.state_dict()
        result.classifier_reset = True
        have = "no classifier" if ckpt_w is None else f"a {ckpt_w.shape[0]}-class classifier ({tuple(ckpt_w.shape)})"
        logger.info("%s: checkpoint has %s, model has %d classes: classifier.fc dropped from the checkpoint and "
                    "re-initialised", where, have, n)
    missing, unexpected, mismatched = key_diff(own, sd, skip_missing=_CLASSIFIER_KEYS if result.classifier_reset else ())
    result.missing, result.unexpected, result.mismatched = missing, unexpected, mismatched
    good = OrderedDict((k, v) for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape))
    if missing or unexpected or mismatched:
        arch = getattr(getattr(model, "spec", None), "name", type(model).__name__)
        msg = f"{where} does not fit {arch}: " + describe_key_diff(missing, unexpected, mismatched)
        if strict:
            raise CheckpointError(msg + " (wrong architecture?)")
        logger.warning("%s (strict=False: loading the %d matching tensors)", msg, len(good))
    if check_values:
        bad = bad_values(good, own)
        if bad:
            raise CheckpointError(f"{where}: refusing to load: {bad}. Such weights produce NaN outputs or "
                                  "are not what was trained; pass check_values=False to load them anyway")
    model.load_state_dict(good, strict=False)
    return result


def bad_values(state_dict: Mapping[str, torch.Tensor], reference: Optional[Mapping[str, torch.Tensor]] = None) -> str:
    """What is wrong with the values of ``state_dict`` ("" when nothing): NaN/inf in a floating
    tensor, a negative BatchNorm ``running_var``, an integer tensor where ``reference`` (the
    model's state dict) holds a floating one. Each problem lists its keys."""
    non_finite, negative_var, integer = [], [], []
    for k, v in state_dict.items():
        if v.is_floating_point() or v.is_complex():
            if v.numel() and not bool(torch.isfinite(v).all()):
                non_finite.append(k)
            elif k.endswith("running_var") and v.numel() and bool((v < 0).any()):
                negative_var.append(f"{k} (min {v.min().item():.3g})")
        elif reference is not None and k in reference and reference[k].is_floating_point():
            integer.append(f"{k} ({v.dtype}, model {reference[k].dtype})")
    parts = []
    if non_finite:
        parts.append(f"non-finite values (NaN/inf) in {len(non_finite)} tensor(s): {_names(non_finite)}")
    if negative_var:
        parts.append(f"negative BatchNorm running_var (a variance is >= 0) in {len(negative_var)} tensor(s): "
                     f"{_names(negative_var, 4)}")
    if integer:
        parts.append(f"integer dtype where the model has floating point weights in {len(integer)} tensor(s): "
                     f"{_names(integer, 4)}")
    return "; ".join(parts)


def _resolve(pretrained: Union[bool, str, os.PathLike], name: str) -> Tuple[Optional[CheckpointSource], str]:
    """(source or None, url-or-path)."""
    if pretrained is True:
        src = get_source(name, True)
        return src, src.url
    if not isinstance(pretrained, (str, os.PathLike)):
        raise CheckpointError(f"pretrained: {pretrained!r} is not True, a source name, a path or a URL")
    text = os.fspath(pretrained)
    sources, _ = _SOURCES.get(name) if name else ({}, None)
    if text in sources:
        return sources[text], sources[text].url
    if "://" in text:
        return None, text
    from iopath.common.file_io import g_pathmgr

    if os.path.exists(text) or g_pathmgr.exists(text):
        return None, text
    if sources:
        raise CheckpointError(f"pretrained: {text!r} is neither a source of {name!r} ({sorted(sources)}), "
                              "a URL nor an existing path")
    if not name:  # no model to look sources up by (tools/convert_checkpoint.py INPUT)
        raise CheckpointError(f"pretrained: {text!r} is not an existing path or a URL")
    raise CheckpointError(f"pretrained: {text!r} is not an existing path or a URL, and {name!r} has no "
                          f"registered sources (models with sources: {', '.join(_SOURCES.models()) or 'none'})")


def load_checkpoint(pretrained: Union[bool, str, os.PathLike], name: Optional[str] = None, sha256: Optional[str] = None,
                    progress: bool = True, directory: Optional[str] = None
                    ) -> Tuple["OrderedDict[str, torch.Tensor]", Optional[CheckpointSource], str]:
    """Resolve, fetch (URLs, into the cache) and read a checkpoint: (state dict, source, local path)."""
    src, where = _resolve(pretrained, name or "")
    fmt = src.format if src else None
    if "://" in where:
        url_sha = sha256 or (src.sha256 if src else None)
        url_size = src.size if src else None
        path = fetch(where, url_sha, url_size, directory, progress)
        try:
            return read_state_dict(path, fmt), src, path
        except CheckpointError as e:
            # A cached file that does not load (damaged on disk, or a download that passed the
            # length check but is not a checkpoint) is replaced by a fresh download, once.
            logger.warning("checkpoint cache %s does not load (%s); fetching %s again", path, e, where)
            _evict(path, str(e))
        path = fetch(where, url_sha, url_size, directory, progress)
        try:
            return read_state_dict(path, fmt), src, path
        except CheckpointError as e:
            _evict(path, str(e))
            raise CheckpointError(f"{e} [fetched again and still unreadable: the source itself is bad; removed "
                                  f"from the cache]") from None
    else:
        from iopath.common.file_io import g_pathmgr

        path = where if os.path.exists(where) else g_pathmgr.get_local_path(where)
        problem = _verify(path, sha256, None)
        if problem:
            raise CheckpointError(f"{where}: {problem}")
    return read_state_dict(path, fmt), src, path


def load_pretrained(model: nn.Module, pretrained: Union[bool, str, os.PathLike] = True, name: Optional[str] = None,
                    strict: bool = True, sha256: Optional[str] = None, converter: Optional[str] = None,
                    progress: bool = True, cache: Optional[str] = None, check_values: bool = True) -> LoadResult:
    """Load weights into ``model`` (an FBNet) from a registered source, a path or a URL.

    pretrained: True (the model's default source), a source name, a local/iopath path or a
    URL. name: the zoo name whose sources to use (default ``model.spec.name``). converter:
    "ours" | "timm" | "mobile_cv" (default: the source's, else detected from the keys).
    check_values=False loads NaN/inf, negative-variance or integer weights (refused by default).
    Raises CheckpointError with a message naming the file and the problem.
    """
    name = name or getattr(getattr(model, "spec", None), "name", None)
    sd, src, path = load_checkpoint(pretrained, name, sha256=sha256, progress=progress, directory=cache)
    fmt = converter or (src.converter if src else detect_format(sd))
    try:
        converted = convert_to_ours(strip_prefix(sd), model, fmt)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    result = load_state_dict_checked(model, converted, strict=strict, where=path, check_values=check_values)
    result.path, result.source, result.format = path, src.name if src else None, fmt
    logger.info("loaded %s weights into %s from %s%s", fmt, name, path, f" (source {src.name})" if src else "")
    return result
