"""Loading the base draws no progress bars of transformers' own beside `sft train`'s."""

from __future__ import annotations


def test_loading_a_gguf_base_draws_no_library_progress_bars(base_gguf, capfd):
    from qfserve.sft.base import _load_cached

    _load_cached.__wrapped__(base_gguf)  # not the per-process cache: this load must really run
    captured = capfd.readouterr()
    output = captured.out + captured.err
    assert "de-quantizing" not in output and "Loading weights" not in output and "it/s]" not in output, output[-500:]
