"""Online EWC (Schwarz et al. 2018, "Progress & Compress"): EWC whose accumulated Fisher decays
by ``gamma`` (default 0.9) before each task's Fisher is added, so old tasks fade instead of
stiffening the model without bound. Everything else (penalty, per-sample Fisher estimate, its
compute added to the task's MACs) is ``ewc``'s."""
from training.methods.ewc import EWC


class OnlineEWC(EWC):
    name = "online-ewc"

    def end_step(self, ctx, model, batches=None):
        if batches is not None:
            gamma = self.option("gamma", 0.9)
            self.fisher = {n: gamma * f for n, f in self.fisher.items()}
        super().end_step(ctx, model, batches)
