"""Tiny Hugging Face image-to-text models (BLIP, GIT, VisionEncoderDecoder) written to local
folders with ``save_pretrained``, as a user's downloaded captioner would be; random weights with a
large init so that different images give different captions."""
from __future__ import annotations

import os

WORDS = ("a photo of the picture red green blue yellow white black circle square triangle cross ring star "
         "heart on in with sky sea grass night city snow desert studio background").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tokenizer(folder: str):
    from transformers import BertTokenizerFast

    os.makedirs(folder, exist_ok=True)
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(SPECIAL + WORDS)}, do_lower_case=True)


def make_captioner(kind: str, folder: str, seed: int = 0) -> str:
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    tok = tokenizer(folder)
    v = len(tok)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    vision = dict(small, image_size=32, patch_size=8)
    if kind == "blip":
        cfg = tf.BlipConfig(text_config=dict(small, vocab_size=v, encoder_hidden_size=32, bos_token_id=2, sep_token_id=3,
                                             eos_token_id=3, pad_token_id=0, initializer_range=1.0),
                            vision_config=dict(vision, initializer_range=1.0))
        model = tf.BlipForConditionalGeneration(cfg)
        proc = tf.BlipProcessor(image_processor=tf.BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    elif kind == "git":
        cfg = tf.GitConfig(vision_config=vision, vocab_size=v, max_position_embeddings=64, bos_token_id=2, eos_token_id=3,
                           pad_token_id=0, initializer_range=1.0, **small)
        model = tf.GitForCausalLM(cfg)
        proc = tf.GitProcessor(image_processor=tf.CLIPImageProcessor(size={"shortest_edge": 32},
                                                                     crop_size={"height": 32, "width": 32}), tokenizer=tok)
    elif kind == "vision-encoder-decoder":
        enc = tf.ViTConfig(**vision, initializer_range=1.0)
        dec = tf.BertConfig(vocab_size=v, is_decoder=True, add_cross_attention=True, initializer_range=1.0,
                            pad_token_id=0, bos_token_id=2, eos_token_id=3, max_position_embeddings=64, **small)
        cfg = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
        cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 2, 0, 3
        model = tf.VisionEncoderDecoderModel(cfg)
        proc = None
        tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
        tok.save_pretrained(folder)
    else:
        raise ValueError(kind)
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == v]
    with torch.no_grad():  # never predict a special token, so every caption has words
        for head in heads:
            head.weight[: len(SPECIAL)] = 0
            if head.bias is not None:
                head.bias[: len(SPECIAL)] = -1e4
    model.save_pretrained(folder)
    if proc is not None:
        proc.save_pretrained(folder)
    return folder
