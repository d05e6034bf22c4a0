"""``zero-shot``: no time step trains; every step is evaluated with the untrained (seeded) model,
the point every class-incremental method starts from."""
from training.methods.base import Method


class ZeroShot(Method):
    name = "zero-shot"

    def trains_at(self, t: int, n_steps: int) -> bool:
        return False
