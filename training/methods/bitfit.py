"""BitFit (Ben Zaken et al. 2022): only the bias terms train."""
from training.methods.peft import SelectiveMethod


class BitFit(SelectiveMethod):
    name = "bitfit"

    def trainable(self, name, param, module):
        return name.endswith("bias") and param.ndim == 1
