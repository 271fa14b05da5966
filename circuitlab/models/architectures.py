"""The Hugging Face architectures circuitlab reads (`model=local`, GGUF files): which TransformerLens builds from the
Hugging Face config and which circuitlab builds itself (`hf_checkpoint`). Each is tested on a tiny random-weight
fixture (tests/test_architectures.py)."""

from __future__ import annotations

# Built by TransformerLens from the Hugging Face config; each is tested on a tiny random-weight fixture.
TL_BUILT = {
    "GPT2LMHeadModel": "GPT-2",
    "GPTNeoForCausalLM": "GPT-Neo",
    "GPTJForCausalLM": "GPT-J",
    "GPTNeoXForCausalLM": "GPT-NeoX / Pythia",
    "LlamaForCausalLM": "Llama",
    "MistralForCausalLM": "Mistral",
    "Qwen2ForCausalLM": "Qwen2 / Qwen2.5",
    "Qwen3ForCausalLM": "Qwen3",
    "Phi3ForCausalLM": "Phi-3",
    "OPTForCausalLM": "OPT",
}
# Built here from the Hugging Face config.
BUILT_HERE = {"GemmaForCausalLM": "Gemma", "Gemma2ForCausalLM": "Gemma-2", "Gemma3ForCausalLM": "Gemma 3", "Olmo2ForCausalLM": "OLMo-2"}
SUPPORTED = {**TL_BUILT, **BUILT_HERE}
ALIASES = {"GPT2Model": "GPT2LMHeadModel"}  # a base model saved without its head: same weights but lm_head


def supported_list() -> str:
    return ", ".join(f"{name} ({arch})" for arch, name in SUPPORTED.items())
