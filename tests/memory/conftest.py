import pytest

from qfserve.memory import MemoryManager
from qfserve.store.apps import create_app
from qfserve.store.db import Store

SERVICE = "/chat/helper"


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path)
    yield store
    store.close()


@pytest.fixture
def apps(store):
    """Two apps, so tests can check that one never sees the other's users."""
    return create_app(store, "app-a").app, create_app(store, "app-b").app


@pytest.fixture
def manager(store):
    return MemoryManager(store)


async def say(manager, app, text, *, user="u1", service=SERVICE, level=1, request_id="as-test000001", **kw):
    """One answered user turn, extracted as the chat layer would after the response."""
    return await manager.extract(
        app_id=app.id, api_path=service, user_id=user, request_id=request_id,
        messages=[("user", text)], answer="好的。", level=level, **kw,
    )
