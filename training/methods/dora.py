"""DoRA (Liu et al. 2024): LoRA on the direction of each weight row plus a trained magnitude,
merged into the weights when the task ends. Same options as ``lora``."""
from training.methods.peft import AdapterMethod, DoRA


class DoRAMethod(AdapterMethod):
    name = "dora"
    adapter = DoRA
