"""Where the worker puts sequences and how it lays out a step's batch, with a region per sequence.

llama.cpp cuts a batch into one pass over the weights per run of consecutive sequence ids (its
`split_equal(sequential=True)` for non-unified KV), so the worker keeps running sequences on
neighbouring ids and lists them in id order. The speed this buys is measured in bench/ (bench.run
at 8 streams); these tests pin the placement and the order, with no model.
"""

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


def worker(n_slots: int = 8) -> EngineWorker:
    w = EngineWorker(conn=None, config=WorkerConfig("unused.gguf", parallel=n_slots, kv_cells=n_slots * 1000))
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


def test_a_new_sequence_fills_the_gap_between_running_ones():
    w = worker()
    for i in (0, 1, 3):
        run_on(w, i, f"r{i}")
    w.pool.extend(w.pool.slots[2], [77] * 5)  # another conversation's cache; slots 4-7 are empty
    plan = w._plan(request("new", [9, 9, 9]))
    assert plan.slot.seq_id == 2  # joins {0, 1} and {3}: one run instead of two


def test_a_cached_prefix_elsewhere_is_copied_to_the_neighbouring_slot():
    w = worker()
    for i in (0, 1):
        run_on(w, i, f"r{i}")
    history = list(range(100, 160))
    w.pool.extend(w.pool.slots[5], history)  # an idle slot holds this conversation
    plan = w._plan(request("next turn", history + [1, 2]))
    assert plan.slot.seq_id == 2
    assert plan.donor_slot is w.pool.slots[5] and plan.copy == len(history)


def test_a_cached_prefix_beside_the_running_ones_is_kept_in_place():
    w = worker()
    run_on(w, 4, "r4")
    history = list(range(100, 160))
    w.pool.extend(w.pool.slots[5], history)
    plan = w._plan(request("next turn", history + [1, 2]))
    assert plan.slot.seq_id == 5 and plan.keep == len(history) and plan.donor_slot is None


def test_a_burst_lands_on_consecutive_ids():
    w = worker()
    for i, seq_id in enumerate((0, 2, 4, 6)):  # idle caches scattered over the slots
        w.pool.extend(w.pool.slots[seq_id], [50 + i] * 5)
    for i in range(4):
        w._enqueue(request(f"b{i}", [900 + i, 1, 2]))
    w._admit()
    assert len(w.running) == 4
    ids = sorted(seq.slot.seq_id for seq in w.running.values())
    assert ids == list(range(ids[0], ids[0] + 4)), ids


def test_the_batch_lists_sequences_in_id_order():
    w = worker()
    for seq_id in (3, 1, 2, 0):  # arrival order differs from id order
        run_on(w, seq_id, f"r{seq_id}")
    w.running["r2"].next_token = None
    w.running["r2"].pending = [8, 8, 8]  # one sequence still prefilling
    w._step()
    assert w.native.batches == [[0, 1, 2, 2, 2, 3]]
