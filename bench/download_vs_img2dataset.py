"""Download + resize + write throughput: this pipeline's download stage against img2dataset.

Both read the same URL list from the same local server (a separate process serving JPEGs of
photo-like sizes from memory), resize to 256 px ``keep_ratio_largest``, re-encode JPEG and
write WebDataset shards with a per-sample status. img2dataset runs with 2 processes x 32
threads (the machine's cores); this pipeline runs as the build runs it, Beam's FnApiRunner
with one download DoFn whose thread pool decodes with Pillow outside the GIL.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_images(d: str, n: int, seed: int = 0) -> None:
    """Photo-like JPEGs, 480-1280 px on the long side (what web crawls mostly return)."""
    rng = np.random.default_rng(seed)
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        w = int(rng.integers(480, 1280))
        h = int(w * rng.uniform(0.6, 1.0))
        small = (rng.random((h // 16 + 1, w // 16 + 1, 3)) * 255).astype(np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        im.save(os.path.join(d, f"{i:06d}.jpg"), "JPEG", quality=88)


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("benchmark image server did not start")


def run_img2dataset(url_file: str, out: str) -> float:
    code = f"""
import time, img2dataset
t = time.time()
img2dataset.download(url_list={url_file!r}, output_folder={out!r}, output_format="webdataset", input_format="txt",
    image_size=256, resize_mode="keep_ratio_largest", processes_count=2, thread_count=32, number_sample_per_shard=500,
    timeout=10, retries=0, disallowed_header_directives=[], enable_wandb=False, compute_hash=None)
print("SECONDS", time.time() - t)
"""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=out)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return float([l for l in res.stdout.splitlines() if l.startswith("SECONDS")][-1].split()[1])


def run_ours(urls: list[str], out: str) -> float:
    code = f"""
import json, sys, time
import apache_beam as beam
from pipelines.options import RunnerConfig, pipeline_options
from pipelines.transforms.download import DownloadConfig, DownloadShards, FetchConfig
urls = json.load(open({os.path.join(out, 'urls.json')!r}))
rows = [{{"uid": f"{{i:032x}}", "url": u, "text": "t", "year": 2019}} for i, u in enumerate(urls)]
cfg = DownloadConfig(fetch=FetchConfig(timeout=10, retries=0, allow_loopback=True, disallowed_header_directives=()),
                     thread_count=32, shard_size=500)
t = time.time()
with pipeline_options(RunnerConfig()) as opts:
    with beam.Pipeline(options=opts) as p:
        res = p | beam.Create(rows) | DownloadShards({os.path.join(out, 'pool')!r}, cfg)
print("SECONDS", time.time() - t)
"""
    with open(os.path.join(out, "urls.json"), "w") as f:
        json.dump(urls, f)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return float([l for l in res.stdout.splitlines() if l.startswith("SECONDS")][-1].split()[1])


def _count_tar_samples(d: str) -> int:
    import tarfile

    n = 0
    for root, _, files in os.walk(d):
        for f in files:
            if f.endswith(".tar"):
                with tarfile.open(os.path.join(root, f)) as t:
                    n += sum(1 for m in t if m.name.endswith(".jpg"))
    return n


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.download_vs_img2dataset")
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench-dl-")
    try:
        img_dir = os.path.join(tmp, "images")
        t = time.time()
        make_images(img_dir, args.images)
        print(f"generated {args.images} images in {time.time() - t:.1f} s")
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "bench.serve_images", img_dir, str(port)], cwd=REPO)
        try:
            _wait_port(port)
            urls = [f"http://127.0.0.1:{port}/{f}" for f in sorted(os.listdir(img_dir))]
            url_file = os.path.join(tmp, "urls.txt")
            with open(url_file, "w") as f:
                f.write("\n".join(urls) + "\n")
            rows = []
            for r in range(args.repeats):
                for name, fn in (("img2dataset", lambda o: run_img2dataset(url_file, o)), ("this pipeline", lambda o: run_ours(urls, o))):
                    out = os.path.join(tmp, f"{name.replace(' ', '_')}-{r}")
                    os.makedirs(out)
                    secs = fn(out)
                    n = _count_tar_samples(out)
                    rows.append({"engine": name, "run": r, "seconds": secs, "images": n, "images_per_s": n / secs})
        finally:
            server.terminate()
        best = {e: max(r["images_per_s"] for r in rows if r["engine"] == e) for e in ("img2dataset", "this pipeline")}
        ratio = best["this pipeline"] / best["img2dataset"]
        report.table(["engine", "run", "images", "seconds", "images/s"],
                     [[r["engine"], r["run"], r["images"], r["seconds"], r["images_per_s"]] for r in rows],
                     title="download+resize+write, runs alternating")
        paired = [a["images_per_s"] / b["images_per_s"] for a, b in zip(rows[1::2], rows[::2])]
        print(f"this pipeline {best['this pipeline']:.0f} images/s, img2dataset {best['img2dataset']:.0f} images/s (best of "
              f"{args.repeats} each) -> {ratio:.2f}x; paired runs {report.spread(paired)} (target >= 2x)")
        result = {"benchmark": "download_vs_img2dataset", "images": args.images, "runs": rows, "best_images_per_s": best,
                  "ratio": ratio, "paired_ratios": paired}
        report.save("download", result)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
