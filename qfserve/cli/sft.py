"""`qfserve sft …`: fine-tune a LoRA adapter on Qianfan-format data, and evaluate it.

Training needs the `train` extra (torch, transformers, peft, gguf); it is imported only when a
command runs, so `qfserve --help` and the server stay light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qfserve.cli.common import JsonFlag, console, fail, print_json
from qfserve.sft.config import TrainConfig

DEFAULTS = TrainConfig()  # one source of truth for the defaults, shown by --help

app = typer.Typer(
    help="Fine-tune a LoRA adapter on Qianfan prompt+response JSONL, and evaluate it.",
    no_args_is_help=True,
)

DataFile = Annotated[
    Path,
    typer.Option(
        "--data", exists=True, dir_okay=False, readable=True,
        help='JSONL, one conversation per line: [{"prompt": "…", "response": [["…"]]}, …]. '
        'Optional "system" on the first turn.',
    ),
]


def _check_before_torch(data: Path, base: str | None = None) -> None:
    """Bad data or a missing base fail here, in a fraction of a second: importing torch and
    transformers alone takes seconds."""
    from qfserve.sft.base import resolve_base
    from qfserve.sft.data import DataError, load_conversations

    try:
        load_conversations(data)
        if base is not None:
            resolve_base(base)
    except (DataError, FileNotFoundError) as exc:
        fail(str(exc))


def _import_training():
    try:
        from qfserve.sft import train as train_module
    except ImportError as exc:
        fail(f"training needs the train extra (pip install -e '.[train]'): {exc}")
    return train_module


@app.command()
def train(
    data: DataFile,
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder for the adapter and its manifest.")],
    base: Annotated[str, typer.Option("--base", help='"default" (the embedded SmolLM2 GGUF), a .gguf file, '
                                      "or a Hugging Face model folder.")] = "default",
    epochs: Annotated[int, typer.Option(min=1)] = DEFAULTS.epochs,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=0.0)] = DEFAULTS.learning_rate,
    lora_rank: Annotated[int, typer.Option("--lora-rank", min=1)] = DEFAULTS.lora_rank,
    lora_alpha: Annotated[float, typer.Option("--lora-alpha", min=0.0)] = DEFAULTS.lora_alpha,
    max_length: Annotated[int, typer.Option("--max-length", min=8, help="Tokens per conversation; longer ones are cut.")] = DEFAULTS.max_length,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = DEFAULTS.batch_size,
    seed: Annotated[int, typer.Option(help="Same seed, data, base and threads → bit-identical adapter.")] = DEFAULTS.seed,
    eval_split: Annotated[float, typer.Option("--eval-split", min=0.0, max=0.9,
                                              help="Fraction of conversations held out for the eval loss.")] = DEFAULTS.eval_split,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads. Bit-identical results need the same count; "
                                         "more than 1 only pays off on idle cores.")] = DEFAULTS.threads,
    as_json: JsonFlag = False,
) -> None:
    """Train a LoRA adapter; writes adapter.gguf (llama.cpp), peft/ (vLLM), manifest.json, train_log.jsonl."""
    _check_before_torch(data, base)
    train_module = _import_training()
    from qfserve.sft.data import DataError

    config = train_module.TrainConfig(
        epochs=epochs, learning_rate=learning_rate, lora_rank=lora_rank, lora_alpha=lora_alpha,
        max_length=max_length, batch_size=batch_size, seed=seed, eval_split=eval_split, threads=threads,
    )
    try:
        result = train_module.train(str(data), base, str(out), config, console=None if as_json else console)
    except DataError as exc:
        fail(str(exc))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        print_json(result)
        return
    r = result["result"]
    console.print(f"[green]adapter written to {out}[/] ({r['steps']} steps, {r['seconds']} s)")
    table = Table("", "loss", "perplexity")
    table.add_row("train (adapter)", _fmt(r["train_loss"]), "")
    table.add_row("eval, base", _fmt(r["base_eval_loss"]), _fmt(r["base_eval_perplexity"]))
    table.add_row("eval, adapter", _fmt(r["eval_loss"]), _fmt(r["eval_perplexity"]))
    console.print(table)


@app.command("eval")
def eval_command(
    adapter_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="A `sft train --out` folder.")],
    data: DataFile,
    as_json: JsonFlag = False,
) -> None:
    """Held-out loss and perplexity of the base model and of base + adapter, side by side."""
    _check_before_torch(data)
    _import_training()
    from qfserve.sft.data import DataError
    from qfserve.sft.evaluate import evaluate

    try:
        result = evaluate(str(adapter_dir), str(data))
    except DataError as exc:
        fail(str(exc))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if not result.base_matches:
        console.print("[yellow]warning: the base model file changed since this adapter was trained")
    if as_json:
        print_json({
            "conversations": result.conversations, "target_tokens": result.target_tokens,
            "base": {"loss": result.base_loss, "perplexity": result.base_perplexity},
            "adapter": {"loss": result.adapter_loss, "perplexity": result.adapter_perplexity},
            "base_matches": result.base_matches,
        })
        return
    table = Table(title=f"{data.name}: {result.conversations} conversations, "
                        f"{result.target_tokens} response tokens")
    table.add_column("")
    table.add_column("base", justify="right")
    table.add_column("base + adapter", justify="right")
    table.add_row("loss", _fmt(result.base_loss), _fmt(result.adapter_loss))
    table.add_row("perplexity", _fmt(result.base_perplexity), _fmt(result.adapter_perplexity))
    console.print(table)


def _fmt(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.4f}"
