"""Near-duplicate primitives: LSH keys, bucket resolution, chains, and the Beam stage agreeing
with the in-process computation on planted near-copies."""
from __future__ import annotations

import random

import apache_beam as beam
import numpy as np
from apache_beam.testing.util import assert_that, equal_to

from pipelines import neardup as nd
from pipelines.transforms import dedup

CFG = nd.NearDupConfig()


def _flip(h: int, n: int, r: random.Random) -> int:
    for b in r.sample(range(256), n):
        h ^= 1 << b
    return h


def _planted(n_distinct=400, n_copies=120, seed=0):
    r = random.Random(seed)
    items, truth = [], {}
    for i in range(n_distinct):
        items.append(nd.Item((1, f"2015-{i:05d}", f"a{i:04d}"), f"a{i:04d}", r.getrandbits(256), "earlier" if i % 2 else "current"))
    for j in range(n_copies):
        src = items[r.randrange(n_distinct)]
        h = _flip(src.phash, r.randint(0, CFG.threshold), r)
        items.append(nd.Item((1, f"2016-{j:05d}", f"c{j:04d}"), f"c{j:04d}", h, "current"))
        truth[f"c{j:04d}"] = src.uid
    return items, truth


def test_band_keys_scalar_and_vectorised_agree():
    r = random.Random(1)
    hs = [r.getrandbits(256) for _ in range(20)]
    arr = nd.band_keys_array(nd.phash_words(hs), CFG)
    assert [nd.band_keys(h, CFG) for h in hs] == arr.tolist()
    assert len(set(arr[0].tolist())) == CFG.tables  # tables never share a key


def test_planted_copies_found_and_nothing_else():
    items, truth = _planted()
    found = nd.near_duplicates_local(items, CFG)
    assert {u: w.uid for u, w in found.items()} == truth  # recall and precision both 100%


def test_earliest_wins_chains_resolve_and_eval_images_win_first():
    base = 12345678901234567890
    a = nd.Item((1, "2014", "a"), "a", base, "earlier")
    b = nd.Item((1, "2015", "b"), "b", base ^ 0xFFFF, "current")  # 16 bits from a
    c = nd.Item((1, "2016", "c"), "c", base ^ (0xFFFF << 16) ^ 0xFFFF, "current")  # 16 from b, 32 from a
    got = nd.near_duplicates_local([c, b, a], CFG)
    assert got["b"].uid == "a" and got["c"].uid == "a"  # c -> b -> a: the root
    ev = nd.Item((0, "imagenet", "x"), "imagenet:x", base ^ 0b111, "imagenet")
    got = nd.near_duplicates_local([a, b, ev], CFG)
    assert nd.reason_for(got["b"]) == "eval_overlap:imagenet"


def test_caption_signal_confirms_looser_image_matches():
    r = random.Random(3)
    h = r.getrandbits(256)
    far = _flip(h, 26, r)  # beyond threshold 20, within caption_threshold 32
    cap = nd.caption_signature("a red circle on a wooden table at dusk", CFG)
    other = nd.caption_signature("an orange spiral above the snowy mountains today", CFG)
    a = nd.Item((1, "1", "a"), "a", h, "earlier", cap)
    assert nd.matches(a, nd.Item((1, "2", "b"), "b", far, "current", cap), CFG)
    assert not nd.matches(a, nd.Item((1, "2", "b"), "b", far, "current", other), CFG)
    assert not nd.matches(a, nd.Item((1, "2", "b"), "b", _flip(h, 40, r), "current", cap), CFG)


def test_beam_stage_matches_local_computation():
    items, truth = _planted(150, 40, seed=5)
    rows = [{"uid": it.uid, "phash": f"{it.phash:064x}", "first_seen": it.order[1], "text": "", "dedup_reason": None,
             "duplicates": []} for it in items if it.origin == "current"]
    refs = [it for it in items if it.origin != "current"]
    want = nd.near_duplicates_local(items, CFG)
    with beam.Pipeline("FnApiRunner") as p:
        out = (p | "Rows" >> beam.Create(rows), p | "Refs" >> beam.Create(refs)) | dedup.NearDedup(CFG)
        assert_that(out | beam.Map(lambda r: (r["uid"], r["dedup_reason"])), equal_to(
            [(r["uid"], nd.reason_for(want[r["uid"]]) if r["uid"] in want else None) for r in rows]))


def test_shared_keys_are_the_keys_two_items_have_however_the_input_is_split():
    """``SharedKeys`` (the LSH keys that can hold a match; only their items move to the bucket
    shuffle) against a plain count, for the partial accumulators Beam's lifted combine makes
    from any split of the input, merged in any grouping."""
    import collections

    fn = dedup.SharedKeys()
    r = random.Random(3)
    for n, spread in ((50, 40), (3000, 1 << 17)):  # dense (most keys shared) and sparse keys
        lists = [[(t << 24) | r.randrange(spread) for t in range(CFG.tables)] for _ in range(n)]
        counts = collections.Counter(k for keys in lists for k in keys)
        want = {k for k, c in counts.items() if c >= 2}
        assert want and len(want) < len(counts)
        for size in (1, 7, n):
            accs = []
            for i in range(0, n, size):
                acc = fn.create_accumulator()
                for keys in lists[i:i + size]:
                    acc = fn.add_input(acc, keys)
                accs.append(fn.compact(acc))
            r.shuffle(accs)
            merged = fn.merge_accumulators([fn.merge_accumulators(accs[:len(accs) // 2]), *accs[len(accs) // 2:]])
            assert fn.extract_output(merged) == want, (n, size)
    assert fn.extract_output(fn.merge_accumulators([fn.create_accumulator()])) == frozenset()
    # a key twice in one item's list counts twice, as two bucket entries do
    acc = fn.add_input(fn.create_accumulator(), [5, 5, 6])
    assert fn.extract_output(acc) == {5}
