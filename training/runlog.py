"""Per-iteration run logging on the main rank, in three sinks:

```
<run_dir>/metrics.jsonl   one JSON object per iteration: step, name, iteration, samples (seen in the
                          run so far), loss and the method's terms, lr, samples_per_s,
                          samples_per_s_per_device, data_wait (fraction of the iteration spent
                          waiting for batches), logit_scale (the temperature's exp)
<run_dir>/tensorboard/    TensorBoard event files (``tensorboard --logdir <run_dir>/tensorboard``),
                          scalars ``train/<metric>`` against samples seen
<run_dir>/wandb/          Weights & Biases, offline (``--wandb``; ``wandb sync`` uploads it later)
```
A resumed run appends: the iterations after the checkpoint it resumed from appear twice in
``metrics.jsonl``, and the later row of an (step, iteration) pair is the one that counts.

A run dir on an object store (``gs://``, ``s3://``) cannot be appended to: the rows are kept in
memory and ``metrics.jsonl`` is rewritten whole at every :meth:`RunLog.flush`, which the trainer
calls before each checkpoint it writes, and at the end. A resumed run starts from the object's rows
up to the checkpoint it resumes from (``resume_point``) and trains, and logs, the rest again: on a
store, each iteration appears once. TensorBoard and W&B write to a local staging directory whose
new or changed files are uploaded at the same points.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from pipelines import io as pio
from training.checkpoint import run_name

METRICS = ("loss", "lr", "samples_per_s", "samples_per_s_per_device", "data_wait", "logit_scale")


class RunLog:
    def __init__(self, run_dir: str, enabled: bool, config: dict | None = None, wandb: bool = False,
                 resume_point: tuple | None = None):
        self.enabled = enabled
        self.jsonl = self.tb = self.wandb = None
        if not enabled:
            return
        self.run_dir, self.remote = run_dir, not pio.is_local(run_dir)
        self.metrics = pio.join(run_dir, "metrics.jsonl")
        if self.remote:
            self.rows = pio.read_bytes(self.metrics).decode().splitlines(keepends=True) if pio.exists(self.metrics) else []
            if resume_point is not None:  # rows past the checkpoint resumed from are logged again
                self.rows = [r for r in self.rows if _position(r) <= resume_point]
            self.stage = tempfile.mkdtemp(prefix="tic-runlog-")  # tensorboard/, wandb/ before upload
            self.uploaded: dict[str, tuple] = {}
            local = self.stage
        else:
            local = pio.local_path(run_dir)
            os.makedirs(local, exist_ok=True)
            self.jsonl = open(os.path.join(local, "metrics.jsonl"), "a", buffering=1)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(os.path.join(local, "tensorboard"))
        if wandb:
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb as wb

            self.wandb = wb.init(mode="offline", dir=local, project="tic-training", name=run_name(run_dir),
                                 config=config or {}, reinit="finish_previous")

    def log(self, row: dict) -> None:
        """``row``: step, name, iteration, samples, and the metrics (numbers)."""
        if not self.enabled:
            return
        line = json.dumps(row, sort_keys=True) + "\n"
        if self.remote:
            self.rows.append(line)
        else:
            self.jsonl.write(line)
        x = int(row["samples"])
        scalars = {k: v for k, v in row.items() if k not in ("step", "name", "iteration", "samples") and isinstance(v, (int, float))}
        for k, v in scalars.items():
            self.tb.add_scalar(f"train/{k}", v, x)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in scalars.items()} | {"samples": x, "time_step": row["step"]})

    def flush(self) -> None:
        """Make what was logged so far durable: a no-op locally (the file is line-buffered); on a
        store, rewrite ``metrics.jsonl`` and upload the staged files that changed."""
        if not self.enabled or not self.remote:
            return
        pio.write_bytes(self.metrics, "".join(self.rows).encode())
        self.tb.flush()
        for d, _, files in os.walk(self.stage):
            for f in files:
                path = os.path.join(d, f)
                st = os.stat(path)
                if self.uploaded.get(path) != (st.st_size, st.st_mtime_ns):
                    pio.write_bytes(pio.join(self.run_dir, os.path.relpath(path, self.stage)), pio.read_bytes(path))
                    self.uploaded[path] = (st.st_size, st.st_mtime_ns)

    def close(self) -> None:
        if not self.enabled:
            return
        self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.remote:
            self.flush()
            shutil.rmtree(self.stage, ignore_errors=True)
        else:
            self.jsonl.close()


def _position(line: str) -> tuple:
    row = json.loads(line)
    return row["step"], row["iteration"]
