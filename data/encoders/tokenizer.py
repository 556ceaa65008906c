"""A tiny in-process byte-level tokenizer for the tiny random-init text encoders (no files, no hub).

Every byte is one token (a BPE model without merges over the GPT-2 byte alphabet), so any caption encodes, and
the result is a transformers fast tokenizer that saves with ``save_pretrained`` and loads with ``AutoTokenizer``.
"""

from __future__ import annotations

PAD, EOS, UNK, BOS = "<pad>", "</s>", "<unk>", "<s>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the ByteLevel pre-tokenizer's alphabet), in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_level_tokenizer(model_max_length: int, add_bos: bool = False):
    """A right-padding byte-level tokenizer: ids 0..3 are pad, eos, unk, bos; 4.. are the 256 bytes in order.

    `add_bos` puts <s> before the text (CLIP and Llama style); </s> always ends it (T5 and CLIP style).
    """
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2, BOS: 3}
    for b, char in bytes_to_unicode().items():  # byte b -> id 4 + b, the same in every process
        vocab[char] = 4 + b
    if set(vocab) - {PAD, EOS, UNK, BOS} != set(ByteLevel.alphabet()):
        raise RuntimeError("byte-level alphabet mismatch with the tokenizers library")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    template = f"{BOS} $A {EOS}" if add_bos else f"$A {EOS}"
    tok.post_processor = TemplateProcessing(single=template, special_tokens=[(BOS, 3), (EOS, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        bos_token=BOS,
        model_max_length=model_max_length,
        padding_side="right",
    )


def tiny_decoder_config(tokenizer, text_dim: int) -> dict:
    """Config arguments of the tiny decoder-only text encoders (HunyuanVideo's Llama, HunyuanVideo-1.5's Qwen2.5-VL)
    over `tokenizer`: 3 layers, 4 query / 2 key-value heads of a `text_dim` hidden size."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": text_dim,
        "intermediate_size": 2 * text_dim,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def tiny_t5_config(tokenizer, dim: int, heads: int) -> dict:
    """Config arguments of the tiny T5 encoders (Wan's and Mochi's text, HunyuanVideo-1.5's ByT5 glyphs) over
    `tokenizer`: 2 layers of `heads` heads of 8 dims in a `dim` model size."""
    return {
        "vocab_size": len(tokenizer),
        "d_model": dim,
        "d_kv": 8,
        "d_ff": 2 * dim,
        "num_layers": 2,
        "num_heads": heads,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
