"""Reading pickle-based files without running anything inside them.

A pickle is a small program: ``GLOBAL module.name`` imports any object and ``REDUCE`` calls
it, so ``pickle.load`` on a stranger's checkpoint can run ``os.system``. Two readers here
refuse that before anything runs:

- PyTorch files (zip or legacy) go through ``torch.load(weights_only=True)``, with
  ``argparse.Namespace`` (official MAE checkpoints pickle their ``args`` as one) and numpy
  arrays added to its allow-list.
- Plain pickles (PLSC's ``.pd`` / ``.pdparams``) go through :class:`RestrictedUnpickler`,
  whose ``find_class`` hands out only numpy arrays/dtypes, tensors/storages (rebuilt via the
  weights-only loader), plain containers and ``argparse.Namespace``. ``builtins.tuple`` is
  among the containers: ``paddle.save`` writes every tensor inside a nested dict (PLSC's
  ``{'model': state_dict, 'optimizer': ...}``) as ``REDUCE(tuple, ((name, ndarray),))``.
  Calling ``tuple`` only iterates objects the allow-list already built, so it runs no code.

Anything else is refused with a :class:`MaekitError` naming the forbidden global.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import io
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import MaekitError

try:  # numpy >= 2 keeps the pickle helpers in numpy._core; older files name numpy.core
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

ALLOWED_KINDS = "tensors, numpy arrays, plain containers and argparse.Namespace"


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list; ``name`` is ``module.qualname``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"forbidden global {name}")
        self.name = name


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it (bytes written as latin-1 text), only that."""
    if encoding not in ("latin1", "latin-1"):
        raise ForbiddenGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _bytearray(source: object = b"", *args: object) -> bytearray:
    """``bytearray`` of data only: ``bytearray(2_000_000_000)`` from a 57-byte file would
    allocate 2 GB of zeros before anything could refuse the file."""
    if isinstance(source, int):
        raise ForbiddenGlobal(f"builtins.bytearray({source}) (an allocation of {source} bytes)")
    return bytearray(source, *args)


def _storage_from_bytes(data: bytes):
    """What ``torch.storage._load_from_bytes`` does, but through the weights-only loader."""
    return torch.load(io.BytesIO(data), weights_only=True)


def _numpy_globals() -> dict[str, object]:
    table: dict[str, object] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for module in ("numpy.core", "numpy._core"):  # the name depends on the writer's numpy
        table[f"{module}.multiarray._reconstruct"] = _np_multiarray._reconstruct
        table[f"{module}.multiarray.scalar"] = _np_multiarray.scalar
        table[f"{module}.numeric._frombuffer"] = _np_numeric._frombuffer
    for name in dir(np.dtypes):  # numpy >= 1.25 pickles dtypes as numpy.dtypes.Float32DType etc.
        obj = getattr(np.dtypes, name)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            table[f"numpy.dtypes.{name}"] = obj
    return table


def _plain_globals() -> dict[str, object]:
    table = {
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.tuple": tuple,  # paddle.save's (name, ndarray) tensors in nested dicts
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.complex": complex,
        "builtins.bytearray": _bytearray,  # of data; bytearray(N) allocates N bytes
        "builtins.slice": slice,
        "argparse.Namespace": argparse.Namespace,
        "_codecs.encode": _latin1_encode,
        # tensors pickled with plain pickle: a storage (itself a torch file) + a rebuild call
        "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
        "torch.storage._load_from_bytes": _storage_from_bytes,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
    }
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            table[f"torch.{name}"] = getattr(torch, name)
    return {**table, **_numpy_globals()}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose imports are limited to data types (see module docstring)."""

    _allowed: dict[str, object] | None = None

    def find_class(self, module: str, name: str) -> object:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _plain_globals()
        # protocol-2 pickles name Python 2 modules (__builtin__.set): map them as pickle does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return RestrictedUnpickler._allowed[f"{module}.{name}"]
        except KeyError:
            raise ForbiddenGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not used by plain-pickle checkpoints")


def refusal(path: str | Path, name: str) -> MaekitError:
    return MaekitError(
        f"refusing to load {path}: it contains a pickled reference to {name}, which could run "
        f"code; checkpoints may hold only {ALLOWED_KINDS}, and nothing in the file was run "
        "(if you trust its source, re-save just the weights, e.g. torch.save(model.state_dict()))"
    )


def unreadable(path: str | Path, error: BaseException) -> MaekitError:
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else f"{type(error).__name__} (empty or truncated file)"
    return MaekitError(f"could not read checkpoint {path}: {reason}")


def load_pickle(path: str | Path) -> object:
    """The first object pickled in ``path``, read by :class:`RestrictedUnpickler`."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except ForbiddenGlobal as e:
        raise refusal(path, e.name) from None
    except MaekitError:
        raise
    except Exception as e:  # truncated, not a pickle, a storage the weights-only loader refused
        found = _UNSUPPORTED.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if found:
            raise refusal(path, found.group(1)) from None
        raise unreadable(path, e) from e


def _torch_safe_globals() -> list:
    extra: list = [argparse.Namespace]
    for name, obj in _numpy_globals().items():
        extra.append((obj, name))
    return extra


_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+)")


def load_torch(path: str | Path) -> object:
    """``torch.load(weights_only=True)`` plus Namespace/numpy; a refusal names the global.
    A zip checkpoint's CRC-32 checksums (torch.save writes one per record; torch's reader
    checks none) are verified first: flipped bytes are refused, never loaded as weights."""
    verify_zip_checksums(path)
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _UNSUPPORTED.search(str(e))
        if found:
            name = found.group(1)  # torch names builtins without their module
            raise refusal(path, name if "." in name else f"builtins.{name}") from None
        raise unreadable(path, e) from e
    except Exception as e:  # truncated zip, bad magic number, ...
        raise unreadable(path, e) from e


def verify_zip_checksums(path: str | Path) -> None:
    """Refuse a zip-format checkpoint whose records do not match their stored CRC-32."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return  # a legacy (pre-1.6) file: no checksums to verify
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, EOFError):
        return  # unreadable as a zip: torch.load names the problem
    if bad is not None:
        raise MaekitError(
            f"could not read checkpoint {path}: record {bad} does not match its stored "
            "checksum (the file is damaged: bit rot or an incomplete copy); use another copy, "
            "or an earlier checkpoint"
        )
