"""Checkpoints of a run, written atomically and loadable with ``torch.load(weights_only=True)``.

```
<run_dir>/config.json                the resolved TrainConfig (file + CLI) and the time steps
<run_dir>/config.yaml                the --config file the run was started from, as given
<run_dir>/metrics.jsonl, tensorboard/  per-iteration metrics (training.runlog)
<run_dir>/checkpoints/step_<t>.pt    model after time step t (+ optimizer, method state, ...)
<run_dir>/checkpoints/latest.pt      periodic state inside the current step (removed at the end)
<run_dir>/summary.json               per step: iterations, samples seen, MACs, seconds
```
The run dir is a local path or ``gs://``/``s3://`` (docs/storage.md).
Each checkpoint holds ``state_dict``, ``optimizer``, ``method`` (the method's own state),
``step``, ``iteration`` (optimizer steps; the data position is iteration x accum_freq batches
consumed by each rank), ``rng``,
``config``, ``model_name`` and ``code_version``; ``pipelines.models.load_model`` reads
``<arch>:<run_dir>/checkpoints/step_<t>.pt`` directly.
"""
from __future__ import annotations

import io
import json
import os
import random
import re

import numpy as np
import torch

from pipelines import io as pio
from pipelines.provenance import code_version


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))


def state(model, optimizer, method, step: int, iteration: int, cfg, step_name: str, final: bool = False) -> dict:
    m = model.module if hasattr(model, "module") else model
    return {
        "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "method": method.state_dict(),
        "step": step,
        "step_name": step_name,
        "iteration": iteration,
        "final": final,
        "rng": _rng_state(),
        "config": json.dumps(cfg.to_json(), sort_keys=True),
        "model_name": cfg.model.split(":")[0],
        "code_version": code_version(),
    }


def run_name(run_dir: str) -> str:
    """A run's name: the last component of its run dir (a local path or a bucket prefix)."""
    if pio.is_local(run_dir):
        return os.path.basename(os.path.abspath(pio.local_path(run_dir)))
    return run_dir.rstrip("/").rsplit("/", 1)[-1]


class RunDir:
    """A run dir on a local or shared disk, or under ``gs://``/``s3://`` (every read and write goes
    through ``pipelines.io``): checkpoints appear whole (written to a temporary name and renamed,
    or uploaded only once complete), so a killed run leaves the last complete one to resume from."""

    def __init__(self, path: str):
        self.path = path
        self.ckpt_dir = pio.join(path, "checkpoints")

    def _save(self, name: str, obj) -> str:
        path = pio.join(self.ckpt_dir, name)
        with pio.atomic_open(path) as f:
            torch.save(obj, f)
        return path

    @staticmethod
    def _load(path: str) -> dict:
        if pio.is_local(path):
            return torch.load(pio.local_path(path), map_location="cpu", weights_only=True)
        return torch.load(io.BytesIO(pio.read_bytes(path)), map_location="cpu", weights_only=True)

    def step_path(self, t: int) -> str:
        return pio.join(self.ckpt_dir, f"step_{t}.pt")

    def save_step(self, t: int, obj: dict) -> str:
        return self._save(f"step_{t}.pt", obj)

    def save_latest(self, obj: dict) -> str:
        return self._save("latest.pt", obj)

    def load_step(self, t: int) -> dict:
        return self._load(self.step_path(t))

    def latest(self) -> dict | None:
        p = pio.join(self.ckpt_dir, "latest.pt")
        return self._load(p) if pio.exists(p) else None

    def remove_latest(self) -> None:
        pio.remove(pio.join(self.ckpt_dir, "latest.pt"))

    def completed_steps(self) -> list[int]:
        return sorted(int(m.group(1)) for p in pio.glob(pio.join(self.ckpt_dir, "step_*.pt"))
                      if (m := re.search(r"step_(\d+)\.pt$", p)))

    def config(self) -> dict | None:
        p = pio.join(self.path, "config.json")
        return pio.read_json(p)["train"] if pio.exists(p) else None

    def write_config(self, cfg: dict, steps: list[str], config_file: str = "") -> None:
        pio.write_json(pio.join(self.path, "config.json"), {"train": cfg, "time_steps": steps})
        if config_file:
            with open(config_file, "rb") as f:
                pio.write_bytes(pio.join(self.path, "config.yaml"), f.read())

    def time_steps(self) -> list[str]:
        return pio.read_json(pio.join(self.path, "config.json"))["time_steps"]

    def summary(self) -> dict:
        p = pio.join(self.path, "summary.json")
        if not pio.exists(p):
            cfg = self.config() or {}
            return {"protocol": cfg.get("protocol"), "steps": []}
        return pio.read_json(p)

    def write_summary(self, summary: dict) -> None:
        pio.write_json(pio.join(self.path, "summary.json"), summary)

    def save_ids(self, t: int, rank: int, ids: torch.Tensor, model) -> None:
        """Per-rank record of the samples trained on and the weights ended with (DDP checks)."""
        m = model.module if hasattr(model, "module") else model
        self._save(f"ids_step{t}_rank{rank}.pt", {"ids": ids, "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()}})
