"""Checks made when a service is published on a remote engine pool (issue 11): every replica that
answers must serve the model (or take the adapter), and a one-token answer must come back from each.
Unreachable replicas are reported, not refused (one may be down for maintenance); at least one must
answer."""

from __future__ import annotations

import dataclasses

from qfserve.engine.base import EnginePromptTooLong, EngineUnavailable, GenerateRequest, SamplingParams


class RemoteServiceError(ValueError):
    pass


async def check_remote_service(row, model: str, adapter_dir: str | None) -> list[str]:
    """Notes on each replica; raises RemoteServiceError when the service could not be served."""
    from qfserve.engine.openai_compat import AdapterRefused, ReplicaFailure
    from qfserve.engine.openai_compat.adapters import ensure_adapter
    from qfserve.services.engines import remote_engine, replica_pool

    notes, answered = [], 0
    for url in row.urls:
        single = dataclasses.replace(row, urls=(url,))
        pool = replica_pool(single)
        replica = pool.replicas[0]
        try:
            engine = remote_engine(pool, model, adapter_dir, single)
            served = await pool.models(replica)
            if engine.adapter is not None:
                how = await ensure_adapter(pool, replica, engine.adapter)
                notes.append(f"{url}: adapter {model} {how}")
            elif model not in served:
                raise RemoteServiceError(f"{url} does not serve {model!r} (it serves: {', '.join(sorted(map(str, served)))})")
            ids = await engine.chat_tokens([{"role": "user", "content": "hi"}], None)
            request = GenerateRequest("publish-check", ids, SamplingParams(max_tokens=1, temperature=0.1))
            async for _event in engine.generate(request):
                pass
            answered += 1
            notes.append(f"{url}: answers as {model} (context {engine.context_length} tokens)")
        except ReplicaFailure as failure:
            notes.append(f"{url}: unreachable ({failure.kind}); not checked")
        except AdapterRefused as refused:
            raise RemoteServiceError(str(refused)) from None
        except (EngineUnavailable, EnginePromptTooLong) as exc:
            if pool.admitted():
                raise RemoteServiceError(f"{url}: {exc}") from None
            notes.append(f"{url}: unreachable ({exc}); not checked")
        finally:
            await pool.close()
    if not answered:
        raise RemoteServiceError(f"no replica of engine {row.name!r} answered: start them, then publish again")
    return notes
