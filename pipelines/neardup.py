"""Near-duplicate detection: LSH on perceptual-hash bits, Hamming confirmation, MinHash captions.

No all-pairs comparison. Each 256-bit pHash is cut into ``tables`` keys, each key a fixed,
seeded sample of ``bits_per_table`` bit positions (bit-sampling LSH for Hamming distance).
Two hashes at distance d share a given key with probability about (1 - d/256)^k, so close
pairs meet in some table while unrelated images (d around 128) almost never do, and each
bucket stays small: the cost grows linearly with the number of hashes. Pairs that meet are
confirmed by the exact Hamming distance (``threshold``); pairs a little further apart
(``caption_threshold``) are also confirmed when their captions are near-duplicates by MinHash
Jaccard (datasketch), the second signal.

Resolution is "earliest wins": an item is a near-duplicate of the earliest item (by
``order``) it matches; evaluation images order before every sample, so a training sample that
matches one is an evaluation overlap. Chains (a ~ b ~ c with a !~ c) resolve to the root.

The functions are plain Python so the Beam stage (``transforms/dedup.py``), the decontamination
of user-supplied evaluation sets and the scaling benchmark all run the same code.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np


@dataclass(frozen=True)
class NearDupConfig:
    bits: int = 256
    tables: int = 20
    bits_per_table: int = 24
    threshold: int = 20  # copies on the embedded web: <= 16; distinct images: >= 44
    caption_threshold: int = 32  # looser image threshold when captions also match
    caption_jaccard: float = 0.8
    num_perm: int = 64
    seed: int = 1

    def __post_init__(self):
        if not 0 <= self.threshold <= self.caption_threshold < self.bits:
            raise ValueError("need 0 <= threshold <= caption_threshold < bits")
        if not 1 <= self.bits_per_table <= min(self.bits, 48) or self.tables >= 1 << (64 - self.bits_per_table):
            raise ValueError("bits_per_table must be in 1..48 and tables < 2**(64 - bits_per_table)")


class Item(NamedTuple):
    """One image taking part in near-duplicate detection."""

    order: tuple  # smaller wins; evaluation images use (0, ...), samples (1, first_seen, uid)
    uid: str
    phash: int
    origin: str  # "current", "earlier", or the eval set name for evaluation images
    caption: bytes = b""  # MinHash signature (uint32 little endian), empty when there is no text
    year: int | None = None  # the sample's year; None for evaluation images


def _positions(cfg: NearDupConfig) -> np.ndarray:
    r = np.random.default_rng(cfg.seed)
    return np.stack([r.choice(cfg.bits, cfg.bits_per_table, replace=False) for _ in range(cfg.tables)])


_POS_CACHE: dict = {}


def band_keys(phash: int, cfg: NearDupConfig) -> list[int]:
    """One integer key per table: the table index above the sampled bits."""
    pos = _POS_CACHE.get(cfg)
    if pos is None:
        pos = _POS_CACHE[cfg] = _positions(cfg)
    bits = np.array([(phash >> int(b)) & 1 for b in range(cfg.bits)], dtype=np.uint64)
    sampled = bits[pos]  # tables x k
    weights = np.left_shift(np.uint64(1), np.arange(cfg.bits_per_table, dtype=np.uint64))
    values = (sampled * weights).sum(axis=1)
    return [(t << cfg.bits_per_table) | int(v) for t, v in enumerate(values)]


def band_keys_array(hashes: np.ndarray, cfg: NearDupConfig) -> np.ndarray:
    """``band_keys`` for many hashes at once: ``hashes`` is (n, bits/64) uint64 words, least
    significant word first; returns (n, tables) keys (table index above the sampled bits)."""
    pos = _POS_CACHE.get(cfg)
    if pos is None:
        pos = _POS_CACHE[cfg] = _positions(cfg)
    word, off = pos // 64, (pos % 64).astype(np.uint64)
    sampled = (hashes[:, word] >> off) & np.uint64(1)  # n x tables x k
    weights = np.left_shift(np.uint64(1), np.arange(cfg.bits_per_table, dtype=np.uint64))
    values = (sampled * weights).sum(axis=2, dtype=np.uint64)
    return values | (np.arange(cfg.tables, dtype=np.uint64) << np.uint64(cfg.bits_per_table))[None, :]


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def parse_phash(hex_hash: str) -> int:
    return int(hex_hash, 16)


@functools.lru_cache(maxsize=8)
def _minhash_permutations(num_perm: int, seed: int) -> tuple[str, tuple]:
    """The (scheme, permutations) ``MinHash(num_perm, seed)`` draws: the same for every caption,
    drawn once (drawing them took most of a signature's time)."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed)
    return m.scheme, m.permutations


def caption_signature(text: str | None, cfg: NearDupConfig) -> bytes:
    """MinHash (datasketch) of the caption's word 3-shingles (words for shorter captions)."""
    words = (text or "").lower().split()
    if not words:
        return b""
    from datasketch import MinHash

    shingles = {" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2))}
    scheme, perms = _minhash_permutations(cfg.num_perm, cfg.seed)
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, permutations=perms, scheme=scheme)
    m.update_batch([s.encode() for s in sorted(shingles)])
    return m.hashvalues.astype("<u4").tobytes()


def caption_similarity(a: bytes, b: bytes) -> float:
    if not a or not b:
        return 0.0
    return float(np.mean(np.frombuffer(a, "<u4") == np.frombuffer(b, "<u4")))


def matches(a: Item, b: Item, cfg: NearDupConfig) -> bool:
    d = hamming(a.phash, b.phash)
    if d <= cfg.threshold:
        return True
    return d <= cfg.caption_threshold and caption_similarity(a.caption, b.caption) >= cfg.caption_jaccard


def resolve_bucket(items: Iterable[Item], cfg: NearDupConfig) -> list[tuple[str, Item]]:
    """Items sharing one LSH key -> (uid of a current item, the earliest item it matches).

    Items with the same full hash are compared once, so a bucket of many identical hashes
    costs no more than one of distinct ones.
    """
    items = sorted(items)
    if len(items) < 2:
        return []
    out = []
    seen: list[Item] = []  # items in order, one per distinct (phash, caption)
    first: dict[tuple, tuple[Item, int]] = {}  # key -> (first item with it, len(seen) before it)
    match_cache: dict[tuple, Item | None] = {}
    for it in items:
        k = (it.phash, it.caption)
        if k not in first:
            first[k] = (it, len(seen))
            seen.append(it)
        if it.origin != "current":
            continue
        head, pos = first[k]
        if k not in match_cache:
            match_cache[k] = next((s for s in seen[:pos] if matches(s, it, cfg)), None)
        w = match_cache[k]
        if head is not it and (w is None or head < w):
            w = head
        if w is not None:
            out.append((it.uid, w))
    return out


def bucket_matches(items: Iterable[Item], cfg: NearDupConfig) -> list[tuple[str, tuple[Item, list[Item]]]]:
    """Items sharing one LSH key -> (uid, (current item, every item before it that it matches)).

    ``resolve_bucket`` keeps only the earliest match; a job that builds several years needs them
    all, since which earlier samples a year may match depends on what the years before it kept
    (``transforms.dedup.resolve_years``). Items with the same (hash, caption) are compared once.
    """
    items = sorted(items)
    if len(items) < 2:
        return []
    groups: dict[tuple, list[Item]] = {}
    for it in items:
        groups.setdefault((it.phash, it.caption), []).append(it)
    heads = {k: g[0] for k, g in groups.items()}
    match_cache: dict[tuple, bool] = {}
    out = []
    for it in items:
        if it.origin != "current":
            continue
        k = (it.phash, it.caption)
        found = []
        for k2, g in groups.items():
            if not g[0] < it:
                continue
            if k2 != k:
                pair = (k2, k)
                if pair not in match_cache:
                    match_cache[pair] = matches(heads[k2], heads[k], cfg)
                if not match_cache[pair]:
                    continue
            found += [z for z in g if z < it]
        if found:
            out.append((it.uid, (it, found)))
    return out


def earliest(candidates: Iterable[Item]) -> Item:
    return min(candidates)


def resolve_chains(winner_of: dict[str, Item]) -> dict[str, Item]:
    """Follow loser -> winner links until the winner is not itself a loser (the cluster root)."""
    out = {}
    for uid, w in winner_of.items():
        seen = {uid}
        while w.origin == "current" and w.uid in winner_of and w.uid not in seen:
            seen.add(w.uid)
            w = winner_of[w.uid]
        out[uid] = w
    return out


def phash_words(hashes: list[int], bits: int = 256) -> np.ndarray:
    """Python-int hashes -> (n, bits/64) uint64 words, least significant word first."""
    n_words = (bits + 63) // 64
    mask = (1 << 64) - 1
    return np.array([[(h >> (64 * w)) & mask for w in range(n_words)] for h in hashes], dtype=np.uint64).reshape(-1, n_words)


def near_duplicates_local(items: Iterable[Item], cfg: NearDupConfig) -> dict[str, Item]:
    """The whole computation in one process, vectorised (the scaling benchmark, small inputs):
    current item uid -> the root item it is a near-duplicate of. Keys of all items are sorted
    once; only buckets holding two or more items reach ``resolve_bucket``."""
    items = list(items)
    if not items:
        return {}
    keys = band_keys_array(phash_words([it.phash for it in items], cfg.bits), cfg).ravel()
    owner = np.repeat(np.arange(len(items)), cfg.tables)
    order = np.argsort(keys, kind="stable")
    keys, owner = keys[order], owner[order]
    cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(keys)]
    best: dict[str, Item] = {}
    for b in np.flatnonzero(ends - starts >= 2):
        for uid, w in resolve_bucket([items[i] for i in owner[starts[b]:ends[b]]], cfg):
            if uid not in best or w < best[uid]:
                best[uid] = w
    return resolve_chains(best)


def reason_for(winner: Item) -> str:
    """Status reason of a sample whose earliest match is ``winner``."""
    if winner.origin not in ("current", "earlier"):
        return f"eval_overlap:{winner.origin}"
    return f"near_duplicate_of:{winner.uid}"
