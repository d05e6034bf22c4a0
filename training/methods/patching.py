"""Patching: sequential training, then the step's model is interpolated with the model the
step started from, theta = (1 - alpha) * theta_prev + alpha * theta_new (PAINT, Ilharco et
al. 2022; TiC-CLIP's "Patching"), and the next step starts from the patched weights.
Option ``alpha`` (default 0.5: the two models count equally)."""
from training.merging import interpolate
from training.methods.base import Method


class Patching(Method):
    name = "patching"
    needs_prev_model = True

    def end_step(self, ctx, model, batches=None):
        if ctx.prev_model is None:  # the first step has nothing to patch with
            return
        merged = interpolate(ctx.prev_model.state_dict(), model.state_dict(), self.option("alpha", 0.5))
        model.load_state_dict(merged)
