"""Pickle-based checkpoints load without running anything; data types still load."""

from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from maekit.errors import MaekitError
from maekit.formats import load_state_dict, read_checkpoint
from maekit.formats.safe_pickle import load_pickle


class CreatesFile:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_the_payloads_really_run_under_plain_pickle(tmp_path):
    """Control: without the safe loader, these files do create the marker."""
    for cls in (CreatesFile, CallsEval):
        marker = tmp_path / f"{cls.__name__}.ran"
        pickle.loads(pickle.dumps({"model": {"w": np.zeros(2)}, "x": cls(marker)}))
        assert marker.exists()


def _writers(payload):
    def pd(path):  # a PLSC-style plain pickle
        path.write_bytes(
            pickle.dumps({"model": {"w": ("w_0", np.zeros(2))}, "args": payload}, protocol=4)
        )

    def pth(path):  # torch.save's zip container
        torch.save({"model": {"w": torch.zeros(2)}, "args": payload}, path)

    def legacy(path):  # torch.save's pre-1.6 format
        torch.save(
            {"model": {"w": torch.zeros(2)}, "args": payload},
            path,
            _use_new_zipfile_serialization=False,
        )

    return {"checkpoint-1.pd": pd, "evil.pth": pth, "legacy.pth": legacy, "plain_pickle.pth": pd}


@pytest.mark.parametrize(
    "payload_cls, forbidden", [(CreatesFile, "posix.system"), (CallsEval, "builtins.eval")]
)
@pytest.mark.parametrize("name", ["checkpoint-1.pd", "evil.pth", "legacy.pth", "plain_pickle.pth"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload_cls, forbidden, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    _writers(payload_cls(marker))[name](path)
    for load in (load_state_dict, read_checkpoint):
        with pytest.raises(MaekitError) as ei:
            load(path)
        msg = one_line(ei)
        assert forbidden in msg and str(path) in msg and "nothing in the file was run" in msg
    assert not marker.exists()


def test_forbidden_object_nested_in_a_numpy_object_array(tmp_path):
    marker = tmp_path / "pwned"
    arr = np.empty(1, dtype=object)
    arr[0] = CreatesFile(marker)
    path = tmp_path / "x.pdparams"
    path.write_bytes(pickle.dumps({"w": arr}))
    with pytest.raises(MaekitError, match="posix.system"):
        load_state_dict(path)
    assert not marker.exists()


def test_codecs_only_decodes_latin1(tmp_path):
    """``_codecs.encode`` is allowed for protocol-2 bytes, not as a general codec hook."""
    import _codecs

    class Rot13:
        def __reduce__(self):
            return (_codecs.encode, ("abc", "rot13"))

    path = tmp_path / "x.pd"
    path.write_bytes(pickle.dumps({"a": Rot13()}, protocol=2))
    with pytest.raises(MaekitError, match="rot13"):
        load_pickle(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_data_types_load(tmp_path, protocol):
    obj = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f16": np.ones(3, np.float16),
        "i64": np.array([1, -2], np.int64),
        "bytes_like": np.frombuffer(b"\x00\x01\xff", np.uint8),
        "scalar": np.float64(2.5),
        "args": argparse.Namespace(lr=1e-3, name="x", sizes=[1, 2]),
        "ordered": OrderedDict(a=1, b=(2, 3)),
        "set": {1, 2},
        "tensor": torch.arange(4.0).reshape(2, 2),
        "nested": [None, True, 1.5, "s", b"raw"],
    }
    path = tmp_path / "ok.pd"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    back = load_pickle(path)
    for k in ("f32", "f16", "i64", "bytes_like"):
        assert back[k].dtype == obj[k].dtype and np.array_equal(back[k], obj[k]), k
    assert back["scalar"] == 2.5 and isinstance(back["args"], argparse.Namespace)
    assert vars(back["args"]) == vars(obj["args"])
    assert back["ordered"] == obj["ordered"] and back["set"] == {1, 2}
    assert torch.equal(back["tensor"], obj["tensor"])
    assert back["nested"] == obj["nested"]


def test_truncated_plain_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pd"
    data = pickle.dumps({"model": {"w": ("w_0", np.zeros(1000))}}, protocol=4)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MaekitError) as ei:
        load_state_dict(path)
    assert "cut.pd" in one_line(ei)


def test_paddle_tuple_tensors_do_not_open_a_door(tmp_path):
    """builtins.tuple is allowed for paddle.save's (name, ndarray) tensors; a payload inside
    such a tuple is still refused before it runs."""

    class PaddleStyle:
        def __init__(self, inner) -> None:
            self.inner = inner

        def __reduce__(self):
            return (tuple, (("blocks.0.w", self.inner),))

    marker = tmp_path / "pwned"
    ok = tmp_path / "ok.pd"
    ok.write_bytes(pickle.dumps({"model": {"w": PaddleStyle(np.ones(3, np.float32))}}))
    assert b"builtins" in ok.read_bytes()
    name, arr = load_pickle(ok)["model"]["w"]
    assert name == "blocks.0.w" and np.array_equal(arr, np.ones(3))
    bad = tmp_path / "bad.pd"
    bad.write_bytes(pickle.dumps({"model": {"w": PaddleStyle(CreatesFile(marker))}}))
    with pytest.raises(MaekitError, match="posix.system"):
        load_state_dict(bad)
    assert not marker.exists()
