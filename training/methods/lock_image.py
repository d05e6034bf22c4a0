"""Locked image tower (LiT, Zhai et al. 2022): only the text tower (and the shared temperature)
trains; no gradient flows through the image tower, which saves its backward pass."""
from training.methods.peft import SelectiveMethod, tower_of


class LockImage(SelectiveMethod):
    name = "lock-image"

    def trainable(self, name, param, module):
        return tower_of(name) != "image"
