"""The class-balanced memory as a method's data: the current task plus a memory of past tasks.

With option ``memory`` (total examples, default 0 = none) the data of task t is the current
task's source plus a source restricted to the memory's ids over the past tasks' shards; the
memory after tasks 0..t-1 is rebuilt deterministically from their shards (``training.memory``),
so it is the same on every rank and after a resume, and its composition per task is recorded.
Samples are drawn in proportion to size, as from the concatenation of the two sets.
"""
from __future__ import annotations

import json

from pipelines.sinks import webdataset as wds
from training.data import Source
from training.memory import ClassBalancedMemory


def ids_by_class(src: Source) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for shard in src.shards:
        for s in wds.iter_samples(shard, keys=("json",)):
            meta = json.loads(s["json"])
            if meta.get("cls") is None:
                raise ValueError(f"{shard}: samples have no 'cls': a class memory needs a task stream "
                                 "(benchmark_builder.task_streams)")
            out.setdefault(int(meta["cls"]), []).append(meta["uid"])
    return out


class ClassMemoryData:
    """Mixin for ``Method`` subclasses: ``data`` = current task + class-balanced memory."""

    memory_history: list

    def data(self, t: int, sources: list[Source]) -> list[Source]:
        size = int(self.option("memory", 0))
        if size <= 0 or t == 0:
            return [sources[t]]
        mem = ClassBalancedMemory(size, seed=int(self.option("memory_seed", 0)))
        for k in range(t):
            mem.update(sources[k].name, ids_by_class(sources[k]))
        self.memory_history = mem.history
        uids = mem.uids()
        past = tuple(s for k in range(t) for s in sources[k].shards)
        return [sources[t], Source("memory", past, len(uids), uids=uids)]
