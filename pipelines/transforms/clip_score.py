"""CLIP embeddings and scores as a Beam ``RunInference`` stage.

``ClipModelHandler`` is a Beam ``ModelHandler`` over ``pipelines.models.load_model`` (open_clip
registry names with a ``pretrained`` tag, Hugging Face ids, local checkpoints or folders):
Beam batches the elements (``max_batch_size``), loads one model per worker process
(``share_model_across_processes`` when asked) and runs it on CPU or GPU (``device``). Per
sample it returns the L2-normalised image and text embeddings and their cosine similarity,
``clip_score``, as DataComp computes it (no logit scale).

``ScorePool`` reads every downloaded sample of the given metadata files back from its pool
shard, scores it, and writes per pool shard ``<out>/year=YYYY/<shard>.npz`` (``uid`` as
DataComp's ``u8,u8``, ``image_embedding``/``text_embedding`` float16, ``clip_score``), the
layout of DataComp's embedding files, plus the updated metadata rows (``clip_score``,
``clip_model``).
"""
from __future__ import annotations

import io
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from pipelines import io as pio
from pipelines import uid as uidcodec
from pipelines.transforms.pool import pool_samples, update_metadata

STAGE = "clip_score"


def fixed_batches(size: int) -> dict:
    """Beam's batching for a model stage: every batch ``size`` elements but a bundle's last. Beam's
    default (``min_batch_size`` 1) starts each DoFn at batches of 1, 1, 2, 4, ... and keeps
    adapting them to its timing: small forward passes that cost the same per call as full ones."""
    return {"min_batch_size": size, "max_batch_size": size}


class ClipModelHandler(ModelHandler[dict, PredictionResult, Any]):
    def __init__(self, spec: str, device: str = "cpu", batch_size: int = 256, share_across_processes: bool = False):
        self.spec, self.device, self.batch_size, self.share = spec, device, batch_size, share_across_processes

    def load_model(self):
        # imported here, in the worker: the handler is pickled to Beam workers, which load the model themselves
        from pipelines.models import load_model

        loaded = load_model(self.spec, device=self.device)
        loaded.model.eval()
        return loaded

    def run_inference(self, batch: Sequence[dict], model, inference_args=None) -> Iterable[PredictionResult]:
        from pipelines.models.encode import encode_images, encode_texts, preprocess_encoded

        n = len(batch)  # Beam's batch is one forward pass
        pixels = preprocess_encoded(model.preprocess_val, [r["jpg"] for r in batch], model.image_size)
        img = encode_images(model.model, pixels, self.device, batch_size=n)
        txt = encode_texts(model.model, model.tokenizer, [r.get("text") or "" for r in batch], self.device, batch_size=n)
        scores = (img * txt).sum(dim=-1)
        img, txt, scores = img.numpy(), txt.numpy(), scores.numpy()
        for i, r in enumerate(batch):
            yield PredictionResult(r, {"image_embedding": img[i].astype(np.float16), "text_embedding": txt[i].astype(np.float16),
                                       "clip_score": float(scores[i])})

    def batch_elements_kwargs(self):
        return fixed_batches(self.batch_size)

    def share_model_across_processes(self) -> bool:
        return self.share

    def get_metrics_namespace(self) -> str:
        return "clip_score"


def write_scores(key: tuple, results: list, out_dir: str, model_name: str) -> int:
    """One pool shard's embeddings (.npz) and its metadata rows updated with the scores."""
    year, shard, metadata_path = key
    results = sorted(results, key=lambda pr: pr.example["uid"])
    uids = [pr.example["uid"] for pr in results]
    with pio.atomic_open(pio.join(out_dir, f"year={year}", f"{shard}.npz")) as f:
        np.savez(f, uid=uidcodec.encode(uids, sort=False),
                 image_embedding=np.stack([pr.inference["image_embedding"] for pr in results]),
                 text_embedding=np.stack([pr.inference["text_embedding"] for pr in results]),
                 clip_score=np.array([pr.inference["clip_score"] for pr in results], dtype=np.float32))
    update_metadata(metadata_path, {pr.example["uid"]: {"clip_score": pr.inference["clip_score"], "clip_model": model_name}
                                    for pr in results})
    return len(results)


class ScorePool(beam.PTransform):
    def __init__(self, metadata_files: dict[int, list[str]], pool_dirs: dict[int, str], out_dir: str,
                 handler: ClipModelHandler, model_name: str):
        super().__init__()
        self.metadata_files, self.pool_dirs, self.out_dir = metadata_files, pool_dirs, out_dir
        self.handler, self.model_name = handler, model_name

    def expand(self, p):
        pool_dirs, out_dir, model_name = self.pool_dirs, self.out_dir, self.model_name
        files = [(y, f) for y, fs in sorted(self.metadata_files.items()) for f in fs]
        return (
            p
            | "MetadataFiles" >> beam.Create(files)
            | "Samples" >> beam.FlatMapTuple(lambda y, f: pool_samples(f, pool_dirs[y]))
            | "CLIP" >> RunInference(self.handler)
            | "ByShard" >> beam.Map(lambda pr: ((pr.example["year"], pr.example["shard"], pr.example["metadata_path"]), pr))
            | "GroupShard" >> beam.GroupByKey()
            | "Write" >> beam.MapTuple(lambda k, prs: write_scores(k, list(prs), out_dir, model_name))
            | "Total" >> beam.CombineGlobally(sum)
        )


def load_embeddings(paths: list[str]) -> dict[str, np.ndarray]:
    """Concatenate the .npz files of ``ScorePool``: uid (hex), image/text embeddings, clip_score."""
    parts = [np.load(io.BytesIO(pio.read_bytes(p))) for p in sorted(paths)]
    if not parts:
        return {"uid": np.array([], dtype=object), "image_embedding": np.zeros((0, 0), np.float32),
                "text_embedding": np.zeros((0, 0), np.float32), "clip_score": np.zeros(0, np.float32)}
    return {
        "uid": np.array([u for p in parts for u in uidcodec.decode(p["uid"])], dtype=object),
        "image_embedding": np.concatenate([p["image_embedding"] for p in parts]).astype(np.float32),
        "text_embedding": np.concatenate([p["text_embedding"] for p in parts]).astype(np.float32),
        "clip_score": np.concatenate([p["clip_score"] for p in parts]),
    }
