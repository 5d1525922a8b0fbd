"""The restricted unpickler: reads the official format, refuses anything that calls code."""
from __future__ import annotations

import os
import pickle
import pickletools

import numpy as np
import pytest

from cifarzoo.data import load
from cifarzoo.data.safe_unpickle import safe_load
from cifarzoo.errors import DataError


def _globals_in(data: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def test_reads_the_official_python2_format(fake_files):
    fake = fake_files.make()
    official = fake_files.official_files(fake)["data_batch_1"]
    data = fake_files.py2_pickle_bytes(official)
    # The fixture really writes what the official files hold: numpy.core names.
    assert "numpy.core.multiarray _reconstruct" in _globals_in(data)

    obj = safe_load(data, source="data_batch_1")
    assert set(obj) == {b"batch_label", b"labels", b"data", b"filenames"}  # Py2 str -> bytes
    assert obj[b"data"].dtype == np.uint8 and obj[b"data"].shape == (12, 3072)
    np.testing.assert_array_equal(obj[b"data"], official[b"data"])
    assert obj[b"labels"] == official[b"labels"]
    assert obj[b"filenames"][0] == b"train_0.png"


def test_reads_numpy2_names_and_scalars():
    # Plain Python 3 pickles of arrays use numpy._core names (numpy 2) and SHORT_BINBYTES.
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    obj = safe_load(pickle.dumps({"x": arr, "n": np.int64(7), "t": (1, 2.5, None)}, protocol=4), source="p3")
    np.testing.assert_array_equal(obj["x"], arr)
    assert obj["n"] == 7 and obj["t"] == (1, 2.5, None)


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


class _Open:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _payloads(marker):
    return {
        "os.system": pickle.dumps(_System(f"touch {marker}"), protocol=2),
        "builtins.open": pickle.dumps(_Open(str(marker)), protocol=2),
        # Protocol 0, hand-written, as an attacker would: cos\nsystem\n(S'...'\ntR.
        "protocol0": b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.open", "protocol0"])
def test_refuses_a_pickle_that_would_create_a_file(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]

    # Control: the payload is live. Plain pickle really creates the file.
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(DataError, match=r"evil_batch: refused to unpickle.*(system|open)"):
        safe_load(payload, source="evil_batch")
    assert not marker.exists()


def test_crafted_batch_file_in_a_dataset_is_refused_by_name(tmp_path, fake_files):
    marker = tmp_path / "pwned"
    folder = fake_files.write_batches(tmp_path / "cifar-10-batches-py", fake_files.make(),
                                      overrides={"data_batch_3": _payloads(marker)["os.system"]})
    with pytest.raises(DataError) as err:
        load(folder)
    assert str(folder / "data_batch_3") in str(err.value)
    assert "refused" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [1, 40, 200])
def test_truncated_pickle_is_a_data_error_naming_the_source(fake_files, cut):
    data = fake_files.py2_pickle_bytes({b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DataError, match=r"^some/file: not a readable CIFAR pickle.*truncated or corrupt"):
        safe_load(data[:cut], source="some/file")


def test_garbage_is_a_data_error():
    with pytest.raises(DataError, match="x.bin: not a readable"):
        safe_load(b"\x00\x01garbage", source="x.bin")
