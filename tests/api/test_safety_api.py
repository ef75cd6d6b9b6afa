"""Moderation through the HTTP layer: every verdict field of the seed, sync and stream.

A scripted engine makes the output side deterministic (which text, split where); the real model's
output is moderated in tests/e2e/test_safety_e2e.py.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from fastapi.testclient import TestClient

from qfserve.api.app import create_app
from qfserve.config import load_settings
from qfserve.engine.base import FinishEvent, TokenEvent, TopLogprob
from qfserve.store import apps, services, tokens
from scripted import ScriptedEngineBase
from qfserve.store.db import Store

LEXICON = "badword\tdemo_latin\t1\nfoobar\tdemo_latin\t2\n违禁词甲\tdemo_ban\t3\n色情\tsexual\t2\n"


class ScriptedEngine(ScriptedEngineBase):
    """Emits `script`, a token per item: a piece, or (the token's own text, the text its event releases)
    to mimic text the engine holds back. Every token offers `alternatives` in its top_logprobs."""

    script: list = []
    alternatives: list[str] = []
    stop_after: str | None = None  # end as if this stop string had matched
    calls = 0

    def generate(self, request):
        ScriptedEngine.calls += 1
        return self._run(request)

    async def _run(self, request):
        for n, item in enumerate(self.script, 1):
            await asyncio.sleep(0)
            piece, text = item if isinstance(item, tuple) else (item, item)
            top = tuple(TopLogprob(t, -1.0 - i) for i, t in enumerate([piece, *self.alternatives]))
            yield TokenEvent(token_id=n, text=text, logprob=-1.0, top_logprobs=top, token_text=piece)
        yield FinishEvent("stop", len(request.prompt_tokens), len(self.script), matched_stop=self.stop_after)


@pytest.fixture
def client(tmp_path):
    (tmp_path / "deny.tsv").write_text(LEXICON)
    (tmp_path / "allow.txt").write_text("白色情人节\n")
    store = Store(tmp_path)
    creds = apps.create_app(store, "a")
    services.publish_service(store, "guarded", model="default", profile="ERNIE-Speed-8K")
    services.publish_service(store, "open", model="default", profile="ERNIE-Speed-8K", safety="off")
    token, _, _ = tokens.issue_token(store, creds.app)
    store.close()
    settings = load_settings(data_dir=tmp_path, safety_lexicon=[tmp_path / "deny.tsv"],
                             safety_allow=tmp_path / "allow.txt")
    ScriptedEngine.script, ScriptedEngine.calls = ["Fine", "."], 0
    ScriptedEngine.alternatives, ScriptedEngine.stop_after = [], None
    with TestClient(create_app(settings, engine_factory=ScriptedEngine)) as test_client:
        test_client.url = lambda path="guarded": f"/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{path}?access_token={token}"
        yield test_client


def ask(content, history=()):
    messages = []
    for question in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": "ok"}]
    return {"messages": messages + [{"role": "user", "content": content}]}


def stream(client, body, path="guarded"):
    text = client.post(client.url(path), json={**body, "stream": True}).text
    return [orjson.loads(line[6:]) for line in text.split("\n") if line]


def test_safe_input_has_no_flag(client):
    body = client.post(client.url(), json=ask("hello")).json()
    assert body["need_clear_history"] is False and "flag" not in body and "ban_round" not in body


def test_level_1_input_proceeds_with_flag_1(client):
    body = client.post(client.url(), json=ask("this has a badword in it")).json()
    assert body["flag"] == 1 and body["need_clear_history"] is False and body["result"] == "Fine."


def test_level_2_input_current_round(client):
    body = client.post(client.url(), json=ask("say f-o-o-b-a-r now")).json()
    assert (body["flag"], body["need_clear_history"], body["ban_round"]) == (2, True, -1)


def test_level_2_input_in_an_earlier_round(client):
    body = client.post(client.url(), json=ask("and now?", history=["hi", "ＦＯＯＢＡＲ please"])).json()
    assert (body["flag"], body["need_clear_history"], body["ban_round"]) == (2, True, 2)


def test_level_3_input_never_reaches_the_model(client):
    for as_stream in (False, True):
        if as_stream:
            chunks = stream(client, ask("违 禁 詞 甲"))
            assert len(chunks) == 1 and chunks[0]["is_end"] is True
            body = chunks[0]
        else:
            body = client.post(client.url(), json=ask("违禁词甲")).json()
        assert (body["result"], body["flag"], body["finish_reason"], body["need_clear_history"]) == \
               ("", 3, "content_filter", True)
        assert body["ban_round"] == -1 and body["usage"]["completion_tokens"] == 0
    assert ScriptedEngine.calls == 0


def test_allow_list_suppresses_the_inner_term(client):
    assert "flag" not in client.post(client.url(), json=ask("白色情人节快乐")).json()


def test_policy_off_skips_moderation(client):
    assert "flag" not in client.post(client.url("open"), json=ask("违禁词甲")).json()


def test_output_level_1_is_masked(client):
    ScriptedEngine.script = ["This is a bad", "word. More", " text."]
    body = client.post(client.url(), json=ask("hi")).json()
    assert body["result"] == "This is a *******. More text." and body["flag"] == 1
    chunks = stream(client, ask("hi"))
    assert "".join(c["result"] for c in chunks) == "This is a *******. More text."
    assert "badword" not in str(chunks) and chunks[-1]["flag"] == 1


def test_output_level_2_split_across_chunks_stops_and_is_never_sent(client):
    ScriptedEngine.script = ["Safe start. Then fo", "o", "bar and more.", " Never sent."]
    chunks = stream(client, ask("hi"))
    joined = "".join(c["result"] for c in chunks)
    assert "foo" not in joined and "Never" not in joined and joined.startswith("Safe start.")
    last = chunks[-1]
    assert last["is_end"] is True and last["finish_reason"] == "content_filter"
    # need_clear_history and ban_round describe the user's input; the hit was in the model's output.
    assert last["flag"] == 2 and last["need_clear_history"] is False and "ban_round" not in last


def test_output_level_3_sync_result_is_blank(client):
    ScriptedEngine.script = ["Okay. ", "违禁", "词甲", "!"]
    body = client.post(client.url(), json=ask("hi")).json()
    assert body["result"] == "" and body["flag"] == 3 and body["finish_reason"] == "content_filter"


# ---- logprobs never show what moderation hid (issue 10 §1) ------------------------------------

def with_logprobs(body, top=3):
    return {**body, "logprobs": True, "top_logprobs": top}


def streamed_logprobs(chunks):
    return [entry for c in chunks for entry in c.get("logprobs", {}).get("content", [])]


def test_logprobs_of_a_masked_term_are_masked_sync_and_stream(client):
    ScriptedEngine.script = ["This is a bad", "word", ". More", " text."]
    for entries in (client.post(client.url(), json=with_logprobs(ask("hi"))).json()["logprobs"]["content"],
                    streamed_logprobs(stream(client, with_logprobs(ask("hi"))))):
        assert "badword" not in str(entries) and "bad" not in str(entries) and "word" not in str(entries)
        assert [e["token"] for e in entries] == ["This is a ***", "****", ". More", " text."]
        # The alternatives at a masked position would reveal the term: masked too.
        assert entries[1]["top_logprobs"][0]["token"] == "****"


def test_no_logprobs_past_an_output_stop(client):
    ScriptedEngine.script = ["Safe start. ", "Then ", "fo", "o", "bar and more.", " Never sent."]
    for entries in (client.post(client.url(), json=with_logprobs(ask("hi"))).json()["logprobs"]["content"],
                    streamed_logprobs(stream(client, with_logprobs(ask("hi"))))):
        assert [e["token"] for e in entries] == ["Safe start. ", "Then "]


def test_flag_3_sync_answer_has_no_logprobs(client):
    ScriptedEngine.script = ["Okay. ", "违禁", "词甲", "!"]
    body = client.post(client.url(), json=with_logprobs(ask("hi"))).json()
    assert body["flag"] == 3 and body["result"] == "" and "logprobs" not in body


def test_an_alternative_holding_a_deny_term_is_masked(client):
    ScriptedEngine.script = ["Then ", "foo", " and ", "more."]
    ScriptedEngine.alternatives = [" badword", "bar", "fine"]
    entries = client.post(client.url(), json=with_logprobs(ask("hi"), top=4)).json()["logprobs"]["content"]
    alts = [[t["token"] for t in e["top_logprobs"]] for e in entries]
    assert all(a[1] == "********" and a[3] == "fine" for a in alts)  # " badword" masked everywhere
    # "bar" right after "foo" would spell the level-2 term: masked there, and only there.
    assert alts[1][2] == "bar" and alts[2][2] == "***" and alts[0][2] == alts[3][2] == "bar"


def test_no_logprobs_for_the_tokens_of_a_stop_string(client):
    # The engine holds back "EN" (it could start the stop string "END"), then matches it: those
    # tokens' text never reaches the answer, and neither do their logprobs.
    ScriptedEngine.script = ["Hello", (" E", " "), ("ND", "")]
    ScriptedEngine.stop_after = "END"
    body = client.post(client.url("open"), json=with_logprobs(ask("hi"))).json()
    assert body["result"] == "Hello " and body["finish_reason"] == "stop"
    assert [e["token"] for e in body["logprobs"]["content"]] == ["Hello", " E"]
