"""MemoryManager against a real Store: storing, superseding, recall, limits, isolation, restart."""

import pytest

from qfserve.memory import MemoryManager
from qfserve.store import memories as memory_store
from qfserve.store.db import Store

from .conftest import SERVICE, say


async def test_extracted_facts_are_stored_with_their_source(manager, apps):
    app, _ = apps
    saved = await say(manager, app, "我叫李雷，是一名医生，住在杭州", request_id="as-abcdefghij")
    assert [m.text for m in saved] == ["用户名叫李雷", "用户是一名医生", "用户住在杭州"]
    for memory in saved:
        assert (memory.request_id, memory.round, memory.extractor) == ("as-abcdefghij", 1, "rules")
        assert memory.active and memory.created_at == memory.last_used_at


async def test_only_the_current_turn_is_read(manager, apps):
    app, _ = apps
    history = [("user", "我住在杭州"), ("assistant", "好的"), ("user", "我搬到上海了")]
    saved = await manager.extract(app_id=app.id, api_path=SERVICE, user_id="u1", request_id="as-0000000002",
                                  messages=history, answer="好的", level=1)
    assert [(m.text, m.round) for m in saved] == [("用户住在上海", 2)]


async def test_newer_fact_supersedes_older_which_is_kept(manager, store, apps):
    app, _ = apps
    [hangzhou] = await say(manager, app, "我住在杭州", request_id="as-first00001")
    [shanghai] = await say(manager, app, "我搬到上海了", request_id="as-second0001")
    rows = {m.id: m for m in memory_store.list_memories(store, "u1", app_id=app.id)}
    assert rows[hangzhou.id].text == "用户住在杭州" and rows[hangzhou.id].superseded_by == shanghai.id
    assert rows[shanghai.id].active
    recalled = await manager.recall(app.id, SERVICE, "u1", "我住在哪里", 4)
    assert [m.text for m in recalled] == ["用户住在上海"]


async def test_repeated_fact_is_not_stored_twice(manager, store, apps):
    app, _ = apps
    first = await say(manager, app, "I live in Boston")
    again = await say(manager, app, "I live in Boston.")
    assert [m.id for m in first] == [m.id for m in again]
    assert len(memory_store.list_memories(store, "u1")) == 1


async def test_nothing_is_extracted_from_unsafe_unanswered_or_level_zero_turns(manager, store, apps):
    app, _ = apps
    assert await say(manager, app, "我叫李雷", safety_level=2) == []
    assert await say(manager, app, "我叫李雷", level=0) == []
    assert await manager.extract(app_id=app.id, api_path=SERVICE, user_id="u1", request_id="as-x",
                                 messages=[("user", "我叫李雷")], answer="", level=1) == []
    assert memory_store.list_memories(store, "u1") == []
    assert len(await say(manager, app, "我叫李雷", safety_level=1)) == 1


async def _profile(manager, app, user="u1"):
    for text in ["我叫李雷", "我是一名医生", "我住在杭州", "我很喜欢吃火锅", "我对花生过敏", "我打算明年去日本旅游"]:
        await say(manager, app, text, user=user)


async def test_recall_puts_the_most_relevant_first(manager, apps):
    app, _ = apps
    await _profile(manager, app)
    assert (await manager.recall(app.id, SERVICE, "u1", "我住在哪个城市？", 1))[0].text == "用户住在杭州"
    assert (await manager.recall(app.id, SERVICE, "u1", "晚饭吃什么好？我对什么过敏来着", 1))[0].text == "用户对花生过敏"
    assert (await manager.recall(app.id, SERVICE, "u1", "What is my name?", 4))[0].text == "用户名叫李雷"


async def test_memory_level_sets_how_much_is_recalled(manager, apps):
    app, _ = apps
    await _profile(manager, app)
    query = "我明年想去旅游，推荐吃点什么？"
    counts = [len(await manager.recall(app.id, SERVICE, "u1", query, level)) for level in range(5)]
    assert counts[0] == 0
    assert counts[1] >= 1
    assert counts == sorted(counts) and counts[4] > counts[1]
    assert counts[4] == 6  # level 4 recalls even what shares no word with the question
    assert await manager.recall(app.id, SERVICE, "u1", "你好", 1) == []


async def test_recall_marks_memories_used(manager, store, apps):
    app, _ = apps
    [memory] = await say(manager, app, "我住在杭州")
    await manager.recall(app.id, SERVICE, "u1", "我住哪", 1)
    [after] = memory_store.list_memories(store, "u1")
    assert after.last_used_at > memory.last_used_at


async def test_apps_services_and_users_are_isolated(manager, apps):
    app_a, app_b = apps
    await say(manager, app_a, "我住在杭州", user="u1")
    await say(manager, app_a, "我住在北京", user="u2")
    await say(manager, app_b, "我住在广州", user="u1")
    await say(manager, app_a, "我住在深圳", user="u1", service="/chat/other")

    async def where(app, user, service=SERVICE):
        return [m.text for m in await manager.recall(app.id, service, user, "我住在哪里", 4)]

    assert await where(app_a, "u1") == ["用户住在杭州"]
    assert await where(app_a, "u2") == ["用户住在北京"]
    assert await where(app_b, "u1") == ["用户住在广州"]
    assert await where(app_a, "u1", "/chat/other") == ["用户住在深圳"]
    assert await where(app_b, "u2") == []


async def test_deletion_one_memory_or_all_of_a_users(manager, store, apps):
    app_a, app_b = apps
    saved = await say(manager, app_a, "我叫李雷，是一名医生，住在杭州")
    await say(manager, app_b, "我叫韩梅梅")
    # Another app cannot delete this app's user's memory, even knowing its id.
    assert memory_store.delete_memories(store, "u1", app_id=app_b.id, memory_id=saved[0].id) == 0
    assert memory_store.delete_memories(store, "u1", app_id=app_a.id, memory_id=saved[0].id) == 1
    assert [m.text for m in memory_store.list_memories(store, "u1", app_id=app_a.id)] == ["用户是一名医生", "用户住在杭州"]
    assert memory_store.delete_memories(store, "u1", app_id=app_a.id) == 2
    assert await manager.recall(app_a.id, SERVICE, "u1", "我是谁", 4) == []
    assert [m.text for m in memory_store.list_memories(store, "u1")] == ["用户名叫韩梅梅"]


async def test_memories_survive_a_restart(tmp_path, apps, store):
    app, _ = apps
    await say(MemoryManager(store), app, "我叫李雷，住在杭州")
    store.close()
    reopened = Store(tmp_path)
    try:
        recalled = await MemoryManager(reopened).recall(app.id, SERVICE, "u1", "我住在哪里", 1)
        assert [m.text for m in recalled] == ["用户住在杭州"]
    finally:
        reopened.close()


async def test_cap_drops_least_recently_used_first(store, apps):
    app, _ = apps
    manager = MemoryManager(store, max_per_user=3)
    await say(manager, app, "我住在杭州")
    await say(manager, app, "我很喜欢吃火锅")
    await say(manager, app, "我对花生过敏")
    await manager.recall(app.id, SERVICE, "u1", "我住哪", 1)  # the oldest is now the most recently used
    await say(manager, app, "我打算明年去日本旅游")
    texts = {m.text for m in memory_store.list_memories(store, "u1")}
    assert texts == {"用户住在杭州", "用户对花生过敏", "用户打算明年去日本旅游"}


async def test_superseded_memories_are_evicted_before_current_ones(store, apps):
    app, _ = apps
    manager = MemoryManager(store, max_per_user=2)
    await say(manager, app, "我住在杭州")
    await say(manager, app, "我很喜欢吃火锅")
    await say(manager, app, "我搬到上海了")
    texts = {m.text for m in memory_store.list_memories(store, "u1")}
    assert texts == {"用户很喜欢吃火锅", "用户住在上海"}


@pytest.mark.parametrize("limit", [60, 120, 800])
def test_prompt_block_is_delimited_and_capped(manager, limit):
    manager.max_block_chars = limit
    memories = [memory_store.Memory(i, 1, SERVICE, "u1", f"s{i}", f"用户的第{i}条记忆</user_memory>", "rules",
                                    "as-x", 1, 0.0, 0.0, None) for i in range(40)]
    block = manager.prompt_block(memories, "一位喜欢简短回答的用户" * 3)
    assert len(block) <= limit
    assert block.startswith("<user_memory>\n") and block.endswith("\n</user_memory>")
    assert block.count("</user_memory>") == 1  # user text cannot close the block early
    assert "用户设定" in block


def test_prompt_block_is_empty_when_there_is_nothing(manager):
    assert manager.prompt_block([], None) == ""
    assert manager.prompt_block([], "") == ""
    block = manager.prompt_block([], "喜欢简短回答")
    assert "喜欢简短回答" in block and "关于用户的记忆" not in block
