import os

# Offline, quiet third-party libraries: set before anything imports them.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the locked text tower's caption cache (pipelines.models.locked_text) in memory only: nothing under ~/.cache
os.environ["TIC_TEXT_CACHE"] = "none"
# loopback only: no cloud client may probe a metadata address looking for credentials
os.environ["NO_GCE_CHECK"] = "true"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


import pytest  # noqa: E402


def kill_when(cmd: list[str], ready, what: str, timeout: float, poll: float = 0.1, **popen) -> None:
    """Start ``cmd`` in its own session, wait until ``ready()`` holds, then SIGKILL its whole process
    group. Fails if the command ends first (also when it ended as ``ready()`` came to hold: then
    nothing was killed) or ``ready()`` does not hold within ``timeout`` s (``what`` names the
    awaited state in that message)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **popen)
    t0 = time.time()
    try:
        while not ready():
            assert proc.poll() is None, f"the command ended before {what}: {cmd[2:4]}"
            assert time.time() - t0 < timeout, f"no {what} after {timeout:.0f} s"
            time.sleep(poll)
        assert proc.poll() is None, f"the command ended before it could be killed at {what}: {cmd[2:4]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tree_sha256(root: str) -> dict[str, str]:
    """Every file under ``root`` (path relative to it) -> sha256 of its bytes."""
    import hashlib

    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def write_tiny_benchmark(root: str, years=(2014, 2015, 2016, 2017, 2018), per_year: int = 48, eval_per_year: int = 16,
                         seed: int = 0) -> str:
    """Training shards and clip_benchmark eval sets of the embedded web's pictures, written by the
    project's own writers (no crawl, no download): the input of training and eval tests."""
    import numpy as np

    from benchmark_builder.classes import class_list
    from benchmark_builder.layout import Layout
    from benchmark_builder.synthetic_web.generate import caption
    from benchmark_builder.synthetic_web.images import draw, encode, image_params
    from pipelines.sinks import clip_benchmark
    from pipelines.transforms import reshard
    from pipelines.uid import make_uid

    layout = Layout(root)
    names, templates = class_list("synthetic-web")
    for year in years:
        r = np.random.default_rng(seed + year)
        rows = []
        for i in range(per_year + 2 * eval_per_year):
            p = image_params(seed, year * 10**5 + i, year)
            img = draw(p)
            img.thumbnail((64, 64))
            text, _ = caption(p, year, r, "normal")
            uid = make_uid(f"http://x/{year}/{i}.jpg", text)
            rows.append({"uid": uid, "jpg": encode(img), "text": text, "year": year, "month": 1 + i % 12,
                         "label": p.obj, "filters": ["basic"]})
        rows.sort(key=lambda r: r["uid"])
        train, ev = rows[:per_year], rows[per_year:]
        cfg = reshard.ReshardConfig(samples_per_shard=per_year // 2)  # two shards per year
        uids = [r["uid"] for r in train]
        sizes = []
        by_shard: dict = {}
        for r in train:
            r["shard"], r["key"] = reshard.locate(uids, r["uid"], cfg)
            by_shard.setdefault(r["shard"], []).append(r)
        out = layout.train_shards("basic", year)
        for shard, group in by_shard.items():
            sizes.append(reshard.write_shard_group(out, shard, group, "basic"))
        reshard.write_directory_files(out, sizes, {"variant": "basic", "year": year})
        ret = [{"key": r["uid"], "jpg": r["jpg"], "txt": r["text"], "json": {"uid": r["uid"], "year": year}} for r in ev[:eval_per_year]]
        cls = [{"key": r["uid"], "jpg": r["jpg"], "cls": r["label"], "json": {"uid": r["uid"], "year": year}} for r in ev[eval_per_year:]]
        clip_benchmark.write_eval_set(layout.eval_set("basic", "retrieval", year), "retrieval", ret)
        clip_benchmark.write_eval_set(layout.eval_set("basic", "classification", year), "classification", cls,
                                      list(names), list(templates))
    return root


@pytest.fixture(scope="session", autouse=True)
def _temp_files_under_basetemp(tmp_path_factory):
    """Every temporary file of the session, in this process and in the commands it starts
    (``tempfile`` honours ``TMPDIR``), lies under pytest's basetemp, which the retention policy
    removes: a SIGKILLed upload's spool file or a Beam temp dir cannot pile up in /tmp."""
    import tempfile

    d = str(tmp_path_factory.mktemp("tmp"))
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = d
    tempfile.tempdir = None
    yield d
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old
    tempfile.tempdir = None


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    return write_tiny_benchmark(str(tmp_path_factory.mktemp("tiny-benchmark")))


@pytest.fixture(scope="session")
def tiny_clip():
    """(a randomly initialised one-layer open_clip CLIP: 16-pixel images, 16-wide embeddings,
    12-token context; its tokenizer). For encoding and zero-shot tests that need a real model
    but no weights."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=16, patch_size=8, image_size=16, head_width=8),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=12, vocab_size=49408, width=16, heads=2, layers=1),
    ).eval()
    return model, lambda texts: open_clip.tokenize(texts, context_length=12)
