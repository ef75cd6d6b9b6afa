"""Batching and the response-only loss, shared by training and evaluation."""

from __future__ import annotations

import math

import torch

from qfserve.sft.encode import IGNORE_INDEX, Example


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pads a batch; padding is masked out of attention and carries no label."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def summed_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropy over response tokens, number of those tokens).

    Computed here rather than by the model's `labels=` argument for two reasons: the mean is then
    over the tokens of a whole batch or data set, not a mean of per-sequence means; and the output
    projection (49k-token vocabulary, a fifth of a small model's compute) runs only at the response
    positions instead of at every position.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps
    hidden = causal_lm.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    scored = targets != IGNORE_INDEX
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][scored])
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[scored], reduction="sum")
    return loss, int(scored.sum())


@torch.no_grad()
def mean_loss(model, examples: list[Example], pad_id: int, batch_size: int = 8) -> float:
    """Token-weighted mean response loss over `examples` (nan when there are none)."""
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        loss, n = summed_loss(model, collate(examples[start : start + batch_size], pad_id))
        total += float(loss)
        count += n
    return total / count if count else math.nan


def perplexity(loss: float) -> float:
    return math.exp(loss) if math.isfinite(loss) else math.nan
