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


# --------------------------------------------------------------------------- files written by Python 3


def _python3_batch(fake_files) -> dict:
    """data_batch_1 as a Python 3 program holds it after loading with encoding='bytes'."""
    return safe_load(fake_files.py2_pickle_bytes(fake_files.official_files(fake_files.make())["data_batch_1"]),
                     source="b")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_reads_batches_resaved_by_python3(fake_files, protocol):
    batch = _python3_batch(fake_files)
    batch[b"labels"] = [np.int64(y) for y in batch[b"labels"]]  # numpy scalars, as some tools leave them
    data = pickle.dumps(batch, protocol=protocol)
    if protocol == 2:  # bytes and arrays then go through _codecs.encode(str, 'latin1')
        assert "_codecs encode" in _globals_in(data)
    obj = safe_load(data, source="resaved")
    np.testing.assert_array_equal(obj[b"data"], batch[b"data"])
    assert obj[b"labels"] == batch[b"labels"] and obj[b"filenames"] == batch[b"filenames"]


def test_a_python3_protocol2_batch_folder_loads_like_the_original(tmp_path, fake_files):
    fake = fake_files.make()
    resaved = {name: pickle.dumps(safe_load(fake_files.py2_pickle_bytes(obj), source=name), protocol=2)
               for name, obj in fake_files.official_files(fake).items()}
    folder = fake_files.write_batches(tmp_path / "cifar-10-batches-py", fake, overrides=resaved)
    ds = load(folder)
    np.testing.assert_array_equal(ds.train_images, fake.train_images)
    np.testing.assert_array_equal(ds.test_labels, fake.test_labels)


@pytest.mark.parametrize("payload, asks", [
    # _codecs.encode builds bytes for latin-1 only: other codecs (zlib, ...) are refused
    (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlibq\x00\x86R.", "_codecs.encode with 'zlib'"),
    # bytes(2**40) would allocate a terabyte: only bytes() is allowed
    (b"\x80\x02c__builtin__\nbytes\n\x8a\x06\x00\x00\x00\x00\x00\x01\x85R.", "builtins.bytes with arguments"),
    # numpy.ndarray((400000, 3072)) called directly
    (b"\x80\x02cnumpy\nndarray\nJ\x80\x1a\x06\x00M\x00\x0c\x86\x85R.", "numpy.ndarray called directly"),
    # a protocol-2 batch whose labels are os.system('true'): the codecs door does not open others
    (b"\x80\x02}X\x04\x00\x00\x00datac_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00latin1\x86R"
     b"X\x06\x00\x00\x00labelscos\nsystem\nX\x04\x00\x00\x00true\x85Ru.", "os.system"),
])
def test_what_python3_pickles_need_opens_nothing_else(payload, asks):
    with pytest.raises(DataError, match=rf"^f: refused to unpickle: it asks for {asks}"):
        safe_load(payload, source="f")


# --------------------------------------------------------------------------- memory bombs

TB = 1 << 40


def _bombs() -> dict[str, bytes]:
    """Tiny pickles that declare huge allocations; each must be refused before allocating."""
    q = lambda n: n.to_bytes(8, "little")  # noqa: E731
    reconstruct = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    return {
        "BINBYTES8": b"\x80\x04\x8e" + q(TB) + b"xx.",
        "BINUNICODE8": b"\x80\x04\x8d" + q(TB) + b"xx.",
        "BYTEARRAY8": b"\x80\x05\x96" + q(TB) + b"xx.",
        "FRAME": b"\x80\x04\x95" + q(TB) + b"N.",
        "LONG4": b"\x80\x02\x8b\xff\xff\xff\x7f" + b"x.",
        "BINSTRING": b"\x80\x02T\xff\xff\xff\x7fxx.",
        # _reconstruct(ndarray, (400000, 3072), b'B'): 1.2 GB of images from 117 bytes
        "_reconstruct shape": b"\x80\x02}U\x04data" + reconstruct
                              + b"J\x80\x1a\x06\x00M\x00\x0c\x86U\x01B\x87Rs.",
        # the official (0,) shape, then __setstate__ declaring (2**20, 2**20) uint8
        "__setstate__ shape": b"\x80\x02" + reconstruct + b"K\x00\x85U\x01B\x87R"
                              + b"(K\x01J\x00\x00\x10\x00J\x00\x00\x10\x00\x86cnumpy\ndtype\nU\x02u1\x89\x88\x87R"
                              + b"\x89U\x00tb.",
        # one-byte opcodes that each build a 64-byte dict: half a million of them
        "EMPTY_DICT flood": b"\x80\x02(" + b"}" * 500_000 + b"l.",
    }


@pytest.mark.parametrize("kind", list(_bombs()))
def test_declared_sizes_are_refused_before_allocating(kind, tmp_path):
    with pytest.raises(DataError) as err:
        safe_load(_bombs()[kind], source=str(tmp_path / "bomb"))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'bomb'}: refused to unpickle: it ")
    assert ("more than a CIFAR batch file" in message or "opcodes" in message), message
    assert "\n" not in message


def test_a_117_byte_batch_declaring_400000_images_is_refused_by_name(tmp_path, fake_files):
    bomb = _bombs()["_reconstruct shape"]
    assert len(bomb) < 120
    folder = fake_files.write_batches(tmp_path / "cifar-10-batches-py", fake_files.make(),
                                      overrides={"data_batch_4": bomb})
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(DataError, match=rf"^{folder / 'data_batch_4'}: refused to unpickle: it declares a "
                                        r"uint8 array of shape \(400000, 3072\) \(1,228,800,000 bytes\)"):
        load(folder)
    assert sorted(tmp_path.rglob("*")) == before


_PEAK_SCRIPT = """
import sys, tracemalloc
from cifarzoo.data import load
from cifarzoo.data.safe_unpickle import safe_load
from cifarzoo.errors import DataError
tracemalloc.start()
refused = 0
for path in sys.argv[1:]:
    try:
        (safe_load(open(path, 'rb'), source=path) if path.endswith('.pkl') else load(path))
    except DataError:
        refused += 1
# VmHWM: this process's own peak resident memory (ru_maxrss would carry the parent's over exec).
with open('/proc/self/status') as f:
    hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM:'))
print(refused, tracemalloc.get_traced_memory()[1], hwm)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads peak memory from Linux's /proc")
def test_peak_memory_of_refused_files_stays_small(tmp_path, fake_files):
    """Every bomb above, a 3 GiB sparse batch file and an archive member whose header
    declares 3 GiB, read in a fresh process: all refused, peak memory tens of MB."""
    import subprocess
    import sys
    import tarfile

    paths = []
    for i, data in enumerate(_bombs().values()):
        paths.append(tmp_path / f"bomb{i}.pkl")
        paths[-1].write_bytes(data)
    sparse = fake_files.write_batches(tmp_path / "sparse" / "cifar-10-batches-py", fake_files.make())
    with open(sparse / "data_batch_1", "r+b") as f:
        f.truncate(3 << 30)  # no disk space used
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 3 << 30
        tar.addfile(info)  # the header alone: refused before the data is looked for
    paths += [sparse, archive]
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, *map(str, paths)], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    refused, traced_peak, rss_peak = map(int, out.stdout.split())
    assert refused == len(paths)
    assert traced_peak < 50e6, f"{traced_peak:,} bytes allocated at the peak"
    assert rss_peak < 400e6, f"{rss_peak:,} bytes resident at the peak"


def test_arrays_are_counted_over_the_whole_file():
    # [_reconstruct(ndarray, (600,), b'B')] * 2 (distinct arrays): 600 bytes each, 1,200 in all
    one = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nM\x58\x02\x85U\x01B\x87Ra"
    two = b"\x80\x02]" + one + one + b"."
    assert [a.shape for a in safe_load(two, source="f", max_bytes=1_300)] == [(600,), (600,)]
    with pytest.raises(DataError, match=r"^f: refused to unpickle: it declares arrays of 1,200 bytes in all, "
                                        r"more than a CIFAR batch file can hold \(at most 1,000 bytes"):
        safe_load(two, source="f", max_bytes=1_000)


def _encode_bomb(chars: int, calls: int) -> bytes:
    """A list of ``calls`` results of ``_codecs.encode(s, "latin1")`` for one memoized ``s`` of ``chars``:
    a file of ``chars`` bytes that builds ``chars * calls`` (60 x 50 MB is 3 GB from a 50 MB file)."""
    s = ("\xe9" * chars).encode("utf-8")
    head = (b"\x80\x02c_codecs\nencode\nq\x00" + b"X" + len(s).to_bytes(4, "little") + s + b"q\x01"
            + b"X\x06\x00\x00\x00latin1q\x02]q\x03(")
    return head + b"h\x00h\x01h\x02\x86R" * calls + b"e."


def test_memoized_string_encoded_many_times_counts_every_copy():
    assert len(safe_load(_encode_bomb(100, 3), source="f", max_bytes=1_000)) == 3
    bomb = _encode_bomb(100, 20)
    assert len(bomb) < 1_000  # the file fits; what it builds (2,000 bytes) does not
    with pytest.raises(DataError, match=r"^f: refused to unpickle: its strings and the bytes built from them "
                                        r"come to more than 1,000 bytes, more than a CIFAR batch file can hold"):
        safe_load(bomb, source="f", max_bytes=1_000)
