"""The models package (batched, normalised encoding; the ``{c}`` template format; the
zero-shot classifier over it; open_clip's warning said once) and the one shard reader
(``pipelines.sinks.webdataset.iter_samples``), each against a hand computation."""
from __future__ import annotations

import io
import logging
import tarfile

import pytest
import torch

from pipelines.models import NO_PRETRAINED, OncePerProcess
from pipelines.models.encode import encode_images, encode_texts, fill, preprocess_encoded, zero_shot_classifier
from pipelines.sinks import webdataset as wds


def test_encode_images_batches_and_normalises_each_image_as_alone(tiny_clip):
    model, _ = tiny_clip
    images = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(7)]
    got = encode_images(model, images, batch_size=3)
    with torch.no_grad():
        for i, img in enumerate(images):
            e = model.encode_image(img[None])[0]
            assert torch.allclose(got[i], e / e.norm(), atol=1e-5)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    # a [N, C, H, W] tensor in half precision (the evaluator's pixel cache) gives the same rows
    half = torch.stack(images).half()
    assert torch.allclose(encode_images(model, half, batch_size=4), encode_images(model, half.float(), batch_size=7), atol=1e-6)
    assert encode_images(model, []).shape == (0, 0)


def test_preprocess_encoded_equals_preprocessing_image_by_image():
    """The batched preprocessing (PIL steps on threads, ToTensor and Normalize on the stacked
    batch) against open_clip's own transform applied image by image: the same float32 values,
    bit for bit, for JPEGs decoded at reduced scale, every PIL mode and format the pool may
    hold, sizes that differ, and a preprocess that is not a ToTensor/Normalize Compose."""
    import numpy as np
    import open_clip
    from PIL import Image

    r = np.random.default_rng(0)
    datas = []
    for i, (mode, fmt, w, h) in enumerate([("RGB", "JPEG", 300, 200), ("RGB", "JPEG", 64, 96), ("L", "PNG", 40, 40),
                                           ("RGBA", "PNG", 50, 30), ("P", "GIF", 33, 77), ("RGB", "WEBP", 128, 128),
                                           ("CMYK", "JPEG", 70, 70), ("RGB", "JPEG", 1000, 20)]):
        img = Image.fromarray(r.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
        buf = io.BytesIO()
        img.save(buf, fmt)
        datas.append(buf.getvalue())
    for size in (32, 64):
        preprocess = open_clip.image_transform(size, is_train=False)

        def one(data):
            img = Image.open(io.BytesIO(data))
            img.draft("RGB", (size, size))
            return preprocess(img.convert("RGB"))

        want = torch.stack([one(d) for d in datas])
        got = preprocess_encoded(preprocess, datas, size)
        assert got.dtype == torch.float32 and got.shape == (len(datas), 3, size, size)
        assert torch.equal(got, want)
        assert torch.equal(preprocess_encoded(preprocess, datas[:1], size), want[:1])
    plain = lambda img: torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)  # noqa: E731

    def drafted(data):
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (8, 8))
        return img.convert("RGB")

    assert torch.equal(preprocess_encoded(plain, datas[:3], 8), torch.stack([plain(drafted(d)) for d in datas[:3]]))


def test_encode_texts_matches_one_text_at_a_time(tiny_clip):
    model, tokenizer = tiny_clip
    texts = ["a red circle", "two blue squares", "", "a photo of a cat."]
    got = encode_texts(model, tokenizer, texts, batch_size=3)
    with torch.no_grad():
        for i, t in enumerate(texts):
            e = model.encode_text(tokenizer([t]))[0]
            assert torch.allclose(got[i], e / e.norm(), atol=1e-5)


def test_one_template_format(tiny_clip):
    assert fill("a photo of a {c}.", "red car") == "a photo of a red car."
    with pytest.raises(ValueError, match=r"\{c\}"):
        fill("a photo of a {}.", "cat")  # the other format is refused with what to write instead
    model, tokenizer = tiny_clip
    with pytest.raises(ValueError):
        zero_shot_classifier(model, tokenizer, ["cat"], ["a photo of a {}."])


def test_zero_shot_classifier_is_the_mean_of_normalised_template_embeddings(tiny_clip):
    model, tokenizer = tiny_clip
    W = zero_shot_classifier(model, tokenizer, ["cat", "dog"], ["a {c}.", "art of a {c}"], batch_size=3)
    with torch.no_grad():
        for j, c in enumerate(["cat", "dog"]):
            e = model.encode_text(tokenizer([f"a {c}.", f"art of a {c}"]))
            m = (e / e.norm(dim=1, keepdim=True)).mean(0)
            assert torch.allclose(W[:, j], m / m.norm(), atol=1e-5)


def test_no_pretrained_warning_said_once_with_its_meaning():
    once = OncePerProcess()

    def record(msg):
        return logging.LogRecord("root", logging.WARNING, __file__, 1, msg, (), None)

    first = record(f"{NO_PRETRAINED} for model 'tic-tiny_clip-32'. Model initialized randomly.")
    assert once.filter(first) and "checkpoint" in first.getMessage() and "once" in first.getMessage()
    assert not once.filter(record(f"{NO_PRETRAINED} for model 'tic-tiny_clip-32'. Model initialized randomly."))
    other = record("something else")
    assert once.filter(other) and other.getMessage() == "something else"
    assert any(isinstance(f, OncePerProcess) for f in logging.getLogger().filters)  # installed on import


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
    return buf.getvalue()


def test_iter_samples_groups_consecutive_members_by_key(tmp_path):
    members = [("000.jpg", b"J0"), ("000.txt", b"T0"), ("000.json", b"{}"), ("001.jpg", b"J1"), ("001.json", b"{1}"),
               ("002.txt", b"T2")]
    path = tmp_path / "s.tar"
    path.write_bytes(_tar(members))
    assert list(wds.iter_samples(str(path))) == [
        {"key": "000", "jpg": b"J0", "txt": b"T0", "json": b"{}"},
        {"key": "001", "jpg": b"J1", "json": b"{1}"},
        {"key": "002", "txt": b"T2"},
    ]
    # only some extensions; a sample with none of them is not yielded
    assert list(wds.iter_samples(str(path), keys=("json",))) == [{"key": "000", "json": b"{}"}, {"key": "001", "json": b"{1}"}]


def test_iter_samples_reads_what_tar_bytes_wrote(tmp_path):
    samples = [{"key": "a1", "jpg": b"\xff\xd8x", "txt": "caption", "json": {"uid": "u"}, "cls": 3},
               {"key": "b2", "jpg": b"\xff\xd8y", "txt": "other", "json": {"uid": "v"}, "cls": 0}]
    path = tmp_path / "w.tar"
    path.write_bytes(wds.tar_bytes(samples))
    got = list(wds.iter_samples(str(path)))
    assert got == [{"key": "a1", "cls": b"3", "jpg": b"\xff\xd8x", "json": b'{"uid": "u"}', "txt": b"caption"},
                   {"key": "b2", "cls": b"0", "jpg": b"\xff\xd8y", "json": b'{"uid": "v"}', "txt": b"other"}]
    assert wds.tar_bytes(got) == path.read_bytes()  # what it yields writes back to the same bytes
