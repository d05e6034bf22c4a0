"""LoRA (Hu et al. 2022) in both towers: a fresh rank-``rank`` adapter on the attention (q/k/v
and output) and MLP weights per task, merged into the weights when the task ends. Options
``rank`` (4), ``alpha`` (2 x rank), ``targets`` (attn,mlp), ``towers`` (image,text)."""
from training.methods.peft import AdapterMethod, LoRA


class LoRAMethod(AdapterMethod):
    name = "lora"
    adapter = LoRA
