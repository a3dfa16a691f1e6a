"""The restricted unpickler: admits data, refuses code, names the file."""

from __future__ import annotations

import collections
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lantern
from lantern.corpus.dialogue import CorpusError
from lantern.corpus.unpickle import RefusedGlobalError, load_pickle
from tests.corpus.corpus_fixtures import dump_pickle


class _Touch:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


class _Plain:
    pass


def test_admits_containers_scalars_and_numpy(tmp_path):
    obj = {
        "list": [1, 2.5, None, True, complex(1, 2), b"raw", "text"],
        "tuple": (1, (2, 3)),
        "set": {1, 2},
        "frozen": frozenset({"a"}),
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "i64": np.array([1, 2], dtype=np.int64),
        "objects": np.array(["x", 1], dtype=object),
        "scalar": np.float32(1.5),
        "fortran": np.asfortranarray(np.ones((3, 2))),
    }
    for protocol in (2, 4, 5):
        loaded = load_pickle(dump_pickle(tmp_path / f"p{protocol}.pkl", obj, protocol=protocol))
        assert (
            loaded["list"] == obj["list"]
            and loaded["set"] == obj["set"]
            and loaded["frozen"] == obj["frozen"]
        )
        np.testing.assert_array_equal(loaded["f32"], obj["f32"])
        assert loaded["f32"].dtype == np.float32
        assert list(loaded["objects"]) == ["x", 1]
        assert loaded["scalar"] == np.float32(1.5)


def test_python2_latin1_pickle_with_numpy_arrays(tmp_path):
    obj = {b"Ses01F_impro01": [np.arange(4, dtype=np.float32)], b"ids": [b"caf\xe9"], b"set": {b"a"}}
    path = dump_pickle(tmp_path / "py2.pkl", obj, py2=True)
    assert b"__builtin__" in path.read_bytes() and b"numpy.core.multiarray" in path.read_bytes()
    loaded = load_pickle(path)
    np.testing.assert_array_equal(loaded["Ses01F_impro01"][0], np.arange(4, dtype=np.float32))
    assert loaded["ids"] == ["caf\xe9"]  # Python-2 str read as latin1 text
    assert loaded["set"] == {"a"}


def test_refuses_os_system_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"x": _Touch(str(marker))}, protocol=2))
    with pytest.raises(RefusedGlobalError) as info:
        load_pickle(path)
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message and "system" in message  # posix.system / os.system
    assert info.value.global_name.endswith(".system")


@pytest.mark.parametrize("payload, name", [(_Eval(), "builtins.eval"), (_Plain(), "_Plain")])
def test_refuses_eval_and_any_class(tmp_path, payload, name):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps([payload], protocol=4))
    with pytest.raises(RefusedGlobalError, match=name) as info:
        load_pickle(path)
    assert str(path) in str(info.value)


def test_refuses_getattr_gadget(tmp_path):
    # builtins.getattr would let a pickle reach any attribute of an allowed object.
    path = tmp_path / "gadget.pkl"
    path.write_bytes(b"\x80\x02cbuiltins\ngetattr\nq\x00.")
    with pytest.raises(RefusedGlobalError, match=r"builtins\.getattr"):
        load_pickle(path)


def test_truncated_and_garbage_files_name_the_file(tmp_path):
    data = pickle.dumps({"a": np.zeros((10, 10))}, protocol=4)
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match=r"cut\.pkl"):
        load_pickle(truncated)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle at all")
    with pytest.raises(CorpusError, match=r"garbage\.pkl"):
        load_pickle(garbage)
    with pytest.raises(FileNotFoundError):
        load_pickle(tmp_path / "absent.pkl")


def test_every_protocol_and_the_less_common_types_still_load(tmp_path):
    obj = {
        "big_endian": np.arange(5, dtype=">f4"),
        "strings": np.array(["ab", "cde"]),
        "raw": bytearray(b"\x00\xffraw"),
        "ordered": collections.OrderedDict([("b", 1), ("a", [2.5, None])]),
        "scalar": np.float64(2.5),
        "deep": [[[[[["six levels"]]]]]],
        "large": np.ones((1024, 1024), dtype=np.float32),  # 4 MiB: well inside the allowance
    }
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = dump_pickle(tmp_path / f"p{protocol}.pkl", obj, protocol=protocol)
        loaded, reference = load_pickle(path), pickle.loads(path.read_bytes())
        for key in ("big_endian", "strings", "large"):
            np.testing.assert_array_equal(loaded[key], obj[key])
            assert loaded[key].dtype == reference[key].dtype
        assert loaded["raw"] == obj["raw"] and isinstance(loaded["raw"], bytearray)
        assert loaded["ordered"] == obj["ordered"] and type(loaded["ordered"]) is collections.OrderedDict
        assert loaded["scalar"] == obj["scalar"] and loaded["deep"] == obj["deep"]


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _int(n: int) -> bytes:
    return pickle.LONG1 + bytes([8]) + n.to_bytes(8, "little", signed=True)


EIGHT_GIB = 8 << 30
ARRAY_DTYPE = pickle.SHORT_BINUNICODE + b"\x02f8" + pickle.NEWFALSE + pickle.NEWTRUE + pickle.TUPLE3
HOSTILE = {
    "bytearray(8 GiB)": _global("builtins", "bytearray") + _int(EIGHT_GIB) + pickle.TUPLE1 + pickle.REDUCE,
    "bytes(8 GiB) by NEWOBJ": _global("builtins", "bytes") + _int(EIGHT_GIB) + pickle.TUPLE1 + pickle.NEWOBJ,
    "ndarray((1 << 30,))": _global("numpy", "ndarray")
    + _int(1 << 30)
    + pickle.TUPLE1
    + pickle.TUPLE1
    + pickle.REDUCE,
    "_reconstruct of 8 GiB": _global("numpy.core.multiarray", "_reconstruct")
    + _global("numpy", "ndarray")
    + _int(EIGHT_GIB)
    + pickle.TUPLE1
    + pickle.SHORT_BINBYTES
    + b"\x01b"
    + pickle.TUPLE3
    + pickle.REDUCE,
    "BINBYTES8 of 8 GiB": pickle.BINBYTES8 + EIGHT_GIB.to_bytes(8, "little") + b"abc",
    "BYTEARRAY8 of 8 GiB": pickle.BYTEARRAY8 + EIGHT_GIB.to_bytes(8, "little") + b"abc",
    # 48 MiB fits the allowance of a small file; 100 copies of it do not.
    "copies of a bytearray": _global("builtins", "bytearray")
    + _int(48 << 20)
    + pickle.TUPLE1
    + pickle.REDUCE
    + pickle.BINPUT
    + b"\x00"
    + pickle.POP
    + (_global("builtins", "bytes") + pickle.BINGET + b"\x00" + pickle.TUPLE1 + pickle.REDUCE + pickle.POP)
    * 100
    + pickle.NONE,
}


def _object_array_state(shape: int, items: int) -> bytes:
    """An object array whose state claims ``shape`` elements but lists ``items``: numpy reads past
    the list (it crashed the interpreter before the unpickler checked the count)."""
    data = pickle.dumps(np.array([f"x{i}" for i in range(items)], dtype=object), protocol=2)
    old = pickle.BININT1 + bytes([items]) + pickle.TUPLE1
    assert data.count(old) == 1
    return data.replace(old, _int(shape) + pickle.TUPLE1)


_CHILD = r"""
import json, resource, sys
from lantern.corpus.unpickle import load_pickle

with open("/proc/self/status") as status:
    held = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (held + (512 << 20), held + (512 << 20)))
for path in sys.argv[1:]:
    try:
        load_pickle(path)
        print(json.dumps("loaded"), flush=True)
    except Exception as exc:
        print(json.dumps(f"{type(exc).__name__}: {exc}"), flush=True)
with open("/proc/self/status") as status:  # VmHWM: this process's peak RSS (ru_maxrss spans the fork)
    print(next(line.split()[1] for line in status if line.startswith("VmHWM:")), flush=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the guard needs RLIMIT_AS and /proc (Linux)")
def test_tiny_pickles_cannot_ask_for_gigabytes(tmp_path):
    """Each hostile file is refused before it allocates. The loads run in a child whose address
    space is capped 512 MiB above its size after import, so a regression fails the test (as a
    MemoryError, or a crash) instead of exhausting the machine."""
    files = {}
    for i, (name, body) in enumerate(HOSTILE.items()):
        files[name] = tmp_path / f"h{i}.pkl"
        files[name].write_bytes(pickle.PROTO + b"\x05" + body + pickle.STOP)
    files["object array short of its shape"] = tmp_path / "objects.pkl"
    files["object array short of its shape"].write_bytes(_object_array_state(1000, 2))
    files["date dtype state short of its unit"] = tmp_path / "date.pkl"
    files["date dtype state short of its unit"].write_bytes(
        _dtype_with_state((4, "<", None, None, None, -1, -1, 0), name=b"M8")
    )
    assert max(p.stat().st_size for p in files.values()) < 4000
    env = {**os.environ, "PYTHONPATH": str(Path(lantern.__file__).parents[1])}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, files.values())],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    *outcomes, peak_kib = map(json.loads, child.stdout.splitlines())
    for (name, path), outcome in zip(files.items(), outcomes, strict=True):
        assert outcome.startswith(f"CorpusError: file {path}: refused to load: "), (name, outcome)
    assert "bytearray() asks for 8,192.0 MiB" in outcomes[0]
    assert "truncated: 8589934592 bytes needed" in outcomes[4]
    assert "object array of 1000 elements is given 2 items" in outcomes[-2]
    assert "numpy dtype datetime64 is structured, a sub-array or a date" in outcomes[-1]
    assert peak_kib < 300 << 10  # the 48 MiB bytearray and one copy of it, nothing like 8 GiB


def _nested_lists(depth: int) -> bytes:
    return (
        pickle.PROTO
        + b"\x04"
        + (pickle.EMPTY_LIST + pickle.MARK) * (depth - 1)
        + pickle.EMPTY_LIST
        + (pickle.APPENDS * (depth - 1))
        + pickle.STOP
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_nested_lists(100_000), "nested more than 100 levels deep"),
        (pickle.PROTO + b"\x04" + pickle.EMPTY_TUPLE + pickle.TUPLE1 * 100_000 + pickle.STOP, "nested more"),
        (_nested_lists(101), "nested more than 100 levels deep"),
        # l = []; l.append(l); [l]
        (b"\x80\x02]q\x00h\x00a\x85.", "contains itself"),
    ],
    ids=["100k lists", "100k tuples", "101 lists", "cycle"],
)
def test_deep_or_cyclic_nesting_is_refused(tmp_path, data, message):
    path = tmp_path / "deep.pkl"
    path.write_bytes(data)
    with pytest.raises(CorpusError, match=rf"file {path}: refused to load: .*{message}"):
        load_pickle(path)


def test_nesting_up_to_the_limit_loads(tmp_path):
    path = tmp_path / "deep.pkl"
    path.write_bytes(_nested_lists(100))
    value = load_pickle(path)
    for _ in range(99):
        (value,) = value
    assert value == []


def _dtype_with_state(state: tuple, name: bytes = b"V8") -> bytes:
    """numpy's own pickle of a dtype (REDUCE by name, then BUILD with its state), with another state."""
    named = pickle.SHORT_BINUNICODE + bytes([len(name)]) + name
    reduced = _global("numpy", "dtype") + named + pickle.TUPLE1 + pickle.REDUCE
    return (
        pickle.PROTO + b"\x02" + reduced + pickle.dumps(state, protocol=2)[2:-1] + pickle.BUILD + pickle.STOP
    )


def test_dtype_states_cannot_lie_about_their_layout(tmp_path):
    path = tmp_path / "dtype.pkl"
    path.write_bytes(_dtype_with_state((3, "|", None, None, None, 1 << 40, 1, 0)))
    assert load_pickle(path).itemsize == 8  # the size comes from the name, not the state

    offsets = {"a": (np.dtype("f4"), 1 << 62)}
    path.write_bytes(_dtype_with_state((3, "|", None, ("a",), offsets, 16, 1, 0)))
    with pytest.raises(CorpusError, match="refused to load: a structured or sub-array numpy dtype"):
        load_pickle(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _global("_codecs", "encode") + pickle.SHORT_BINUNICODE + b"\x01x"
            + pickle.SHORT_BINUNICODE + b"\x0eunicode_escape" + pickle.TUPLE2 + pickle.REDUCE,
            "only as the latin1 conversion",
        ),
        (
            _global("numpy", "dtype") + pickle.EMPTY_DICT + pickle.TUPLE1 + pickle.REDUCE,
            "numpy dtypes must be given by name",
        ),
        (
            _global("numpy", "dtype") + pickle.SHORT_BINUNICODE + b"\x0d(1000,1000)f4" + pickle.TUPLE1
            + pickle.REDUCE,
            "is structured, a sub-array or a date",
        ),
        (pickle.EMPTY_DICT + pickle.EMPTY_DICT + pickle.BUILD, "a dict given state"),
    ],
    ids=["exotic codec", "dtype from a dict", "sub-array dtype", "BUILD on a dict"],
)  # fmt: skip
def test_admitted_callables_are_held_to_their_pickle_uses(tmp_path, data, message):
    path = tmp_path / "abuse.pkl"
    path.write_bytes(pickle.PROTO + b"\x04" + data + pickle.STOP)
    with pytest.raises(CorpusError, match=rf"refused to load: .*{message}"):
        load_pickle(path)
