"""One validation path for what users hand the pack: numbers, tensors, names and paths, files to replace, JSON.

Every entry point (the `clif` commands, the Python API, the ComfyUI nodes) refuses bad input through these
helpers, so one kind of problem gets one rule and one kind of message: a `ClifError` that names the option,
file or field and says what to do. docs/refusals.md lists what is refused and why.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import torch

from .errors import ClifError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""The tensor dtypes concept files and erasure patches may hold (docs/concept-file.md)."""

MAX_STRENGTH = 4.0
"""Largest |LoRA strength| accepted anywhere; beyond it a LoRA only produces noise (ComfyUI's own sliders
stop at ±4 on the CLIF nodes too)."""
MAX_GUIDANCE = 100.0
"""Largest classifier-free guidance scale accepted; far beyond any useful value (7 is usual)."""


# ------------------------------------------------------------------------------------------------- numbers


def check_number(value: Any, what: str, low: Optional[float] = None, high: Optional[float] = None) -> float:
    """`value` as a float when it is a finite number within [low, high]; else ClifError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ClifError(f"{what} is {value!r}; give a number")
    if not math.isfinite(value):
        raise ClifError(f"{what} is {value}; give a finite number (NaN and infinity would make every result NaN)")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ClifError(f"{what} is {value}; {_range(low, high)}")
    return float(value)


def check_whole(value: Any, what: str, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """`value` when it is a whole number within [low, high]; else ClifError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClifError(f"{what} is {value!r}; give a whole number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ClifError(f"{what} is {value}; {_range(low, high)}")
    return value


def _range(low: Optional[float], high: Optional[float]) -> str:
    if low is not None and high is not None:
        return f"use a value from {low} to {high}"
    return f"use {low} or more" if low is not None else f"use {high} or less"


def check_finite_fields(config: Any, what: str) -> None:
    """Refuse NaN or infinity in any float field of a settings dataclass (nested dataclasses too)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_finite_fields(value, what)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ClifError(f"{what} {f.name} is {value}; give a finite number")


def cli_float(low: Optional[float] = None, high: Optional[float] = None) -> Callable[[str], float]:
    """An argparse `type=`: a finite number within [low, high]; argparse names the option in its message."""
    return _cli_type(float, check_number, "number", low, high)


def cli_int(low: Optional[int] = None, high: Optional[int] = None) -> Callable[[str], int]:
    """An argparse `type=`: a whole number within [low, high]."""
    return _cli_type(int, check_whole, "whole number", low, high)


def _cli_type(convert: Callable[[str], Any], check: Callable[..., Any], noun: str, low: Any, high: Any) -> Any:
    """An argparse `type=`: `convert` the text, then `check` it within [low, high]; a refusal is argparse's."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {noun}") from None
        try:
            return check(value, "the value", low, high)
        except ClifError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = noun
    parse.low, parse.high = low, high  # type: ignore[attr-defined]  # read by tests/test_options.py
    return parse


def check_strength(value: Any, what: str) -> float:
    """A LoRA strength: finite and at most MAX_STRENGTH either way."""
    return check_number(value, what, -MAX_STRENGTH, MAX_STRENGTH)


# ------------------------------------------------------------------------------------------------- tensors


def check_tensors(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Every tensor is fp32/fp16/bf16 and holds no NaN or infinity; ClifError names the file and the tensor."""
    for key, value in tensors.items():
        if value.dtype not in FLOAT_DTYPES:
            raise ClifError(
                f"{where}: tensor {key!r} is {str(value.dtype).removeprefix('torch.')}; concept files hold "
                "float32, float16 or bfloat16 only. Re-export it from the tool that made it"
            )
        if not bool(torch.isfinite(value).all()):
            raise ClifError(
                f"{where}: tensor {key!r} holds NaN or infinite values; the file is damaged or was trained into "
                "divergence. Use an earlier checkpoint or train again"
            )


# --------------------------------------------------------------------------------------------------- paths


def inside_folder(folder: str | os.PathLike, relative: Any, where: str,
                  start: Optional[str | os.PathLike] = None) -> Path:
    """`start / relative` (`start` defaults to `folder`) when it stays inside `folder` after resolving `..` and
    links; else ClifError.

    `relative` comes from a user's file (`where` names the file and field): an absolute path, `..` or a link
    leading out of the folder is refused before anything is read or written.
    """
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise ClifError(f"{where} is {relative!r}; give a relative path inside {folder}")
    root = Path(folder).resolve()
    target = (Path(start).resolve() if start is not None else root).joinpath(relative).resolve()
    if Path(relative).is_absolute() or target == root or root not in target.parents:
        raise ClifError(
            f"{where} is {relative!r}, which leads outside {folder}; only names inside that folder are accepted"
        )
    return target


def check_plain_name(name: Any, where: str) -> str:
    """A name that becomes one file or folder name: no path separators, not `.` or `..`, not empty."""
    if not isinstance(name, str) or not name.strip() or name.strip() in (".", "..") or "\0" in name \
            or any(sep in name for sep in ("/", "\\", os.sep)):
        raise ClifError(f"{where} is {name!r}; a name must not be empty, '.', '..' or contain '/' or '\\'")
    return name


# ----------------------------------------------------------------------------------------------- overwrite


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite: bool, how: str = "pass --overwrite") -> None:
    """The one rule for files a command or node writes: an existing file is replaced only when asked."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise ClifError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                        f"{how} to replace {'it' if len(existing) == 1 else 'them'}, or choose another name")


# ---------------------------------------------------------------------------------------------------- JSON


def parse_json(text: bytes | str, expected: type, where: str, fix: str) -> Any:
    """JSON of the `expected` top-level type (dict or list) from a file's bytes; else ClifError naming it."""
    try:
        value = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as err:
        raise ClifError(f"{where} is not UTF-8 text (byte {err.start}); {fix}") from None
    except ValueError as err:
        raise ClifError(f"{where} is not valid JSON ({err}); {fix}") from None
    if not isinstance(value, expected):
        raise ClifError(
            f"{where} holds a JSON {_json_type(value)} where a JSON {_json_type(expected())} belongs; {fix}")
    return value


def read_json(path: str | os.PathLike, expected: type, fix: str) -> Any:
    """Read a JSON file whose top level must be `expected`; every problem is a ClifError naming the file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ClifError(f"{path} cannot be read ({err.strerror or err}); {fix}") from None
    return parse_json(raw, expected, str(path), fix)


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "true/false", type(None): "null"}.get(
        type(value), "number")


def field_of(record: Mapping[str, Any], key: str, expected: type, where: str) -> Any:
    """`record[key]` when present and of type `expected`; else ClifError naming the field."""
    if key not in record:
        raise ClifError(f"{where}: field {key!r} is missing")
    value = record[key]
    if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
        raise ClifError(f"{where}: field {key!r} is {value!r}; it must be a JSON {_json_type(expected())}")
    return value
