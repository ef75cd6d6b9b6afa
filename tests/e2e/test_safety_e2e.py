"""Moderation of the real model's streamed output, and a lexicon reloaded without a restart.

The model's answer is made deterministic with top_p 0 (only the most likely token survives), so a
lexicon term can be taken from its own answer: the guarded stream must stop right before it.
"""

from __future__ import annotations

import re
import time

import orjson
import requests
from conftest import cli, cli_json, start_server, stop_server

QUESTION = {"messages": [{"role": "user", "content": "Tell me about the city of Paris."}],
            "top_p": 0, "max_output_tokens": 64}


def test_streamed_output_stops_before_a_term_added_by_reload(tmp_path):
    lexicon = tmp_path / "deny.tsv"
    lexicon.write_text("zzplaceholderzz\tdemo\t2\n")
    creds = cli_json(tmp_path, "app", "create", "a")
    cli_json(tmp_path, "service", "publish", "open", "--safety", "off")
    cli_json(tmp_path, "service", "publish", "guarded")
    server = start_server(tmp_path, "--threads", "1", "--safety-lexicon", str(lexicon))
    try:
        server.creds = creds
        token = server.token()

        def post(api_path, body):
            return requests.post(server.chat_url(api_path), params={"access_token": token}, json=body, timeout=300)

        answer = post("open", QUESTION).json()["result"]
        words = re.findall(r"[A-Za-z]{6,}", answer)
        assert len(words) >= 2, answer
        term = words[len(words) // 2]  # a word from the middle of the answer, so some text comes first
        before = answer[: re.search(rf"\b{term}\b", answer, re.IGNORECASE).start()]

        lexicon.write_text(f"{term.lower()}\tdemo\t2\n")
        cli(tmp_path, "safety", "reload")
        probe = {"messages": [{"role": "user", "content": f"say {term}"}], "max_output_tokens": 2}
        deadline = time.monotonic() + 30
        while post("guarded", probe).json().get("flag") != 2:
            assert time.monotonic() < deadline, "the reloaded lexicon never took effect"
            time.sleep(0.2)

        text = post("guarded", {**QUESTION, "stream": True}).text
        chunks = [orjson.loads(line[6:]) for line in text.split("\n") if line]
        streamed = "".join(c["result"] for c in chunks)
        assert streamed and term.lower() not in streamed.lower()
        assert streamed == before.rstrip() or before.startswith(streamed), (streamed, before)
        last = chunks[-1]
        assert last["is_end"] is True and last["finish_reason"] == "content_filter"
        # The hit is in the model's output: flag 2, but the user's input was not unsafe.
        assert last["flag"] == 2 and last["need_clear_history"] is False and "ban_round" not in last
        assert post("open", QUESTION).json()["result"] == answer  # same answer where moderation is off
    finally:
        stop_server(server)
