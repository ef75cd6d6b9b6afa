"""Qianfan SFT data: "prompt + response, non-sorted" JSONL (spec qianfan-wire.md §5).

One conversation per line, a JSON array of turns::

    [{"system": "You are …", "prompt": "Hi", "response": [["Hello!"]]},
     {"prompt": "Who are you?", "response": [["I am …"]]}]

- `prompt` and `response` are required on every turn; `response` is a list holding one candidate
  list holding one string (`[["…"]]`). Several candidates (`[["a"], ["b"]]`) are Qianfan's *sorted*
  format for preference training, which SFT cannot use, so they are rejected rather than guessed at.
- `system` is optional and allowed only on the first turn (where Qianfan's own exports put it):
  it applies to the whole conversation. Without it the base model's chat template decides.
- Blank lines are skipped. Unknown keys are ignored, so exports with extra fields still load.

The whole file is validated before any training starts; every bad line is reported with its
1-based line number and the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Turn:
    prompt: str
    response: str


@dataclass(frozen=True)
class Conversation:
    line: int  # 1-based line number in the source file, for messages and the eval split record
    turns: tuple[Turn, ...]
    system: str | None = None

    def messages(self) -> list[dict[str, str]]:
        """OpenAI-style messages for a chat template."""
        out = [{"role": "system", "content": self.system}] if self.system is not None else []
        for turn in self.turns:
            out.append({"role": "user", "content": turn.prompt})
            out.append({"role": "assistant", "content": turn.response})
        return out


class DataError(ValueError):
    """A data file with bad lines; `problems` holds (line number, reason) for each."""

    def __init__(self, path: str, problems: list[tuple[int, str]]) -> None:
        self.path = path
        self.problems = problems
        shown = "\n".join(f"  line {n}: {reason}" for n, reason in problems[:50])
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{path}: {len(problems)} bad line(s)\n{shown}{more}")


def _parse_turn(index: int, turn: object) -> tuple[Turn, str | None]:
    """One turn object → (Turn, its system text); raises ValueError with the reason."""
    where = f"turn {index + 1}"
    if not isinstance(turn, dict):
        raise ValueError(f"{where}: expected an object, got {type(turn).__name__}")
    prompt = turn.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f'{where}: "prompt" must be a non-empty string')
    response = turn.get("response")
    if not (isinstance(response, list) and response and isinstance(response[0], list)):
        raise ValueError(f'{where}: "response" must look like [["answer"]]')
    if len(response) != 1:
        raise ValueError(
            f'{where}: "response" has {len(response)} candidates; SFT takes exactly one '
            "(several candidates is the sorted format for preference training)"
        )
    candidate = response[0]
    if len(candidate) != 1 or not isinstance(candidate[0], str) or not candidate[0].strip():
        raise ValueError(f'{where}: "response" must hold exactly one non-empty string: [["answer"]]')
    system = turn.get("system")
    if system is not None:
        if index != 0:
            raise ValueError(f'{where}: "system" is only allowed on the first turn')
        if not isinstance(system, str):
            raise ValueError(f'{where}: "system" must be a string')
    return Turn(prompt=prompt, response=candidate[0]), system


def parse_line(text: str, line: int) -> Conversation:
    """One JSONL line → Conversation; raises ValueError with a human-readable reason."""
    try:
        # Without its line ending: an error at the end of the line is at its last column, not at
        # column 1 of a "next line".
        value = json.loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, list):
        raise ValueError(f"expected a JSON array of turns, got {type(value).__name__}")
    if not value:
        raise ValueError("empty array: a conversation needs at least one turn")
    turns = []
    system = None
    for index, raw in enumerate(value):
        turn, turn_system = _parse_turn(index, raw)
        turns.append(turn)
        system = turn_system if index == 0 else system
    return Conversation(line=line, turns=tuple(turns), system=system)


def load_conversations(path: str | Path) -> list[Conversation]:
    """Reads and validates the whole file; raises DataError listing every bad line."""
    conversations: list[Conversation] = []
    problems: list[tuple[int, str]] = []
    # Bytes, decoded line by line, so bad UTF-8 is reported with its line like any other problem.
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                # utf-8-sig on line 1 tolerates the BOM some Windows editors write.
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                if text.strip():
                    conversations.append(parse_line(text, number))
            except UnicodeDecodeError as exc:
                problems.append((number, f"not valid UTF-8 (byte {exc.start + 1})"))
            except ValueError as exc:
                problems.append((number, str(exc)))
    if not conversations and not problems:
        problems.append((0, "the file holds no conversations"))
    if problems:
        raise DataError(str(path), problems)
    return conversations
