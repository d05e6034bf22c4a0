import numpy as np
import pytest

from pipelines import uid


def datacomp_encode(uids):
    """DataComp's own codec (resharder.py / baselines): hex uid -> (u8, u8)."""
    return np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))


def test_round_trip_and_datacomp_compatibility(tmp_path):
    uids = [uid.make_uid(f"http://example.com/{i}.jpg", f"caption {i}") for i in range(500)]
    uids += ["ffffffffffffffffffffffffffffffff", "00000000000000000000000000000000"]
    ours = uid.encode(uids)
    theirs = np.sort(datacomp_encode(uids))
    assert ours.dtype == theirs.dtype == np.dtype("u8,u8")
    assert np.array_equal(ours, theirs)
    assert sorted(uid.decode(ours)) == sorted(uids)
    path = tmp_path / "subset.npy"
    np.save(path, theirs)
    loaded = uid.load(str(path))
    assert uid.decode(loaded) == sorted(uids)


def test_contains_is_binary_search_membership():
    present = [uid.make_uid(f"u{i}", "t") for i in range(100)]
    absent = [uid.make_uid(f"v{i}", "t") for i in range(100)]
    arr = uid.encode(present)
    assert uid.contains(arr, present).all()
    assert not uid.contains(arr, absent).any()
    assert not uid.contains(uid.encode([]), present).any()


def test_make_uid_is_stable_and_pair_specific():
    a = uid.make_uid("http://x/a.jpg", "a dog")
    assert a == uid.make_uid("http://x/a.jpg", "a dog")
    assert a != uid.make_uid("http://x/a.jpg", "a cat")
    assert uid.is_uid(a) and len(a) == 32


@pytest.mark.parametrize("bad", ["xyz", "A" * 32, "0" * 31])
def test_rejects_malformed(bad):
    with pytest.raises(ValueError):
        uid.encode([bad])


def test_load_rejects_wrong_dtype(tmp_path):
    p = tmp_path / "bad.npy"
    np.save(p, np.arange(3))
    with pytest.raises(ValueError, match="u8,u8"):
        uid.load(str(p))


def test_counts_and_is_sorted_on_a_memory_mapped_uid_file(tmp_path):
    """A released uid file with repeats, read as a memory map: counts per query uid equal a
    Counter over DataComp's own encoding; order checks agree with Python's sort of the pairs."""
    from collections import Counter

    from pipelines.sources import datacomp as dc

    listed = [uid.make_uid(f"http://example.com/{i}.jpg", "t") for i in range(300)]
    listed += listed[:7] + listed[:2]  # two uids three times, five twice
    path = tmp_path / "2016.npy"
    np.save(path, np.sort(datacomp_encode(listed)))
    arr = dc.read_uid_file(str(path))
    assert isinstance(arr, np.memmap)  # stays on disk
    query = listed[:10] + [uid.make_uid("http://example.com/none.jpg", "t")]
    want = Counter(listed)
    assert uid.counts(arr, datacomp_encode(query)).tolist() == [want[u] for u in query]
    assert uid.counts(uid.encode([]), datacomp_encode(query)).tolist() == [0] * len(query)
    pairs = [(int(u[:16], 16), int(u[16:32], 16)) for u in listed]
    for order in (sorted(pairs), pairs, sorted(pairs, reverse=True)):
        a = np.array(order, np.dtype("u8,u8"))
        assert uid.is_sorted(a, chunk=16) == (order == sorted(order))
    unsorted = tmp_path / "unsorted.npy"
    np.save(unsorted, datacomp_encode(listed))  # not in DataComp's order: sorted on read
    assert uid.decode(dc.read_uid_file(str(unsorted))) == sorted(listed)
