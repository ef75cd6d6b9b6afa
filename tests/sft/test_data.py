"""Validation of Qianfan prompt+response JSONL: every bad line is reported with its number."""

from __future__ import annotations

import json

import pytest

from qfserve.sft.data import DataError, load_conversations


def write_lines(tmp_path, lines: list[str | bytes]):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines))
    return path


def turn(prompt="hi", response="hello", **extra):
    return {"prompt": prompt, "response": [[response]], **extra}


def test_valid_file_multi_turn_and_system(tmp_path):
    path = write_lines(tmp_path, [
        json.dumps([turn("你是谁", "我是小岚", system="你是助手")], ensure_ascii=False),
        "",  # blank lines are skipped, not errors
        json.dumps([turn("a", "b"), turn("c", "d")]),
    ])
    first, second = load_conversations(path)
    assert first.line == 1 and first.system == "你是助手"
    assert first.messages() == [
        {"role": "system", "content": "你是助手"},
        {"role": "user", "content": "你是谁"},
        {"role": "assistant", "content": "我是小岚"},
    ]
    assert second.line == 3 and second.system is None and len(second.turns) == 2


def test_every_bad_line_reported_with_number_and_reason(tmp_path):
    path = write_lines(tmp_path, [
        json.dumps([turn()]),                                            # 1 ok
        "{not json",                                                     # 2
        json.dumps({"prompt": "a", "response": [["b"]]}),                # 3 object, not array
        json.dumps([]),                                                  # 4 empty
        json.dumps([{"prompt": "a"}]),                                   # 5 no response
        json.dumps([{"prompt": "a", "response": "b"}]),                  # 6 wrong response shape
        json.dumps([{"prompt": "a", "response": [["b"], ["c"]]}]),       # 7 sorted format
        json.dumps([turn(), turn(system="late")]),                       # 8 system not first
        json.dumps([{"prompt": "", "response": [["b"]]}]),               # 9 empty prompt
        b'[{"prompt": "\xff", "response": [["b"]]}]',                    # 10 bad UTF-8
        json.dumps([turn(system=3)]),                                    # 11 system not a string
    ])
    with pytest.raises(DataError) as caught:
        load_conversations(path)
    problems = dict(caught.value.problems)
    assert sorted(problems) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert "not valid JSON" in problems[2]
    assert "JSON array" in problems[3]
    assert "at least one turn" in problems[4]
    assert '"response"' in problems[5] and '"response"' in problems[6]
    assert "2 candidates" in problems[7]
    assert "turn 2" in problems[8] and "first turn" in problems[8]
    assert '"prompt"' in problems[9]
    assert "UTF-8" in problems[10]
    assert '"system" must be a string' in problems[11]
    assert "line 7:" in str(caught.value)  # the message itself names the lines


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no conversations"):
        load_conversations(write_lines(tmp_path, ["", "  "]))


def test_bom_on_first_line_is_tolerated(tmp_path):
    path = write_lines(tmp_path, [b"\xef\xbb\xbf" + json.dumps([turn()]).encode()])
    assert len(load_conversations(path)) == 1


def test_cli_reports_bad_lines_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from qfserve.cli.sft import app

    path = write_lines(tmp_path, [json.dumps([turn()]), "oops"])
    result = CliRunner().invoke(app, ["train", "--data", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "line 2" in result.output
    assert not (tmp_path / "out").exists()
