"""LoRA supervised fine-tuning on CPU: PyTorch + transformers + PEFT.

`train()` validates the data, loads the base, trains, and writes into the output folder:
`adapter.gguf` (llama.cpp), `peft/` (vLLM / PEFT), `train_log.jsonl` (one line per step),
`manifest.json` (base + data hashes, hyper-parameters, losses).

Reproducibility: the same data, base, config and thread count give a bit-identical adapter.
Every source of randomness (LoRA init, split, shuffling) is seeded, deterministic algorithms are
enforced, and the thread count is fixed because a CPU matmul's summation order depends on it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from qfserve.sft import export, manifest
from qfserve.sft.base import load_base, resolve_base
from qfserve.sft.config import TrainConfig
from qfserve.sft.data import load_conversations
from qfserve.sft.encode import Example, encode_all
from qfserve.sft.losses import collate, mean_loss, perplexity, summed_loss

def split_examples(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Seeded shuffle, then the first `fraction` (at least one, never all) is held out."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError("eval split must be in [0, 1)")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = 0 if fraction == 0 or len(examples) < 2 else max(1, round(fraction * len(examples)))
    n_eval = min(n_eval, len(examples) - 1)
    held_out = sorted(order[:n_eval])
    kept = sorted(order[n_eval:])
    return [examples[i] for i in kept], [examples[i] for i in held_out]


@contextlib.contextmanager
def deterministic(seed: int, threads: int):
    """Seeds torch and pins threads / algorithms for the duration, then restores them."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("running loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
    )


def _run_epochs(model, train_set, config, pad_id, log_path: Path, console) -> tuple[list[float], float]:
    """The training loop proper; returns the loss of every step and the token-weighted mean loss
    of the last epoch (reported as the train loss: a separate pass over the data would cost a
    third of an epoch for a number that is nearly the same)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    steps_per_epoch = -(-len(train_set) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    # Linear decay to zero: large early steps on a small data set, settling at the end.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / total_steps)
    losses: list[float] = []
    epoch_loss_sum, epoch_tokens = 0.0, 0
    model.train()
    with open(log_path, "w", encoding="utf-8") as log, _progress(console) as progress:
        task = progress.add_task("train", total=total_steps, epoch=1, loss=float("nan"))
        for epoch in range(config.epochs):
            order = list(range(len(train_set)))
            random.Random(config.seed + epoch).shuffle(order)
            epoch_loss_sum, epoch_tokens = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                batch = collate([train_set[i] for i in order[start : start + config.batch_size]], pad_id)
                loss_sum, n_tokens = summed_loss(model, batch)
                loss = loss_sum / n_tokens
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                epoch_loss_sum += loss_sum.item()
                epoch_tokens += n_tokens
                record = {"step": len(losses), "epoch": epoch + 1, "loss": round(losses[-1], 6),
                          "lr": scheduler.get_last_lr()[0], "tokens": n_tokens, "total_steps": total_steps}
                log.write(json.dumps(record) + "\n")
                log.flush()  # read live by the console's loss chart
                # The bar shows this epoch's running mean: single steps are too noisy to read.
                running = epoch_loss_sum / epoch_tokens
                progress.update(task, advance=1, epoch=epoch + 1, loss=running)
    model.eval()
    return losses, epoch_loss_sum / epoch_tokens


def _number(value: float) -> float | None:
    """JSON has no NaN: a loss over an empty set (no eval split) is recorded as null."""
    return value if math.isfinite(value) else None


def train(
    data_path: str,
    base: str,
    out_dir: str,
    config: TrainConfig | None = None,
    console=None,
) -> dict:
    """Trains an adapter into `out_dir` and returns its manifest. `console`: a rich Console for
    progress output, or None for silence."""
    from peft import LoraConfig, get_peft_model

    config = config or TrainConfig()
    say = (lambda text: console.print(text, soft_wrap=True)) if console is not None else (lambda text: None)
    conversations = load_conversations(data_path)  # raises DataError before any heavy work
    base_path = resolve_base(base)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The manifest is written last and marks the folder complete; a rerun into the same folder
    # first removes the old one, so a crash never leaves an old manifest over new files.
    (out / manifest.MANIFEST_NAME).unlink(missing_ok=True)
    started = time.monotonic()

    say(f"base {base_path}")
    loaded = load_base(base_path)
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = encode_all(tokenizer, conversations, config.max_length)
    if not examples:
        raise ValueError(f"no conversation keeps a response token within --max-length {config.max_length}")
    n_truncated = sum(e.truncated for e in examples)
    n_dropped = len(conversations) - len(examples)  # cut before their first response token
    train_set, eval_set = split_examples(examples, config.eval_split, config.seed)
    say(f"{len(train_set)} train / {len(eval_set)} eval conversations"
        + (f", {n_truncated} truncated to {config.max_length} tokens" if n_truncated else "")
        + (f", {n_dropped} dropped (no response within {config.max_length} tokens)" if n_dropped else ""))

    with deterministic(config.seed, config.threads), warnings.catch_warnings():
        # Noise from library internals, not about the user's run: PEFT calls a transformers API
        # deprecated in v5.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        base_eval_loss = mean_loss(loaded.model, eval_set, pad_id)
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules=config.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(loaded.model, lora)  # LoRA A is initialised from the torch seed
        losses, train_loss = _run_epochs(
            model, train_set, config, pad_id, out / manifest.TRAIN_LOG_NAME, console
        )
        eval_loss = mean_loss(model, eval_set, pad_id)
    seconds = time.monotonic() - started

    export.write_peft_folder(model, str(out / manifest.PEFT_DIR_NAME), base_path)
    arch = export.gguf_architecture(loaded.architecture)
    files = {"peft": manifest.PEFT_DIR_NAME, "gguf": None, "train_log": manifest.TRAIN_LOG_NAME}
    try:
        export.write_adapter_gguf(model, arch, config.lora_alpha, str(out / manifest.ADAPTER_GGUF_NAME))
        files["gguf"] = manifest.ADAPTER_GGUF_NAME
    except ValueError as exc:  # unsupported architecture: the PEFT export is still usable
        (out / manifest.ADAPTER_GGUF_NAME).unlink(missing_ok=True)  # never a stale one from a rerun
        say(f"[yellow]no llama.cpp adapter written: {exc}")

    result = {
        "base": {"path": base_path, "sha256": manifest.base_hash(base_path), "architecture": arch},
        "data": {
            "path": os.path.abspath(data_path),
            "sha256": manifest.file_sha256(data_path),
            "conversations": len(conversations),
            "train_lines": [e.line for e in train_set],
            "eval_lines": [e.line for e in eval_set],
            "truncated": n_truncated,
            "dropped": n_dropped,
        },
        # Conversations without a `system` were rendered with whatever the base template puts in
        # its place (SmolLM2's default persona): the server renders a caller's system-less request
        # the same way only when the adapter learned it so (qfserve.services.adapters).
        "prompt": {"default_system": any(c.system is None for c in conversations)},
        "hyperparameters": asdict(config),
        "result": {
            "steps": len(losses),
            "final_step_loss": losses[-1],
            "train_loss": _number(train_loss),  # last epoch, while training
            "eval_loss": _number(eval_loss),
            "eval_perplexity": _number(perplexity(eval_loss)),
            "base_eval_loss": _number(base_eval_loss),
            "base_eval_perplexity": _number(perplexity(base_eval_loss)),
            "seconds": round(seconds, 1),
        },
        "files": files,
    }
    manifest.write_manifest(out, result)
    _same_mode_everywhere(out)
    return manifest.load_manifest(out)


def _same_mode_everywhere(folder: Path) -> None:
    """Every output file gets the mode a new file gets here (0644 under the usual umask):
    safetensors writes its file 0600 while the rest follow the umask."""
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask
    ours = [folder / manifest.MANIFEST_NAME, folder / manifest.TRAIN_LOG_NAME, folder / manifest.ADAPTER_GGUF_NAME,
            *(folder / manifest.PEFT_DIR_NAME).glob("*")]
    for path in ours:
        if path.is_file():
            os.chmod(path, mode)
