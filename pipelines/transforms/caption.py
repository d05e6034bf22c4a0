"""Caption generation as a Beam ``RunInference`` stage: ``caption_generated`` next to the alt text.

Two model handlers, one stage:

- ``HFCaptionHandler``: any Hugging Face image-to-text model (BLIP, GIT, VisionEncoderDecoder)
  loaded from local files by ``pipelines.models.load_captioner``; Beam batches the samples
  (``max_batch_size``), loads one model per worker process and runs it on CPU or GPU; decoding
  is greedy (``num_beams=1``) or beam search, ``max_new_tokens`` long.
- ``TemplateCaptionHandler``: for procedurally generated data, whose content is known from its
  generation parameters. Its "model" is an attribute table keyed by URL (or uid); a sample's
  caption is one of the templates, filled with its attributes, chosen by the sample's uid so
  that a re-run gives the same caption. Samples without attributes get none (counted).

``CaptionPool`` reads every deduplicated pool sample of the given metadata files, captions it,
and writes ``caption_generated`` back into the metadata, one write per pool shard.
"""
from __future__ import annotations

import io
import re
import string
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from pipelines import io as pio
from pipelines.transforms.clip_score import fixed_batches
from pipelines.transforms.pool import pool_samples, update_metadata

STAGE = "caption"
TEMPLATE_PREFIX = "template:"


def _clean(text: str) -> str | None:
    text = re.sub(r"\s+", " ", text or "").strip()
    return text or None


class HFCaptionHandler(ModelHandler[dict, PredictionResult, Any]):
    def __init__(self, spec: str, device: str = "cpu", batch_size: int = 64, max_new_tokens: int = 30,
                 num_beams: int = 1, share_across_processes: bool = False):
        self.spec, self.device, self.batch_size = spec, device, batch_size
        self.max_new_tokens, self.num_beams, self.share = max_new_tokens, num_beams, share_across_processes

    def load_model(self):
        # imported here, in the worker: the handler is pickled to Beam workers, which load the model themselves
        from pipelines.models import load_captioner

        return load_captioner(self.spec, device=self.device)

    def run_inference(self, batch: Sequence[dict], model, inference_args=None) -> Iterable[PredictionResult]:
        texts = caption_images(model, [r["jpg"] for r in batch], self.device, self.max_new_tokens, self.num_beams)
        for r, t in zip(batch, texts):
            yield PredictionResult(r, {"caption_generated": t})

    def batch_elements_kwargs(self):
        return fixed_batches(self.batch_size)

    def share_model_across_processes(self) -> bool:
        return self.share

    def get_metrics_namespace(self) -> str:
        return STAGE


def caption_images(loaded, images: list[bytes], device: str = "cpu", max_new_tokens: int = 30,
                   num_beams: int = 1) -> list[str | None]:
    """Captions of encoded images with a ``LoadedCaptioner``, as one batch."""
    import torch
    from PIL import Image

    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    pixels = loaded.image_processor(images=pil, return_tensors="pt")["pixel_values"].to(device)
    with torch.no_grad():
        ids = loaded.model.generate(pixel_values=pixels, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                    do_sample=False)
    return [_clean(t) for t in loaded.tokenizer.batch_decode(ids, skip_special_tokens=True)]


DEFAULT_TEMPLATES = (
    "a photo of a {colour} {object}.",
    "a {colour} {object} with a {texture} pattern on a {scene} background.",
    "a {colour} {object} in front of the {scene}, {texture} texture.",
)


class TemplateCaptioner:
    """Captions from an attribute table: ``caption(sample) -> str | None``."""

    def __init__(self, attributes: dict[str, dict], templates: Sequence[str], key: str = "url"):
        if not templates:
            raise ValueError("the template captioner needs at least one template")
        self.attributes, self.templates, self.key = attributes, list(templates), key
        self.fields = [{f for _, f, _, _ in string.Formatter().parse(t) if f} for t in self.templates]

    @classmethod
    def from_table(cls, path: str, templates: Sequence[str] = DEFAULT_TEMPLATES) -> "TemplateCaptioner":
        table = pio.read_parquet([path])
        key = "url" if "url" in table.column_names else "uid"
        if key not in table.column_names:
            raise ValueError(f"{path}: an attribute table needs a 'url' or 'uid' column; has {table.column_names}")
        fields = set().union(*[{f for _, f, _, _ in string.Formatter().parse(t) if f} for t in templates])
        if fields and not fields & set(table.column_names):
            raise ValueError(f"{path}: none of the template fields {sorted(fields)} is a column ({table.column_names})")
        attrs = {r.pop(key): r for r in table.to_pylist()}
        return cls(attrs, templates, key)

    def caption(self, sample: dict) -> str | None:
        a = self.attributes.get(sample.get(self.key))
        if not a:
            return None
        usable = [i for i, fs in enumerate(self.fields) if all(a.get(f) not in (None, "") for f in fs)]
        if not usable:
            return None
        i = usable[int(str(sample["uid"])[:8], 16) % len(usable)]
        return _clean(self.templates[i].format(**a))


class TemplateCaptionHandler(ModelHandler[dict, PredictionResult, Any]):
    def __init__(self, attributes_path: str, templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 512):
        self.attributes_path, self.templates, self.batch_size = attributes_path, tuple(templates), batch_size

    def load_model(self) -> TemplateCaptioner:
        return TemplateCaptioner.from_table(self.attributes_path, self.templates)

    def run_inference(self, batch: Sequence[dict], model: TemplateCaptioner, inference_args=None):
        for r in batch:
            yield PredictionResult(r, {"caption_generated": model.caption(r)})

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.batch_size}

    def get_metrics_namespace(self) -> str:
        return STAGE


def write_captions(key: tuple, results: list) -> tuple[int, int]:
    """Caption columns of one pool shard into its metadata; (captioned, without caption)."""
    _, _, metadata_path = key
    caps = {pr.example["uid"]: pr.inference["caption_generated"] for pr in results}
    update_metadata(metadata_path, {u: {"caption_generated": c} for u, c in caps.items()})
    n_none = sum(1 for c in caps.values() if c is None)
    return len(caps) - n_none, n_none


class CaptionPool(beam.PTransform):
    """Caption every deduplicated pool sample; outputs one (year, captioned, without caption) per year."""

    def __init__(self, metadata_files: dict[int, list[str]], pool_dirs: dict[int, str], handler: ModelHandler):
        super().__init__()
        self.metadata_files, self.pool_dirs, self.handler = metadata_files, pool_dirs, handler

    def expand(self, p):
        pool_dirs = self.pool_dirs
        files = [(y, f) for y, fs in sorted(self.metadata_files.items()) for f in fs]
        return (
            p
            | "MetadataFiles" >> beam.Create(files)
            | "Samples" >> beam.FlatMapTuple(lambda y, f: pool_samples(f, pool_dirs[y]))
            | "Caption" >> RunInference(self.handler)
            | "ByShard" >> beam.Map(lambda pr: ((pr.example["year"], pr.example["shard"], pr.example["metadata_path"]), pr))
            | "GroupShard" >> beam.GroupByKey()
            | "Write" >> beam.MapTuple(lambda k, prs: (k[0], write_captions(k, list(prs))))
            | "PerYear" >> beam.CombinePerKey(lambda counts: tuple(map(sum, zip(*counts))) if counts else (0, 0))
        )
