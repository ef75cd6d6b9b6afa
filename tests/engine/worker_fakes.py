"""A worker with no model: a native layer that records each decode's sequence ids and a sampler
that always answers token 7. For tests of what the worker decides, not of what llama.cpp does."""

from qfserve.engine.base import GenerateRequest, SamplingParams
from qfserve.engine.llamacpp.kvpool import KVPool
from qfserve.engine.llamacpp.protocol import WorkerConfig
from qfserve.engine.llamacpp.text import StreamingText
from qfserve.engine.llamacpp.worker import EngineWorker, Sequence


class FakeNative:
    n_ctx_seq = 10_000
    n_vocab = 1000
    eog_ids = [0]

    def __init__(self):
        self.batches = []  # seq_ids of each decode

    def truncate(self, seq_id, keep):
        return True

    def copy_prefix(self, src, dst, length):
        return True

    def use_adapter(self, path):
        pass

    def decode(self, tokens, positions, seq_ids, logits):
        self.batches.append(list(seq_ids))
        return 0

    def is_eog(self, token):
        return False

    def piece(self, token):
        return b"a"


class FakeSampler:
    def sample(self, ctx, index):
        return 7

    def allow_eog(self):
        pass

    def free(self):
        pass


class FakeConn:
    """The pipe to the serving process: keeps what the worker sends."""

    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


def worker(n_slots: int = 8, **config) -> EngineWorker:
    config = WorkerConfig("unused.gguf", parallel=n_slots, kv_cells=n_slots * 1000, **config)
    w = EngineWorker(conn=FakeConn(), config=config)
    w.native = FakeNative()
    w.native.ctx = None
    w.pool = KVPool(n_slots * 1000, n_slots, w.native, shared=False)
    return w


def request(name: str, prompt: list[int]) -> GenerateRequest:
    return GenerateRequest(name, prompt, SamplingParams(max_tokens=10))


def run_on(w: EngineWorker, seq_id: int, name: str, prompt=(1, 2, 3)) -> Sequence:
    slot = w.pool.slots[seq_id]
    slot.busy = True
    w.pool.extend(slot, list(prompt))
    seq = Sequence(request(name, list(prompt)), slot, FakeSampler(), StreamingText(), pending=[], next_token=5)
    w.running[name] = seq
    return seq
