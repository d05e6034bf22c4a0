"""Safe inputs: pickles go through a restricted unpickler (a crafted one runs nothing), DomainNet
split lines are checked with file:line errors, variant names cannot leave variants/."""
from __future__ import annotations

import builtins
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from benchmark_builder import task_streams as ts
from benchmark_builder.layout import Layout
from pipelines.safe_inputs import InputError, UnsafePickle, check_name, loads_pickle, sql_string

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Exploit:
    """Pickles to a call of ``fn(*args)``: what a crafted data file does to plain ``pickle.load``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _exploits(marker: str) -> list[bytes]:
    cmd = f"touch {marker}"
    return [
        pickle.dumps(_Exploit(os.system, cmd), protocol=2),
        pickle.dumps({b"data": _Exploit(os.system, cmd)}, protocol=5),
        pickle.dumps(_Exploit(builtins.eval, f"__import__('os').system({cmd!r})"), protocol=0),
        pickle.dumps(_Exploit(subprocess.call, ["touch", marker]), protocol=4),
        pickle.dumps(np.array([1, _Exploit(os.system, cmd)], dtype=object), protocol=3),  # hidden in an object array
        b"c__builtin__\neval\n(S'__import__(\"os\").system(\"" + cmd.encode() + b"\")'\ntR.",  # Python 2 spelling
    ]


def test_crafted_pickles_are_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"
    for i, data in enumerate(_exploits(str(marker))):
        with pytest.raises(UnsafePickle, match=r"refused pickle: it refers to (posix\.system|builtins\.eval|"
                                               r"__builtin__\.eval|subprocess\.call)"):
            loads_pickle(data, f"exploit{i}")
        assert not marker.exists(), f"exploit {i} ran"
    # the oracle: plain pickle does run them (so the refusal above is what protects)
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=_exploits(str(marker))[0], check=False)
    assert marker.exists()


def test_crafted_cifar_file_is_refused_naming_it(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    marker = tmp_path / "ran"
    (base / "meta").write_bytes(_exploits(str(marker))[1])
    with pytest.raises(InputError, match=f"{base / 'meta'}: refused pickle"):
        ts.read_cifar100(str(tmp_path))
    assert not marker.exists()
    (base / "meta").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(InputError, match="not a readable pickle"):
        ts.read_cifar100(str(tmp_path))


def _py2_pickle(obj) -> bytes:
    """What Python 2's ``cPickle.dump(obj, f, 2)`` writes for CIFAR's types (dict, list, int, str,
    uint8 ndarray), spelled out opcode by opcode: str is BINSTRING, arrays are numpy 1's reduce."""
    out = [b"\x80\x02"]

    def s(b: bytes) -> bytes:
        return b"T" + struct.pack("<i", len(b)) + b

    def w(o):
        if isinstance(o, dict):
            out.append(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.append(b"u")
        elif isinstance(o, list):
            out.append(b"](")
            for v in o:
                w(v)
            out.append(b"e")
        elif isinstance(o, bytes):
            out.append(s(o))
        elif isinstance(o, int):
            out.append(b"J" + struct.pack("<i", o))
        else:
            assert o.dtype == np.uint8 and o.ndim == 2
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R(K\x01"
                       + b"".join(b"J" + struct.pack("<i", n) for n in o.shape) + b"\x86"
                       + b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|")
                       + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(o.tobytes()) + b"tb")

    w(obj)
    return b"".join(out) + b"."


def test_real_cifar100_format_pickles_load(tmp_path):
    rng = np.random.default_rng(7)
    labels = [3, 0, 99, 3]
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    data[:, :1024] = 10  # red plane
    data[:, 1024:2048] = 200  # green plane
    data[:, 2048:] = np.array(labels, dtype=np.uint8)[:, None]  # blue plane encodes the label
    names = [f"class_{c}".encode() for c in range(100)]
    batch = {b"data": data, b"fine_labels": labels, b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"],
             b"batch_label": b"training batch 1 of 1"}
    # the published files are Python 2 pickles; Python 3 re-dumps at every protocol load the same
    py2 = loads_pickle(_py2_pickle(batch))
    assert np.array_equal(py2[b"data"], data) and py2[b"fine_labels"] == labels and py2[b"filenames"][2] == b"c.png"
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        got = loads_pickle(pickle.dumps(batch, protocol=proto))
        assert np.array_equal(got[b"data"], data) and got[b"data"].dtype == np.uint8
        assert got[b"fine_labels"] == labels and got[b"batch_label"] == b"training batch 1 of 1"
    plain = {"f32": np.float32(1.5), "set": {1, 2}, "fs": frozenset("ab"), "c": 1 + 2j, "big": 2**80,
             "nested": [(1, "x"), {"k": None}], "ba": bytearray(b"xy")}
    assert loads_pickle(pickle.dumps(plain, protocol=2)) == plain

    base = tmp_path / "cifar-100-python"
    base.mkdir()
    (base / "meta").write_bytes(_py2_pickle({b"fine_label_names": names, b"coarse_label_names": [b"x"]}))
    (base / "train").write_bytes(_py2_pickle(batch))
    (base / "test").write_bytes(_py2_pickle({**batch, b"fine_labels": labels[::-1]}))
    ds = ts.read_cifar100(str(tmp_path))
    assert ds.classnames[99] == "class_99" and [i.cls for i in ds.train] == labels and [i.cls for i in ds.test] == labels[::-1]
    img = np.asarray(Image.open(__import__("io").BytesIO(ds.train[2].load())))
    assert img.shape == (32, 32, 3)
    assert abs(int(img[..., 0].mean()) - 10) <= 3 and abs(int(img[..., 1].mean()) - 200) <= 3
    assert abs(int(img[..., 2].mean()) - 99) <= 3  # channel-major order kept

    (base / "train").write_bytes(_py2_pickle({**batch, b"fine_labels": [3, 0, 100, 3]}))
    with pytest.raises(InputError, match=r"train: label 100 of image 2 is not one of the 100 classes"):
        ts.read_cifar100(str(tmp_path))


def _domainnet(root):
    for d in ("clipart", "sketch"):
        for c in ("bee", "cup"):
            os.makedirs(root / d / c)
            for i in range(2):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(root / d / c / f"{i}.jpg")
        (root / f"{d}_train.txt").write_text(f"{d}/bee/0.jpg 0\n{d}/cup/0.jpg 1\n")
        (root / f"{d}_test.txt").write_text(f"{d}/bee/1.jpg 0\n\n{d}/cup/1.jpg 1\n")
    (root / "outside.jpg").write_bytes(b"x")


@pytest.mark.parametrize("line, why", [
    ("clipart/bee/1.jpg", "expected 'domain/class/image label'"),
    ("clipart/bee/1.jpg -1", "expected 'domain/class/image label'"),
    ("clipart/bee/1.jpg 0 extra", "expected 'domain/class/image label'"),
    ("../outside.jpg 0", "is not 'domain/class/image' inside"),
    ("clipart/../../outside.jpg 0", "is not 'domain/class/image' inside"),
    ("/etc/passwd 0", "is not 'domain/class/image' inside"),
    ("clipart/bee/../cup 0", "is not 'domain/class/image' inside"),
    ("sketch/bee/1.jpg 0", "is not in domain 'clipart'"),
    ("clipart/bee/missing.jpg 0", "does not exist"),
    ("clipart/bee/1.jpg 1", "label 1 for class 'bee' conflicts with .*clipart_train.txt:1"),
    ("clipart/newclass/1.jpg 0", "label 0 for class 'newclass' conflicts with class 'bee'"),
])
def test_domainnet_split_lines_are_checked_with_file_and_line(tmp_path, line, why):
    root = tmp_path / "dn"
    _domainnet(root)
    assert len(ts.read_domainnet(str(root)).train) == 4
    (root / "clipart_test.txt").write_text(f"clipart/bee/1.jpg 0\n\n{line}\n")
    with pytest.raises(InputError, match=f"clipart_test.txt:3: .*{why}"):
        ts.read_domainnet(str(root))


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "x/..", "a b", "é", "a\\b", "x\n", "*", "a;b"])
def test_bad_variant_names_are_refused(tmp_path, name):
    with pytest.raises(InputError, match="bad variant name"):
        Layout(str(tmp_path)).variant(name)


@pytest.mark.parametrize("name", ["basic", "clip_score", "v1.2-en", "A_b.c-9", "..x", "x.."])
def test_good_variant_names_stay_under_variants(tmp_path, name):
    root = os.path.realpath(os.path.join(str(tmp_path), "tic-datacomp", "variants"))
    assert os.path.dirname(os.path.realpath(Layout(str(tmp_path)).variant(check_name(name)))) == root


def test_sql_string_round_trips_quotes():
    import duckdb

    for s in ["it's", "''", "a'; drop table x; --", "x\\'y", "\"q\""]:
        assert duckdb.connect().execute(f"select {sql_string(s)}").fetchone()[0] == s


def test_training_cli_refuses_a_crafted_cifar_file_in_one_line(tmp_path):
    base = tmp_path / "cifar" / "cifar-100-python"
    base.mkdir(parents=True)
    marker = tmp_path / "ran"
    (base / "meta").write_bytes(_exploits(str(marker))[0])
    r = subprocess.run([sys.executable, "-m", "training.incremental", "--dataset", "cifar100", "--data", str(tmp_path / "cifar"),
                        "--data-dir", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert "refused pickle: it refers to posix.system" in r.stderr and not marker.exists()
