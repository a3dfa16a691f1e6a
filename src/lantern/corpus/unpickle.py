"""A restricted unpickler for the public feature pickles, which come from strangers.

``pickle.load`` runs whatever callable a file names, so an untrusted pickle can execute code. The
public ERC layouts only need builtin containers and scalars plus numpy arrays, so the unpickler
resolves exactly those globals and refuses every other one *before* anything is called: a refused
file has run nothing. Python-2 pickles (the COGMEN/SDT files) load with ``encoding="latin1"``,
which is also what numpy needs to rebuild array buffers written by Python 2.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from lantern.corpus.dialogue import CorpusError

_BUILTINS = (
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "str",
    "bytes",
    "bytearray",
    "int",
    "float",
    "bool",
    "complex",
)

# numpy moved ``numpy.core`` to ``numpy._core`` in 2.0; files written by either name the one they knew.
_NUMPY_CORE = ("numpy.core", "numpy._core")
_NUMPY_CORE_NAMES = {
    "multiarray": ("_reconstruct", "scalar"),
    "numeric": ("_frombuffer",),  # protocol-5 pickles of contiguous arrays
}


def _numpy_core_module(submodule: str) -> Any:
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy < 2
        return importlib.import_module(f"numpy.core.{submodule}")


def allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) → object, for every global a data pickle may name."""
    import builtins
    import codecs
    import collections

    allowed: dict[tuple[str, str], Any] = {}
    for name in _BUILTINS:
        allowed[("builtins", name)] = getattr(builtins, name)
        allowed[("__builtin__", name)] = getattr(builtins, name)  # Python 2 spelling
    allowed[("builtins", "NoneType")] = type(None)
    allowed[("__builtin__", "unicode")] = str
    allowed[("__builtin__", "long")] = int
    # Python 3 writes bytes at protocol < 3 as _codecs.encode(text, "latin1"): a pure conversion.
    allowed[("_codecs", "encode")] = codecs.encode
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for submodule, names in _NUMPY_CORE_NAMES.items():
        module = _numpy_core_module(submodule)
        for core in _NUMPY_CORE:
            for name in names:
                allowed[(f"{core}.{submodule}", name)] = getattr(module, name)
    return allowed


class RefusedGlobalError(CorpusError):
    """The pickle names a global outside the allowed set (it may try to run code)."""

    def __init__(self, file: str, global_name: str) -> None:
        super().__init__(
            f"refused to load: the pickle names the global {global_name!r}, which is not a builtin "
            "container, scalar or numpy array type (untrusted pickles may run code; nothing was executed)",
            file=file,
        )
        self.global_name = global_name


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, global_name: str) -> None:
        super().__init__(global_name)
        self.global_name = global_name


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only resolves :func:`allowed_globals`."""

    def __init__(self, file: io.BufferedIOBase, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._allowed = allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        target = self._allowed.get((module, name))
        if target is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return target


def load_pickle(path: str | Path) -> Any:
    """Load an untrusted pickle, admitting only builtin containers/scalars and numpy arrays.

    Raises RefusedGlobalError (naming the file and the global) for anything that could run code, and
    CorpusError naming the file for a truncated or corrupt pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with path.open("rb") as f:
            return RestrictedUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as exc:
        raise RefusedGlobalError(str(path), exc.global_name) from None
    except (pickle.UnpicklingError, EOFError) as exc:
        raise CorpusError(
            f"not a readable pickle (truncated or corrupt): {exc or type(exc).__name__}", file=str(path)
        ) from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as exc:
        raise CorpusError(f"corrupt pickle: {type(exc).__name__}: {exc}", file=str(path)) from None
