"""Caption generation: Hugging Face image-to-text models loaded from local folders, batched
generation equal to one-by-one generation, clear errors for absent models, the template captioner."""
from __future__ import annotations

import hashlib
import io
import os
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from tiny_captioners import make_captioner  # noqa: E402

from pipelines import io as pio  # noqa: E402
from pipelines.models import ModelLoadError, load_captioner  # noqa: E402
from pipelines.transforms.caption import TemplateCaptioner, caption_images  # noqa: E402


def _images(n=6):
    out = []
    for i in range(n):
        b = io.BytesIO()
        Image.fromarray((np.random.RandomState(i).rand(40 + i, 50, 3) * 255).astype("uint8")).save(b, "JPEG")
        out.append(b.getvalue())
    return out


@pytest.mark.parametrize("kind", ["blip", "git", "vision-encoder-decoder"])
def test_hf_captioner_from_local_folder_batches_like_single_images(kind, tmp_path):
    folder = make_captioner(kind, str(tmp_path / kind))
    loaded = load_captioner(folder)
    assert loaded.kind == {"blip": "BlipForConditionalGeneration", "git": "GitForCausalLM",
                           "vision-encoder-decoder": "VisionEncoderDecoderModel"}[kind]
    images = _images()
    batched = caption_images(loaded, images, max_new_tokens=8)
    single = [caption_images(loaded, [b], max_new_tokens=8)[0] for b in images]
    assert batched == single  # each caption belongs to its own image
    assert all(batched) and len(set(batched)) >= 3  # words, and they depend on the image
    assert load_captioner("hf:" + folder).kind == loaded.kind


def test_absent_captioners_fail_with_the_file_and_option(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_captioner(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_captioner(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="Nothing can be downloaded"):
        load_captioner("Salesforce/blip-image-captioning-base")


def test_template_captioner_fills_attributes_deterministically(tmp_path):
    import pyarrow as pa

    path = str(tmp_path / "attrs.parquet")
    pio.write_parquet(path, pa.table({"url": ["u1", "u2"], "object": ["circle", "square"], "colour": ["red", None]}))
    c = TemplateCaptioner.from_table(path, ["a {colour} {object}.", "an image of a {object}."])
    uids = [hashlib.md5(str(i).encode()).hexdigest() for i in range(16)]
    caps = {c.caption({"uid": u, "url": "u1"}) for u in uids}
    assert caps == {"a red circle.", "an image of a circle."}  # both templates, chosen by uid
    assert c.caption({"uid": uids[3], "url": "u1"}) == c.caption({"uid": uids[3], "url": "u1"})
    assert {c.caption({"uid": u, "url": "u2"}) for u in uids} == {"an image of a square."}  # colour missing
    assert c.caption({"uid": uids[0], "url": "absent"}) is None
    with pytest.raises(ValueError, match="none of the template fields"):
        TemplateCaptioner.from_table(path, ["a {shape}"])


def test_trainer_text_choice_alt_generated_both():
    import random

    from training.data import choose_text

    meta = {"text": "alt words", "caption_generated": "generated words"}
    rng = random.Random(0)
    assert choose_text(meta, "alt", rng) == "alt words"
    assert choose_text(meta, "generated", rng) == "generated words"
    assert {choose_text(meta, "both", rng) for _ in range(50)} == {"alt words", "generated words"}
    assert choose_text({"text": "alt words", "caption_generated": None}, "generated", rng) == "alt words"
