"""Held-out loss and perplexity of the base model and of base + adapter on the same data."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from qfserve.sft import manifest as manifest_io
from qfserve.sft.base import load_base
from qfserve.sft.data import load_conversations
from qfserve.sft.encode import encode_all
from qfserve.sft.losses import mean_loss, perplexity


@dataclass(frozen=True)
class EvalResult:
    conversations: int
    target_tokens: int  # response tokens scored
    base_loss: float
    adapter_loss: float
    base_matches: bool  # the base file still hashes to what the adapter was trained on

    @property
    def base_perplexity(self) -> float:
        return perplexity(self.base_loss)

    @property
    def adapter_perplexity(self) -> float:
        return perplexity(self.adapter_loss)


def evaluate(adapter_dir: str, data_path: str, threads: int | None = None) -> EvalResult:
    """Scores `data_path` (all of it: pass held-out data) with and without the adapter."""
    from peft import PeftModel

    conversations = load_conversations(data_path)
    info = manifest_io.load_manifest(adapter_dir)
    base_path = info["base"]["path"]
    base_matches = manifest_io.base_hash(base_path) == info["base"]["sha256"]
    hyper = info["hyperparameters"]

    loaded = load_base(base_path)
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = encode_all(tokenizer, conversations, hyper["max_length"])
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5: not ours
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = PeftModel.from_pretrained(loaded.model, str(Path(adapter_dir, manifest_io.PEFT_DIR_NAME)))
    model.eval()

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or hyper.get("threads") or previous_threads)
    try:
        adapter_loss = mean_loss(model, examples, pad_id)
        with model.disable_adapter():
            base_loss = mean_loss(model, examples, pad_id)
    finally:
        torch.set_num_threads(previous_threads)
    return EvalResult(
        conversations=len(examples),
        target_tokens=sum(e.n_target_tokens for e in examples),
        base_loss=base_loss,
        adapter_loss=adapter_loss,
        base_matches=base_matches,
    )
