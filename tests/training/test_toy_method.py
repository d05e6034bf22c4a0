"""Adding a continual method the way docs/architecture.md says: one new file under a methods folder
and one ``register`` line, then ``python -m training tic --method <name>`` runs it.

The toy method freezes every weight but CLIP's temperature and its loss is (logit_scale - 1)^2, so
the oracle is by hand: the first logged loss is (log(1/0.07) - 1)^2 (open_clip's initial
temperature), every other weight ends exactly where the seeded initialisation put it, and the
temperature moves down by lr per AdamW update (Adam's first update of a fresh optimizer is lr x the
gradient's sign; the gradient keeps its sign and nearly its size over four small steps).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch

TOY = '''"""toy-scale-only: trains only CLIP's temperature, towards logit_scale = 1."""
from training.methods.base import Method


class ToyScaleOnly(Method):
    name = "toy-scale-only"

    def begin_step(self, ctx, model):
        for name, p in model.named_parameters():
            p.requires_grad_(name == "logit_scale")

    def loss(self, ctx, model, images, tokens, ids):
        loss = (getattr(model, "module", model).logit_scale - self.option("target", 1.0)) ** 2
        return loss, {"toy": float(loss.detach())}
'''


@pytest.fixture
def toy_method(tmp_path):
    from training.methods import register, unregister

    path = tmp_path / "toy_scale_only.py"  # the one new file
    path.write_text(TOY)
    spec = importlib.util.spec_from_file_location("toy_scale_only", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    register(module.ToyScaleOnly, "tic")  # the one registry line
    yield module.ToyScaleOnly
    unregister("toy-scale-only")


def test_a_registered_toy_method_trains_through_the_cli_and_its_hooks_decide(toy_method, tiny_benchmark, tmp_path):
    from pipelines.models import load_model
    from training.__main__ import main
    from training.methods import methods

    assert "toy-scale-only" in methods("tic") and "toy-scale-only" not in methods("cil")
    run = tmp_path / "run"
    lr = 0.01
    rc = main(["tic", "--method", "toy-scale-only", "--data-dir", tiny_benchmark, "--run-dir", str(run), "--max-steps", "2",
               "--samples-per-step", "32", "--batch-size", "16", "--workers", "0", "--lr", str(lr), "--warmup", "0",
               "--schedule", "constant", "--device", "cpu", "--seed", "0"])
    assert rc == 0
    assert sorted(os.listdir(run / "checkpoints")) == ["step_0.pt", "step_1.pt"]
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [(r["step"], r["iteration"]) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    x0 = math.log(1 / 0.07)
    assert rows[0]["loss"] == pytest.approx((x0 - 1) ** 2, rel=1e-5) and rows[0]["toy"] == pytest.approx(rows[0]["loss"])

    torch.manual_seed(0)
    init = load_model("tic-tiny-32").model.state_dict()
    final = torch.load(run / "checkpoints" / "step_1.pt", weights_only=True)["state_dict"]
    moved = [k for k in init if not torch.equal(init[k], final[k])]
    assert moved == ["logit_scale"]
    assert float(init["logit_scale"]) == pytest.approx(x0, rel=1e-6)
    assert float(final["logit_scale"]) == pytest.approx(x0 - 4 * lr, abs=1e-3)  # four AdamW updates of about lr each


def test_registering_a_taken_name_or_an_unknown_family_is_refused(toy_method):
    from training.methods import get_method, register

    with pytest.raises(ValueError, match="already registered for tic"):
        register(toy_method, "tic")
    with pytest.raises(ValueError, match="families must be some of"):
        register(toy_method, "nope")
    assert type(get_method("toy-scale-only")) is toy_method
    with pytest.raises(ValueError, match="unknown protocol 'toy-scale-only'"):
        get_method("toy-scale-only", family="cil")
