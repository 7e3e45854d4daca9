"""Tiny randomly initialised models for tests and examples: a real tokenizer and a real Llama-architecture
causal LM, small enough to build in a second, so tests exercise the real code paths without any download."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The controller shall erase personal data without undue delay [1].",
    "The data subject has the right to obtain confirmation as to whether personal data are processed.",
    "Question: what is the right to erasure? Answer: the right to have personal data deleted [2].",
    "Fines can reach 20 000 000 EUR or 4 % of the total worldwide annual turnover.",
    "0 1 2 3 4 5 6 7 8 9 ( ) [ ] . , ; : ? ! ' \" - yes no maybe the documents do not say",
]


def build_tiny_model(
    folder: Path, seed: int = 0, vocab_size: int = 400, hidden: int = 32, layers: int = 2
) -> Path:
    """Write a tokenizer + tiny LlamaForCausalLM with a ChatML chat template to ``folder``."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
