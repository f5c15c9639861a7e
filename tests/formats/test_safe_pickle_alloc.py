"""Issue 29 case 29: a 57-byte ``.pdparams`` holding ``bytearray(2e9)`` once allocated 2.6 GB
before it was refused; the restricted unpickler now refuses the allocation itself."""

from __future__ import annotations

import pickle
import tracemalloc

import pytest

from maekit.errors import MaekitError
from maekit.formats.safe_pickle import load_pickle


class _Alloc:
    def __reduce__(self):
        return (bytearray, (2_000_000_000,))


def test_a_pickled_huge_bytearray_is_refused_before_it_is_allocated(tmp_path):
    path = tmp_path / "bomb.pdparams"
    path.write_bytes(pickle.dumps({"w": _Alloc()}, protocol=2))
    assert path.stat().st_size < 100
    tracemalloc.start()
    with pytest.raises(MaekitError, match=r"bytearray\(2000000000\)"):
        load_pickle(path)
    assert tracemalloc.get_traced_memory()[1] < 10_000_000
    tracemalloc.stop()


def test_bytearrays_of_data_still_load(tmp_path):
    path = tmp_path / "ok.pdparams"
    path.write_bytes(pickle.dumps({"b": bytearray(b"abc")}, protocol=2))
    assert load_pickle(path) == {"b": bytearray(b"abc")}
