"""Every domain error of the project, under one root, plus the shared field validators.

``FBNetZooError`` is a ValueError (bad input is what almost all of them report), so
``except ValueError`` still catches everything. A few keep a second builtin base where
callers relied on it: ``UnknownModelError`` is also a KeyError (a failed lookup),
``CheckpointError`` / ``DeployError`` / ``Diverged`` are also RuntimeErrors (as before).

The validators (``check_int``, ``check_number``, ``check_bool``, ``check_choice``,
``check_name``) raise the error class they are given with the message the project writes
everywhere: the field path, the bad value and what is allowed.

This is a leaf module: it imports nothing from the package.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional, Sequence, Type


class FBNetZooError(ValueError):
    """Root of every error fbnet_zoo raises on bad input, files or configurations."""


# ---- core
class SpecError(FBNetZooError):
    """An invalid architecture spec. The message names the field path and the bad value."""


class UnknownModelError(FBNetZooError, KeyError):
    """No registered architecture has that name (also a KeyError: a failed lookup)."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class RegistryError(FBNetZooError):
    """A YAML data folder (archs, checkpoint sources, detection presets) holds a bad file."""


class CheckpointError(FBNetZooError, RuntimeError):
    """A checkpoint cannot be found, fetched, trusted, converted or loaded; the message names
    the file, source or keys involved and what was expected."""


class DeployError(FBNetZooError, RuntimeError):
    """A model cannot be folded or exported (TorchScript / ONNX)."""


class QuantizationError(DeployError):
    """A model cannot be quantized to int8 or its int8 export fails."""


class UnsafeNameError(FBNetZooError):
    """A name used to build an output path is not one plain file name inside the output folder."""


class ResultsError(FBNetZooError):
    """A CIFAR-10 results file that cannot be read or has another schema."""


class CifarError(FBNetZooError):
    """A CIFAR-10 experiment input that cannot work (arch, recipe file, data or run folder)."""


class UnknownConventionError(FBNetZooError):
    """A FLOPs/params counting convention that is not one of fbnet_zoo.conventions.CONVENTIONS."""


# ---- training / search
class RecipeError(FBNetZooError):
    """An invalid training recipe field."""


class TrainConfigError(FBNetZooError):
    """Invalid training settings."""


class Diverged(FBNetZooError, RuntimeError):
    """Training produced a non-finite loss (the recipe diverged)."""


class DataError(FBNetZooError):
    """A data set that cannot be found or read."""


class SearchConfigError(FBNetZooError):
    """An invalid search config; the message names the key path."""


class ExecutorError(FBNetZooError):
    """An executor that cannot be built or run."""


# ---- detection
class DetectionError(FBNetZooError):
    """A backbone/head configuration that cannot work; the message names the option and value."""


# --------------------------------------------------------------------------- validators
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(path: str, value: Any, lo: int = 1, hi: Optional[int] = None,
              error: Type[FBNetZooError] = SpecError) -> int:
    """``value`` as an int in [lo, hi]; a float (even 2.0), bool or string is refused."""
    if not _is_int(value):
        bounds = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise error(f"{path}: {show_value(value)} is not an integer {bounds}")
    if value < lo:
        raise error(f"{path}: {value!r} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise error(f"{path}: {show_value(value)} is above the maximum {hi}")
    return value


def check_number(path: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = True,
                 hi_open: bool = False, error: Type[FBNetZooError] = SpecError) -> float:
    """A finite number in (lo, hi] (or [lo, ...) / ..., hi) as asked); integral values come back as int."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{path}: {show_value(value)} is not a number")
    try:
        as_float = float(value)
    except OverflowError:  # an int beyond float range (10**400)
        raise error(f"{path}: {show_value(value)} is outside {_interval(lo, hi, lo_open, hi_open)}") from None
    if not math.isfinite(as_float):
        raise error(f"{path}: {value!r} is not a finite number")
    if (as_float <= lo if lo_open else as_float < lo) or (as_float >= hi if hi_open else as_float > hi):
        raise error(f"{path}: {show_value(value)} is outside {_interval(lo, hi, lo_open, hi_open)}")
    return int(as_float) if as_float.is_integer() else as_float


def check_bool(path: str, value: Any, error: Type[FBNetZooError] = SpecError) -> bool:
    if not isinstance(value, bool):
        raise error(f"{path}: {show_value(value)} is not a boolean (true/false)")
    return value


def check_choice(path: str, value: Any, choices: Sequence[Any], error: Type[FBNetZooError] = SpecError) -> Any:
    """``value`` if it is one of ``choices`` (bools never match ints: ``True`` is not 1 here)."""
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
        raise error(f"{path}: {value!r} is not one of {list(choices)}")
    if isinstance(value, float) and not any(isinstance(c, float) for c in choices):
        raise error(f"{path}: {value!r} is not one of {list(choices)} (an integer, not a float)")
    try:
        ok = value in choices
    except TypeError:  # unhashable / incomparable
        ok = False
    if not ok:
        raise error(f"{path}: {show_value(value)} is not one of {list(choices)}")
    return value


def check_keys(path: str, value: Any, allowed: Sequence[str], error: Type[FBNetZooError] = SpecError,
               what: str = "a mapping") -> Mapping[str, Any]:
    """``value`` if it is a mapping whose keys are all in ``allowed``; the error names the first stranger
    (``path`` empty: a top-level mapping, named "config", whose keys are named alone)."""
    if not isinstance(value, Mapping):
        raise error(f"{path or 'config'}: {show_value(value)} is not {what}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise error(f"{path + '.' if path else ''}{unknown[0]}: unknown key; allowed: {list(allowed)}")
    return value


# Names become file names (exports, arch dirs) and log lines: letters, digits and . _ - + only,
# starting with a letter or digit (so no '..', '/', leading dot, newline or control character).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_name(path: str, value: Any, error: Type[FBNetZooError] = SpecError) -> str:
    """A safe name: 1-128 characters of letters, digits, '.', '_', '-', '+', no '..'."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or ".." in value:
        raise error(f"{path}: {show_value(value)} is not a safe name (1-128 characters: letters, digits, '.', '_', "
                    "'-', '+'; starting with a letter or digit; no '/', '..', spaces or newlines)")
    return value


def _interval(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def show_value(value: Any, limit: int = 60) -> str:
    """repr of a bad value, cut short (a hostile value may be huge) and safe for int->str limits."""
    if _is_int(value) and value.bit_length() > 64:
        return f"<integer of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
