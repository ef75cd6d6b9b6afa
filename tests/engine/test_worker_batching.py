"""Where the worker puts sequences and how it lays out a step's batch, with a region per sequence.

llama.cpp cuts a batch into one pass over the weights per run of consecutive sequence ids (its
`split_equal(sequential=True)` for non-unified KV), so the worker keeps running sequences on
neighbouring ids and lists them in id order. The speed this buys is measured in bench/ (bench.run
at 8 streams); these tests pin the placement and the order, with no model.
"""

from worker_fakes import request, run_on, worker


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
