"""Task registry: each task module offers `validate_config(cfg)` and `build_pairs(cfg, tokenizer, prefix, pad_id,
seed) -> PromptPairs` (`prefix`: the tokens every prompt starts with, [BOS] or none) (whose `named_positions` name the positions it offers), and what it offers beyond that: `build_split`
(train / test splits, which DAS needs: ioi_counterfactual), `TRACKS_OWN_TOKENS` (its data names tracked tokens: pairs),
`PROMPT_NAMES` (what its clean and corrupted prompts are called, when not that: ioi_counterfactual's source and base)."""

from circuitlab.tasks import addition, factual, ioi, ioi_counterfactual, pairs, repeat_first

TASKS = {"ioi": ioi, "factual": factual, "pairs": pairs, "addition": addition, "ioi_counterfactual": ioi_counterfactual,
         "repeat_first": repeat_first}
