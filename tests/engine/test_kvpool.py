"""KVPool's cell accounting without a model: copies share cells, cuts free only unshared ones."""

from qfserve.engine.llamacpp.kvpool import KVPool, common_prefix_length


class FakeMemory:
    def __init__(self):
        self.calls = []

    def truncate(self, seq_id, keep):
        self.calls.append(("rm", seq_id, keep))
        return True

    def copy_prefix(self, src, dst, length):
        self.calls.append(("cp", src, dst, length))
        return True


def test_copies_share_cells_and_cuts_free_only_what_nobody_else_holds():
    memory = FakeMemory()
    pool = KVPool(1000, 3, memory)
    a, b, c = pool.slots
    pool.extend(a, list(range(400)))  # a persona
    pool.extend(a, [7] * 50)  # a's question and answer
    assert pool.used_cells() == 450

    pool.copy_prefix(a, b, 400)  # b shares the persona: no new cells
    assert pool.used_cells() == 450 and b.cached == list(range(400))
    pool.extend(b, [8] * 30)
    assert pool.used_cells() == 480

    pool.truncate(a, 0)  # a goes: the persona stays, held by b
    assert pool.used_cells() == 430
    pool.extend(a, [9] * 10)  # new cells at a's old positions are new cells
    assert pool.used_cells() == 440

    pool.copy_prefix(b, c, 200)
    pool.truncate(b, 100)  # b keeps 100; c still holds 200 of the persona
    assert pool.used_cells() == 200 + 10
    assert ("cp", 0, 1, 400) in memory.calls and ("rm", 1, 100) in memory.calls


def test_cached_cells_count_only_what_idle_slots_alone_hold():
    pool = KVPool(1000, 2, FakeMemory())
    busy, idle = pool.slots
    pool.extend(idle, list(range(300)))
    pool.copy_prefix(idle, busy, 200)
    busy.busy = True
    assert pool.cached_cells() == 100
    pool.evict_idle(1000)
    assert idle.cached == [] and pool.used_cells() == 200


def test_common_prefix_length_short_and_long():
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    long = list(range(5000))
    assert common_prefix_length(long, long[:4000] + [-1]) == 4000
    assert common_prefix_length(long, long) == 5000
