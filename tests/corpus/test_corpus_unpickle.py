"""The restricted unpickler: admits data, refuses code, names the file."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from corpus_fixtures import dump_pickle

from lantern.corpus.dialogue import CorpusError
from lantern.corpus.unpickle import RefusedGlobalError, load_pickle


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
