"""Long-term memory about each app's end users (the chat body's enable_user_memory / user_id).

Before generation, `MemoryManager.recall` picks the user's memories most relevant to the question
(BM25 over jieba tokens; how many and how strict by `user_memory_level`, table in `recall.py`) and
`prompt_block` renders them with `user_setting` into a delimited block for the system prompt. After
the answer is sent, `extract` runs as a background task: level 1 by rules (`rules_zh`, `rules_en`),
level 2 also by the service's model (`model_extract`), never from a turn rated unsafe. Memories are
stored per (app, service, user) by `qfserve.store.memories`; a newer value supersedes an older one,
which is kept.
"""

from qfserve.memory.manager import MemoryManager
from qfserve.store.memories import Memory

__all__ = ["Memory", "MemoryManager"]
