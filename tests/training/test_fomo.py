"""FoMo-in-Flux recipes: concept streams and orderings, data mixtures, memory-adjusted FLOPs
and a whole recipe (train + evaluate) on a tiny benchmark written by the project's own writers."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from training.data import Source
from training.fomo import maf as maf_lib
from training.fomo.mixture import mixture_sources, parse_shares
from training.fomo.streams import (ALL_ORDERS, ConceptIndex, Item, Stream, build_index, chunk, make_stream,
                                   order_concepts, semantic_chain, task_sources)

TEMPLATES = ("a photo of a {c}.",)


def _index():
    """Four concepts with hand-set sample counts per year (pool = 2014, 2015)."""
    counts = {"a": {2014: 10, 2015: 10}, "b": {2014: 1, 2016: 40}, "c": {2015: 5, 2017: 5}, "d": {2018: 7}}
    samples = {c: [(f"{c}{y}{i}", y, f"shard{y}.tar") for y, n in yc.items() for i in range(n)] for c, yc in counts.items()}
    return ConceptIndex("toy", ("a", "b", "c", "d"), TEMPLATES, samples, (2014, 2015))


def test_chunk_sizes_and_errors():
    assert chunk(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError):
        chunk([1, 2], 3)


def test_frequency_and_time_orders_and_their_reverses():
    idx = _index()
    items, keys = order_concepts(idx, "frequency")
    assert keys == {"a": 20.0, "b": 1.0, "c": 5.0, "d": 0.0}  # captions in the pool years 2014-2015
    assert [i.concept for i in items] == ["d", "b", "c", "a"]  # rare to common
    assert [i.concept for i in order_concepts(idx, "reverse-frequency")[0]] == ["a", "c", "b", "d"]
    # first seen (>= 5% of the concept's peak year count): a 2014, b 2016 (1 < 5% of 40), c 2015, d 2018
    items, keys = order_concepts(idx, "time")
    assert keys == {"a": 2014.0, "b": 2016.0, "c": 2015.0, "d": 2018.0}
    assert [i.concept for i in items] == ["a", "c", "b", "d"]
    assert [i.concept for i in order_concepts(idx, "reverse-time")[0]] == ["d", "b", "c", "a"]


def test_time_interleaved_items_are_concept_year_slices_in_year_order():
    items, _ = order_concepts(_index(), "time-interleaved")
    assert [i.key for i in items] == ["a@2014", "b@2014", "a@2015", "c@2015", "b@2016", "c@2017", "d@2018"]
    assert len(_index().item_samples(Item("b", 2016))) == 40


def test_random_order_is_seeded():
    idx = _index()
    a, _ = order_concepts(idx, "random", seed=1)
    assert a == order_concepts(idx, "random", seed=1)[0]
    assert {tuple(order_concepts(idx, "random", seed=s)[0]) for s in range(6)} != {tuple(a)}
    assert order_concepts(idx, "reverse-random", seed=1)[0] == a[::-1]


def test_semantic_chain_follows_nearest_neighbours():
    emb = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=float)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    order, sims = semantic_chain(emb, 0)
    assert order == [0, 1, 2, 3] and sims[1] == pytest.approx(0.8)


def test_unknown_order():
    with pytest.raises(ValueError, match="unknown ordering"):
        order_concepts(_index(), "alphabetical")
    assert len(ALL_ORDERS) == 12


def test_make_stream_holds_out_and_saves(tmp_path):
    s = make_stream(_index(), "time", 2, seed=0, holdout=1)
    assert len(s.holdout) == 1 and s.holdout[0] not in s.concepts
    assert sorted(s.concepts + s.holdout) == ["a", "b", "c", "d"] and len(s.tasks) == 2
    s.save(str(tmp_path / "stream.json"))
    again = Stream.load(str(tmp_path / "stream.json"))
    assert again == s and json.load(open(tmp_path / "stream.json"))["order"] == "time"
    srcs = task_sources(s, _index())
    assert [src.size for src in srcs] == s.sizes and all(src.uids and len(src.uids) == src.size for src in srcs)


def _src(name, n):
    return Source(name, (f"{name}.tar",), n)


def test_mixture_shares_and_uniform_replay():
    tasks = [_src("task-0", 100), _src("task-1", 300), _src("task-2", 50)]
    pool = _src("pool", 1000)
    first = mixture_sources(0, tasks, pool)
    w = {s.name: s.weight for s in first}
    # no buffer yet: its 0.33 goes to pool and current in proportion: 0.33/0.67 and 0.34/0.67
    assert w == pytest.approx({"task-0": 0.34 / 0.67, "pool": 0.33 / 0.67})
    third = {s.name: s.weight for s in mixture_sources(2, tasks, pool)}
    # buffer = all past update data, uniform per sample: 100 and 300 of 400
    assert third == pytest.approx({"task-2": 0.34, "pool": 0.33, "task-0": 0.33 * 0.25, "task-1": 0.33 * 0.75})
    capped = mixture_sources(2, tasks, pool, buffer_size=200)
    assert [round(s.expected_size) for s in capped if s.name.startswith("task-") and s.name != "task-2"] == [50, 150]
    assert sum(s.weight for s in capped) == pytest.approx(1.0)
    assert {s.name for s in mixture_sources(1, tasks, None, (0.0, 0.5, 0.5))} == {"task-1", "task-0"}
    assert parse_shares("0.2,0.5,0.3") == (0.2, 0.5, 0.3)
    with pytest.raises(ValueError):
        parse_shares("0.5,0,0.5")


def test_maf_and_steps_per_task_by_hand():
    full = maf_lib.StepCost("full-ft", 100.0, 1000, "cpu_peak_rss", 10, 8)
    lora = maf_lib.StepCost("lora", 90.0, 400, "cpu_peak_rss", 1, 8)
    assert maf_lib.maf(full, full) == 100.0 and maf_lib.maf(lora, full) == pytest.approx(36.0)
    budget = 5 * 20 * 100.0  # 20 full fine-tuning iterations per task, 5 tasks
    assert maf_lib.steps_per_task(budget, 5, full, full) == 20
    assert maf_lib.steps_per_task(budget, 5, lora, full) == 55  # floor(2000 / 36)
    rows, table = maf_lib.budget_table({"full-ft": full, "lora": lora}, full, budget, 5)
    assert rows["lora"]["memory_ratio"] == 0.4 and "steps/task" in table


def test_measured_cost_of_lora_is_below_full_fine_tuning():
    costs = maf_lib.measure_costs({"full-ft": {}, "lora": {}, "dora": {}, "lock-image": {}}, "tic-tiny-32", 16, repeats=1)
    full, lora, dora, lock = costs["full-ft"], costs["lora"], costs["dora"], costs["lock-image"]
    assert full.flops > 0 and full.memory > 0
    # adapters are low-rank products beside the frozen weights: no dW matmul for any adapted weight
    assert lora.flops < full.flops and dora.flops < full.flops
    rows, table = maf_lib.budget_table(costs, full, 100 * full.flops, 5)
    assert rows["lora"]["maf"] < rows["full-ft"]["maf"] and rows["lora"]["steps_per_task"] > rows["full-ft"]["steps_per_task"]
    assert lora.trainable < 0.01 * full.trainable
    assert lora.memory < full.memory  # no AdamW moments or gradient for the 3M-element token embedding
    assert lock.flops < full.flops  # no backward through the locked image tower


@pytest.fixture(scope="module")
def synthetic_index(tiny_benchmark):
    return build_index(tiny_benchmark, pool_years=(2014, 2015))


def test_index_of_the_tiny_benchmark_names_concepts_from_captions(synthetic_index):
    idx = synthetic_index
    assert sum(len(v) for v in idx.samples.values()) + idx.unmatched + idx.ambiguous == 5 * 48
    assert sum(len(v) for v in idx.samples.values()) > 0.9 * 5 * 48


@pytest.mark.parametrize("order", ["semantic", "performance", "reverse-performance"])
def test_model_based_orders(synthetic_index, order):
    from pipelines.models import load_model

    torch.manual_seed(0)
    loaded = load_model("tic-tiny-32")
    s = make_stream(synthetic_index, order, 3, holdout=2, loaded=loaded)
    assert len(s.tasks) == 3 and set(s.keys) == set(s.concepts)
    if order == "reverse-performance":
        accs = [s.keys[c] for c in s.concepts]
        assert accs == sorted(accs)  # hard to easy


def test_recipe_trains_and_evaluates(tiny_benchmark, tmp_path):
    from eval.fomo import evaluate_run, format_table, scatter
    from training.fomo.runner import FomoConfig, run

    results = []
    for method in ("lora", "ema-merge"):
        cfg = FomoConfig(method=method, order="time", tasks=2, data_dir=tiny_benchmark, run_dir=str(tmp_path / method),
                         model="tic-tiny-32", pool_years=(2014, 2015), holdout=3, steps_per_task=2, batch_size=8,
                         device="cpu")
        recipe = run(cfg)
        assert recipe["steps_per_task"] == 2
        assert sorted(os.listdir(tmp_path / method / "checkpoints")) == ["step_0.pt", "step_1.pt"]
        stream = json.load(open(tmp_path / method / "stream.json"))
        assert stream["order"] == "time" and len(stream["tasks"]) == 2 and len(stream["holdout"]) == 3
        results.append(evaluate_run(str(tmp_path / method), tiny_benchmark, cache_dir=str(tmp_path / "cache")))
    r = results[0]
    assert 0 <= r["accumulation"] <= 1 and 0 <= r["retention"] <= 1 and len(r["trajectory"]) == 2
    assert r["geometric_mean"] == pytest.approx((r["accumulation"] * r["retention"]) ** 0.5)
    assert "lora" in format_table(results)
    assert os.path.getsize(scatter(results, str(tmp_path / "tradeoff.png"))) > 1000


def test_recipe_lr_schedules_by_hand():
    """The trainer's entry point with FoMo's meta-schedules (values computed by hand)."""
    from training.schedules import lr_at

    kw = dict(steps_per_task=10, base_lr=1.0, n_tasks=4, warmup_steps=2)
    # rsqrt-recovery: task 3 peaks at 1/sqrt(4) = 0.5; rsqrt with timescale = warmup = 2, cooldown 4
    assert lr_at(3, 0, schedule="rsqrt", meta="rsqrt-recovery", cooldown_steps=4, **kw) == pytest.approx(0.25)
    assert lr_at(3, 5, schedule="rsqrt", meta="rsqrt-recovery", cooldown_steps=4, **kw) == pytest.approx(0.5 * (2 / 5) ** 0.5)
    assert lr_at(3, 8, schedule="rsqrt", meta="rsqrt-recovery", cooldown_steps=4, **kw) == pytest.approx(0.5 * 0.5 * 2 / 4)
    # cosine-recovery: task 1 peaks at 0.5 * (1 + cos(pi / 4)); step 6 is halfway through the decay
    peak = 0.5 * (1 + 2 ** -0.5)
    assert lr_at(1, 1, schedule="cosine", meta="cosine-recovery", **kw) == pytest.approx(peak)  # warmup 2/2
    assert lr_at(1, 6, schedule="cosine", meta="cosine-recovery", **kw) == pytest.approx(peak / 2)


def test_train_config_cooldown_reaches_the_schedule():
    from training.train import TrainConfig

    assert TrainConfig().cooldown == 0 and TrainConfig(**{**TrainConfig().to_json(), "cooldown": 3}).cooldown == 3


def test_default_base_is_the_filter_model_the_layout_names(tmp_path):
    """FoMo's default base is the builder's cached filter model, found through the layout of the
    configured benchmark (not a glob with a hard-coded benchmark name)."""
    from training.fomo.runner import FomoConfig, resolve_base

    ckpt = tmp_path / "other-bench" / "filter-model" / "0123abcd" / "checkpoints" / "step_0.pt"
    with pytest.raises(FileNotFoundError, match="other-bench/filter-model"):
        resolve_base(FomoConfig(data_dir=str(tmp_path), benchmark="other-bench"))
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert resolve_base(FomoConfig(data_dir=str(tmp_path), benchmark="other-bench")) == f"tic-tiny-32:{ckpt}"
    with pytest.raises(FileNotFoundError):  # another benchmark's model is not this one's
        resolve_base(FomoConfig(data_dir=str(tmp_path)))
    assert resolve_base(FomoConfig(data_dir=str(tmp_path), model="ViT-B-32:openai")) == "ViT-B-32:openai"


def test_pool_years_are_spelled_years_first_last():
    from training.fomo.__main__ import parse

    assert parse([])[0].pool_years == (2014, 2015, 2016)  # the base model's pretraining years
    assert parse(["--years", "2015-2017"])[0].pool_years == (2015, 2016, 2017)
    assert parse(["--years", "2018"])[0].pool_years == (2018,)
    for bad in (["--years", "2015,2016"], ["--pool-years", "2014,2015"]):
        with pytest.raises(SystemExit) as e:
            parse(bad)
        assert e.value.code == 2
