"""A class-balanced memory of fixed total size for class- and domain-incremental streams.

After each task every seen class holds ``size // n_seen`` examples (the first ``size % n_seen``
classes, in the order they arrived, one more), so quotas shrink as classes arrive and the
total never exceeds ``size``. Which examples stay is a seeded random sample: each class keeps
the examples with the smallest ``sha256(seed:uid)`` among everything it has seen. Shrinking
keeps a subset of what was kept, so the rule equals sampling without replacement from all of
the class's data, while only the kept ids are ever stored. The composition after every task is
recorded (``history``) and the state goes into checkpoints.
"""
from __future__ import annotations

import hashlib


def _rank(seed: int, uid: str) -> str:
    return hashlib.sha256(f"{seed}:{uid}".encode()).hexdigest()


class ClassBalancedMemory:
    def __init__(self, size: int, seed: int = 0):
        if size < 0:
            raise ValueError(f"memory size must be >= 0, got {size}")
        self.size, self.seed = int(size), int(seed)
        self.members: dict[int, list[str]] = {}  # class -> kept uids, smallest rank first
        self.history: list[dict] = []

    def quotas(self) -> dict[int, int]:
        classes = list(self.members)
        if not classes:
            return {}
        base, extra = divmod(self.size, len(classes))
        return {c: base + (1 if i < extra else 0) for i, c in enumerate(classes)}

    def update(self, task: str, by_class: dict[int, list[str]]) -> dict[int, int]:
        """Add a task's training ids (class -> uids) and shrink every class to its quota."""
        for c in by_class:
            self.members.setdefault(int(c), [])
        quotas = self.quotas()
        for c, kept in self.members.items():
            pool = set(kept) | set(by_class.get(c, ()))
            self.members[c] = sorted(pool, key=lambda u: _rank(self.seed, u))[: quotas[c]]
        composition = {c: len(v) for c, v in self.members.items()}
        self.history.append({"task": task, "composition": composition, "total": sum(composition.values())})
        return composition

    def uids(self) -> frozenset[str]:
        return frozenset(u for v in self.members.values() for u in v)

    def __len__(self) -> int:
        return sum(len(v) for v in self.members.values())

    def state_dict(self) -> dict:
        return {"size": self.size, "seed": self.seed, "members": {str(c): v for c, v in self.members.items()},
                "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.seed = int(state["size"]), int(state["seed"])
        self.members = {int(c): list(v) for c, v in state["members"].items()}
        self.history = list(state["history"])
