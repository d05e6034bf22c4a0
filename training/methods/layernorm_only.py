"""LayerNorm-only tuning: only the LayerNorm gains and biases train (a cheap parameter-efficient
update that keeps every projection of the base model)."""
from torch import nn

from training.methods.peft import SelectiveMethod


class LayerNormOnly(SelectiveMethod):
    name = "layernorm-only"

    def trainable(self, name, param, module):
        return isinstance(module, nn.LayerNorm)
