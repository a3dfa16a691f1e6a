"""A restricted unpickler for the public feature pickles, which come from strangers.

``pickle.load`` runs whatever callable a file names, so an untrusted pickle can execute code. The
public ERC layouts only need builtin containers and scalars plus numpy arrays, so the unpickler
resolves exactly those globals and refuses every other one *before* anything is called: a refused
file has run nothing. Python-2 pickles (the COGMEN/SDT files) load with ``encoding="latin1"``,
which is also what numpy needs to rebuild array buffers written by Python 2.

The admitted callables can still be abused, so every call a file makes (REDUCE, NEWOBJ, INST/OBJ)
and every state it applies (BUILD) is checked first:

- Memory. ``bytearray(8 << 30)`` is a 35-byte pickle, and ``numpy.ndarray((1 << 30,))`` or an array
  state of a huge shape are as small. Every allocation a call would make from a count or a shape is
  charged against an allowance of :data:`BUDGET_FACTOR` times the file size plus
  :data:`BUDGET_BYTES` and refused *before* it is made; every result (copies and conversions) is
  charged after the call, so chains of copies stop too. Length fields read from the file are
  checked against the bytes that remain (a memory map serves them), so a truncated or lying length
  is refused rather than allocated.
- numpy's own blind spots: an object-array state whose item list is shorter than its shape makes
  numpy read past the list (a crash), and a dtype state can claim fields or sizes that do not
  exist. Object-array states must hold exactly one item per element, and dtypes must be plain
  (numbers, strings, bytes, objects; no structured or sub-array dtypes, which no layout uses).
- Nesting. The loaded value may not nest containers deeper than :data:`MAX_NESTING` or contain
  itself: the readers, and anything that prints a value, would hit the recursion limit.

The checks need hooks the C unpickler does not offer, so this subclasses the pure-Python
``pickle._Unpickler``: an IEMOCAP-sized pickle (7,433 utterances, 22k arrays, 23-34 MB) loads in
0.3-1 s instead of 0.1-0.4 s, once, when it is converted.
"""

from __future__ import annotations

import math
import mmap
import operator
import pickle
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lantern.corpus.dialogue import CorpusError

# Real feature pickles are 35-400 MB, almost all array data, and loading one admits at most about
# twice its size: files of protocol <= 2 decode each array's bytes (``_codecs.encode``) and numpy
# copies them into the array. An object array takes 8 bytes per element, which the file spells in
# at least 2 (a memo reference). So 4 x the file size covers every legitimate layout with room to
# spare, and the constant covers the fixed cost of small objects (an empty set is 216 bytes, from 5
# bytes of file). A 35-byte file may then allocate 64 MiB, not the 8 GiB it asks for.
BUDGET_FACTOR = 4
BUDGET_BYTES = 64 << 20
# The layouts nest five levels (tuple > dict > list > object array > list); see _check_nesting.
MAX_NESTING = 100

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
# The only conversion ``_codecs.encode`` is admitted for (see allowed_globals).
_LATIN1 = ("latin1", "latin-1")
_BYTE_ORDERS = ("<", ">", "|", "=")


def _numpy_core_module(submodule: str) -> Any:
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy < 2
        return importlib.import_module(f"numpy.core.{submodule}")


_reconstruct = _numpy_core_module("multiarray")._reconstruct


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


class _Refused(pickle.UnpicklingError):
    """A file refused while loading; the message is complete but for the file name."""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def _elements(shape: Any) -> int:
    dims = (shape,) if hasattr(type(shape), "__index__") else tuple(shape)
    return math.prod(operator.index(d) for d in dims)


def _array_bytes(shape: Any, dtype: Any) -> int:
    return max(_elements(shape), 0) * np.dtype(dtype).itemsize


def _requested(func: Any, args: tuple, kwargs: dict) -> int:
    """Bytes ``func(*args, **kwargs)`` would allocate from a count or shape rather than copy."""
    if func is bytes or func is bytearray:
        if args and hasattr(type(args[0]), "__index__"):
            return max(operator.index(args[0]), 0)
    elif func is np.ndarray:
        shape = args[0] if args else kwargs.get("shape", ())
        dtype = args[1] if len(args) > 1 else kwargs.get("dtype", float)
        buffer = args[2] if len(args) > 2 else kwargs.get("buffer")
        if buffer is None:
            return _array_bytes(shape, dtype)
    elif func is _reconstruct and len(args) == 3:
        return _array_bytes(args[1], args[2])
    return 0


def _footprint(obj: Any) -> int:
    if isinstance(obj, np.ndarray):
        return obj.nbytes if obj.base is None else 0  # a view holds no memory of its own
    return sys.getsizeof(obj)


def _plain_dtype(dtype: np.dtype) -> None:
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind in "mM":
        raise _Refused(
            f"numpy dtype {dtype} is structured, a sub-array or a date (only plain numbers, strings, "
            "bytes and objects are admitted)"
        )


class _Data:
    """The file through a read-only memory map. A read the file cannot satisfy is refused as
    truncated instead of being allocated first, whatever length the file claims."""

    def __init__(self, view: mmap.mmap) -> None:
        self._view = view

    @property
    def position(self) -> int:
        return self._view.tell()

    def read(self, n: int) -> bytes:
        start = self._view.tell()
        data = self._view.read(n)
        if len(data) != n:
            raise _Refused(f"truncated: {n} bytes needed at byte {start}, {len(data)} left")
        return data

    def readline(self) -> bytes:
        line = self._view.readline()
        if not line.endswith(b"\n"):
            raise _Refused(f"truncated: a text record at byte {self.position - len(line)} has no end")
        return line


class RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with :func:`allowed_globals` as the only globals, and every call and
    state checked (see the module docstring). ``budget``: the bytes its calls may allocate."""

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: _Data, *, budget: int) -> None:
        super().__init__(data, encoding="latin1")
        self._data = data
        self._allowed = allowed_globals()
        self._budget = self._left = budget

    def find_class(self, module: str, name: str) -> Any:
        target = self._allowed.get((module, name))
        if target is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return target

    def _charge(self, nbytes: int, what: str) -> None:
        if nbytes > self._left:
            raise _Refused(
                f"at byte {self._data.position}, {what} asks for {_mib(nbytes)}, beyond the "
                f"{_mib(self._budget)} this file may allocate in all ({BUDGET_FACTOR} x its size + "
                f"{_mib(BUDGET_BYTES)}; {_mib(self._budget - self._left)} taken): it asks for memory "
                "its data cannot fill"
            )
        self._left -= nbytes

    def _call(self, func: Any, args: Any, kwargs: dict | None = None, *, new: bool = False) -> Any:
        args, kwargs = tuple(args), dict(kwargs or {})
        name = getattr(func, "__qualname__", type(func).__name__)
        if new and not isinstance(func, type):
            raise _Refused(f"NEWOBJ of {name}, which is not a class")
        if func is self._allowed[("_codecs", "encode")] and (len(args) != 2 or args[1] not in _LATIN1):
            raise _Refused("_codecs.encode is admitted only as the latin1 conversion pickle writes")
        if func is np.dtype and not (args and isinstance(args[0], str)):
            raise _Refused("numpy dtypes must be given by name (only plain dtypes are admitted)")
        requested = _requested(func, args, kwargs)
        self._charge(requested, f"{name}()")
        result = func.__new__(func, *args, **kwargs) if new else func(*args, **kwargs)
        if isinstance(result, np.dtype):
            _plain_dtype(result)
        self._charge(max(_footprint(result) - requested, 0), f"the result of {name}()")
        return result

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, new=True)

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, kwargs, new=True)

    def _instantiate(self, klass: Any, args: list) -> None:  # the INST and OBJ opcodes
        self.append(self._call(klass, args))

    def load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        self._charge(n, "BYTEARRAY8")
        self.append(bytearray(self.read(n)))

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray):
            self._check_array_state(state)
        elif isinstance(inst, np.dtype):
            self.stack[-1] = self._dtype_state(inst, state)
        else:
            raise _Refused(f"a {type(inst).__name__} given state (only numpy arrays and dtypes take one)")
        pickle._Unpickler.load_build(self)

    def _check_array_state(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("a numpy array state that is not (version, shape, dtype, fortran, data)")
        shape, dtype, _, data = state[-4:]
        if not isinstance(dtype, np.dtype):
            raise _Refused(f"a numpy array state whose dtype is a {type(dtype).__name__}")
        n = _elements(shape)
        self._charge(max(n, 0) * dtype.itemsize, f"an array of shape {shape}")
        if dtype.hasobject and not (isinstance(data, list) and len(data) == n):
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise _Refused(f"an object array of {n} elements is given {got} items")

    @staticmethod
    def _dtype_state(dtype: np.dtype, state: Any) -> tuple:
        """The state this dtype would pickle itself, with the file's byte order: the only field a
        plain dtype's state legitimately changes. Sizes, flags and the state's version come from
        the dtype's name, because numpy trusts them (a size or a version that does not match the
        tuple makes it read memory it does not own)."""
        if not isinstance(state, tuple) or len(state) < 8 or state[1] not in _BYTE_ORDERS:
            raise _Refused("a numpy dtype state that is not (version, byte order, ...)")
        if any(part is not None for part in state[2:5]):
            raise _Refused("a structured or sub-array numpy dtype (only plain dtypes are admitted)")
        own = dtype.__reduce__()[2]
        return (own[0], state[1], *own[2:])

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
    dispatch[pickle.BUILD[0]] = load_build


def _is_container(obj: Any) -> bool:
    if isinstance(obj, np.ndarray):
        return obj.dtype.hasobject
    return isinstance(obj, list | tuple | dict | set | frozenset)


def _children(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield value
    elif isinstance(obj, np.ndarray):
        yield from obj.ravel()
    else:
        yield from obj


def _check_nesting(root: Any) -> None:
    """Refuse a value whose containers nest deeper than MAX_NESTING or contain themselves.

    An iterative walk (it must not recurse itself) that visits each container once: shared ones
    remember their height, so a deep path through them is still found.
    """
    if not _is_container(root):
        return
    heights: dict[int, int] = {}
    on_path: set[int] = set()
    path: list[list] = []  # [container, iterator over its children, height found so far]

    def enter(node: Any) -> None:
        if len(path) >= MAX_NESTING:
            raise _Refused(f"containers nested more than {MAX_NESTING} levels deep")
        path.append([node, _children(node), 1])
        on_path.add(id(node))

    enter(root)
    while path:
        frame = path[-1]
        for child in frame[1]:
            if not _is_container(child):
                continue
            if id(child) in on_path:
                raise _Refused("a container that contains itself (a reference cycle)")
            height = heights.get(id(child))
            if height is None:
                enter(child)
                break
            if len(path) + height > MAX_NESTING:
                raise _Refused(f"containers nested more than {MAX_NESTING} levels deep")
            frame[2] = max(frame[2], height + 1)
        else:
            path.pop()
            on_path.discard(id(frame[0]))
            heights[id(frame[0])] = frame[2]
            if path:
                path[-1][2] = max(path[-1][2], frame[2] + 1)


def load_pickle(path: str | Path) -> Any:
    """Load an untrusted pickle, admitting only builtin containers/scalars and numpy arrays.

    Raises RefusedGlobalError (naming the file and the global) for anything that could run code, and
    CorpusError naming the file for a truncated, corrupt or oversized pickle (see the module
    docstring for what is checked).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    file = str(path)
    size = path.stat().st_size
    if size == 0:
        raise CorpusError("empty file (not a pickle)", file=file)
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            value = RestrictedUnpickler(_Data(view), budget=BUDGET_FACTOR * size + BUDGET_BYTES).load()
        _check_nesting(value)
        return value
    except _RefusedGlobal as exc:
        raise RefusedGlobalError(file, exc.global_name) from None
    except _Refused as exc:
        raise CorpusError(f"refused to load: {exc}", file=file) from None
    except (pickle.UnpicklingError, EOFError) as exc:
        raise CorpusError(
            f"not a readable pickle (truncated or corrupt): {exc or type(exc).__name__}", file=file
        ) from None
    except RecursionError:
        raise CorpusError("refused to load: values nested too deeply to rebuild", file=file) from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError, OverflowError) as exc:
        raise CorpusError(f"corrupt pickle: {type(exc).__name__}: {exc}", file=file) from None
