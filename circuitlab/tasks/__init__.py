"""Task registry: each task module offers `validate_config(cfg)`, `build_pairs(cfg, tokenizer, bos_id,
pad_id, seed) -> PromptPairs` and `POSITION_LABELS`."""

from circuitlab.tasks import addition, factual, ioi, ioi_counterfactual, pairs, repeat_first

TASKS = {"ioi": ioi, "factual": factual, "pairs": pairs, "addition": addition, "ioi_counterfactual": ioi_counterfactual,
         "repeat_first": repeat_first}
