"""Training hyper-parameters, in a module without torch so the CLI can show the defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

# Every linear layer of the decoder blocks (lm_head and embeddings stay frozen: the base ties them
# and llama.cpp refuses an adapter on a tied lm_head).
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    epochs: int = 3
    # Higher than the 1e-4..2e-4 usual for LoRA on 7B models: a 135M base on a small data set
    # barely moves at those rates within the few hundred steps a CPU affords (measured on
    # persona.jsonl, 3 epochs, 18 steps: held-out loss 4.01 → 2.63 at 2e-4, → 0.22 at 1e-3).
    learning_rate: float = 1e-3
    lora_rank: int = 8
    lora_alpha: float = 16.0
    max_length: int = 512
    batch_size: int = 4
    seed: int = 42
    eval_split: float = 0.1  # fraction of conversations held out for the eval loss
    # Fixed, not "all cores": results are bit-identical only for equal thread counts. One thread
    # is also the fastest on a shared 2-core machine: with two, every op waits on the slower thread
    # (measured 2.0 s vs 11.4 s per forward+backward of 4×64 tokens under load).
    threads: int = 1
    target_modules: list[str] = field(default_factory=lambda: list(TARGET_MODULES))
