"""Locked text tower: only the image tower (and the shared temperature) trains, as LiT's
converse; the text embeddings of every class name stay those of the base model."""
from training.methods.peft import SelectiveMethod, tower_of


class LockText(SelectiveMethod):
    name = "lock-text"

    def trainable(self, name, param, module):
        return tower_of(name) != "text"
