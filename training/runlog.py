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
"""
from __future__ import annotations

import json
import os

METRICS = ("loss", "lr", "samples_per_s", "samples_per_s_per_device", "data_wait", "logit_scale")


class RunLog:
    def __init__(self, run_dir: str, enabled: bool, config: dict | None = None, wandb: bool = False):
        self.enabled = enabled
        self.jsonl = self.tb = self.wandb = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self.jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a", buffering=1)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        if wandb:
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb as wb

            self.wandb = wb.init(mode="offline", dir=run_dir, project="tic-training", name=os.path.basename(os.path.abspath(run_dir)),
                                 config=config or {}, reinit="finish_previous")

    def log(self, row: dict) -> None:
        """``row``: step, name, iteration, samples, and the metrics (numbers)."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(row, sort_keys=True) + "\n")
        x = int(row["samples"])
        scalars = {k: v for k, v in row.items() if k not in ("step", "name", "iteration", "samples") and isinstance(v, (int, float))}
        for k, v in scalars.items():
            self.tb.add_scalar(f"train/{k}", v, x)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in scalars.items()} | {"samples": x, "time_step": row["step"]})

    def close(self) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
