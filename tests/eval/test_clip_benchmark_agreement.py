"""The evaluator agrees with clip_benchmark's own implementation (``clip_benchmark.metrics.
zeroshot_classification`` / ``zeroshot_retrieval``) on the same trained checkpoint and eval
sets: zero-shot top-1 and mean recall@1 within 1 point per set. Draft-mode decoding is measured
against exact decoding (the default) on the same sets."""
from __future__ import annotations

import os
import time

import pytest
import torch

from tests.conftest import write_tiny_benchmark


class _Set(torch.utils.data.Dataset):
    """An eval set as clip_benchmark reads one: decoded PIL image through the model's eval transform."""

    def __init__(self, es, preprocess):
        from eval.datasets import decode, samples

        self.items = list(samples(es))
        self.classes = list(es.classnames)  # clip_benchmark reads dataset.classes
        self.decode, self.preprocess = decode, preprocess

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        img, target = self.items[i]
        return self.preprocess(self.decode(img)), target


@pytest.mark.slow
def test_zero_shot_top1_and_mean_recall_agree_with_clip_benchmark(tmp_path):
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    from eval.datasets import benchmark_sets
    from eval.dynamic import evaluate_run
    from pipelines.models import load_model
    from training.train import TrainConfig, train

    data = write_tiny_benchmark(str(tmp_path / "data"), per_year=96, eval_per_year=120)
    run = tmp_path / "run"
    train(TrainConfig(protocol="sequential", data_dir=data, run_dir=str(run), samples_per_step=1024, batch_size=64, workers=0,
                      buffer=64, warmup=2, lr=2e-3, checkpoint_every=0, max_steps=1))
    t = time.time()
    ours = evaluate_run(str(run), data)
    t_exact = time.time() - t
    t = time.time()
    draft = evaluate_run(str(run), data, draft=True)
    t_draft = time.time() - t

    loaded = load_model(f"tic-tiny-32:{run / 'checkpoints' / 'step_0.pt'}")
    model = loaded.model.eval()
    evaluated = {r["year"] for r in ours.rows if r["kind"] != "static"}  # the run's one time step: 2014-2016
    assert evaluated == {2014, 2015, 2016}
    sets = {k: {y: es for y, es in v.items() if y in evaluated} for k, v in benchmark_sets(data).items()}

    def value(res, kind, year, metric):
        return next(r["value"] for r in res.rows if r["model_step"] == 0 and r["kind"] == kind and r["year"] == year
                    and r["metric"] == metric)

    report = []
    for year, es in sorted(sets["classification"].items()):
        dl = torch.utils.data.DataLoader(_Set(es, loaded.preprocess_val), batch_size=64)
        # clip_benchmark's classifier and logits; its evaluate()'s accuracy() calls float() on a 1-element array,
        # which numpy 2 refuses, so top-1 is the argmax of its logits here
        clf = zeroshot_classification.zero_shot_classifier(model, loaded.tokenizer, list(es.classnames), list(es.templates),
                                                           "cpu", amp=False)
        logits, target = zeroshot_classification.run_classification(model, clf, dl, "cpu", amp=False)
        ref = float((logits.argmax(dim=1) == target).float().mean())
        got, got_draft = value(ours, "classification", year, "acc1"), value(draft, "classification", year, "acc1")
        report.append(("top-1", year, got, ref, got_draft))
    for year, es in sorted(sets["retrieval"].items()):
        dl = torch.utils.data.DataLoader(_Set(es, loaded.preprocess_val), batch_size=64, collate_fn=image_captions_collate_fn)
        m = zeroshot_retrieval.evaluate(model, dl, loaded.tokenizer, "cpu", amp=False, recall_k_list=[1])
        ref = 0.5 * (m["image_retrieval_recall@1"] + m["text_retrieval_recall@1"])
        got, got_draft = value(ours, "retrieval", year, "mean_recall@1"), value(draft, "retrieval", year, "mean_recall@1")
        report.append(("mean R@1", year, got, ref, got_draft))
    for metric, year, got, ref, got_draft in report:
        print(f"{metric:>9} {year}: ours {got:.4f}  clip_benchmark {ref:.4f}  ours --draft-decode {got_draft:.4f}")
    print(f"evaluation of 1 checkpoint: exact decoding {t_exact:.1f} s, draft {t_draft:.1f} s (no caches shared)")
    for metric, year, got, ref, _ in report:
        assert abs(got - ref) <= 0.01, (metric, year, got, ref)
    init = load_model("tic-tiny-32").model.state_dict()
    assert any(not torch.equal(v, init[k]) for k, v in model.state_dict().items())  # a trained checkpoint, not the init


def test_datacomp_static_tasks_run_from_static_root_when_present(tiny_benchmark, tmp_path, capsys):
    import yaml

    from eval.datasets import benchmark_sets
    from eval.dynamic import STATIC_TASKS, static_tasks

    with open(STATIC_TASKS) as f:
        named = [t for t in yaml.safe_load(f)["tasks"] if t.get("clip_benchmark")]
    assert len(named) == 38 and len({t["clip_benchmark"] for t in named}) == 38  # DataComp's 38 scored tasks
    assert {"imagenet1k", "vtab/caltech101", "retrieval/mscoco_2014_5k_test_image_text_retrieval", "fairness/geode"} <= {
        t["clip_benchmark"] for t in named}
    yearly = benchmark_sets(tiny_benchmark)
    assert [t["name"] for t in static_tasks(None, tiny_benchmark, "basic", "tic-datacomp", yearly)] == ["all-concepts"]
    assert capsys.readouterr().out.strip() == ("static tasks: the 38 clip_benchmark tasks of the static suite are skipped "
                                               "(pass --static-root DIR holding clip_benchmark's wds_<task> sets to run them)")
    root = tmp_path / "static"
    root.mkdir()
    os.symlink(yearly["classification"][2014].path, root / "wds_cifar10")  # clip_benchmark's wds_<name> layout
    os.symlink(yearly["retrieval"][2015].path, root / "wds_retrieval-flickr_1k_test_image_text_retrieval")
    tasks = static_tasks(None, tiny_benchmark, "basic", "tic-datacomp", yearly, str(root))
    got = {t["name"]: (t["sets"][0].kind, t["group"]) for t in tasks}
    assert got == {"all-concepts": ("classification", "classification"), "cifar-10": ("classification", "other"),
                   "flickr": ("retrieval", "retrieval")}
    out = capsys.readouterr().out
    assert "35 of 38 clip_benchmark tasks not under" in out and "misc/winogavil need evaluators of their own" in out
