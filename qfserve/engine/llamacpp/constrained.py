"""Grammar-constrained sampling for one sequence (function calls, structured output).

A sequence whose SamplingParams carry a `Constraint` samples through `ConstrainedSampler` instead of
the plain `SequenceSampler`. Constrained steps run llama.cpp's grammar sampler, but not over the
whole vocabulary: that costs ~15 ms a step on this model (measured), several decode steps' worth.
Instead, as llama.cpp's own server does, the grammar first judges only the candidates that survive
penalties and top_k; only when none of them is valid does it filter the full vocabulary:

    penalties → top_k → grammar  [→ if nothing is left: grammar over all tokens → top_k]
    → top_p → min_p → temperature → dist

A lazy constraint (tool_choice `auto`) decides once, at the first token: the answer is a call when
the sampled token starts the marker, or when the marker's first token is at least `threshold`
likely (small models rarely put much weight on it). Otherwise the sequence samples as plain text.
"""

from __future__ import annotations

import ctypes

import numpy as np
from llama_cpp import llama_cpp as L

from qfserve.engine.base import SamplingParams
from qfserve.engine.llamacpp.sampling import SequenceSampler, dist_seed

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert TOKEN_DATA.itemsize == ctypes.sizeof(L.llama_token_data)

_marker_tokens: dict[tuple[int, str], np.ndarray] = {}


def make_sampler(params: SamplingParams, native) -> SequenceSampler | "ConstrainedSampler":
    """The sampler for one sequence: constrained when its params carry a constraint."""
    if params.constraint is None:
        return SequenceSampler(params, native.n_vocab, native.eog_ids)
    return ConstrainedSampler(params, native)


def marker_tokens(native, marker: str) -> np.ndarray:
    """Ids of every token whose text is a non-empty prefix of `marker` (computed once per model)."""
    key = (id(native), marker)
    if key not in _marker_tokens:
        encoded = marker.encode()
        ids = [t for t in range(native.n_vocab) if (piece := native.piece(t)) and encoded.startswith(piece)]
        _marker_tokens[key] = np.array(ids, dtype=np.int64)
    return _marker_tokens[key]


def _logits(ctx, batch_index: int, n_vocab: int) -> np.ndarray:
    pointer = L.llama_get_logits_ith(ctx, batch_index)
    return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))


class ConstrainedSampler:
    """Same interface as SequenceSampler (sample, allow_eog, free)."""

    def __init__(self, params: SamplingParams, native) -> None:
        constraint = params.constraint
        if constraint.grammar is None:
            raise ValueError("the constraint has no grammar (the engine client fills it)")
        self.params = params
        self.constraint = constraint
        self.n_vocab = native.n_vocab
        self.text = SequenceSampler(params, native.n_vocab, native.eog_ids)  # free text / before deciding
        self.markers = marker_tokens(native, constraint.prefix) if constraint.lazy else None
        self.mode = "undecided" if constraint.lazy else "constrained"
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._candidates = np.empty(self.n_vocab, dtype=TOKEN_DATA)
        self._array = L.llama_token_data_array(
            data=ctypes.cast(self._candidates.ctypes.data, L.llama_token_data_p), size=0, selected=-1, sorted=False
        )
        self.grammar = L.llama_sampler_init_grammar(native.vocab, constraint.grammar.encode(), b"root")
        if not self.grammar:
            self.text.free()
            raise ValueError("llama.cpp refused the grammar")
        self.head = self._chain()
        self.tail = self._chain()
        if params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
            # As SequenceSampler: the generated tokens only, the whole answer unless penalty_last_n says less.
            window = params.max_tokens if params.penalty_last_n < 0 else min(params.penalty_last_n, params.max_tokens)
            L.llama_sampler_chain_add(self.head, L.llama_sampler_init_penalties(
                self.n_vocab, window, params.repeat_penalty, params.frequency_penalty,
                params.presence_penalty))
        self._top_k = params.top_k if params.top_k > 0 else 0
        if self._top_k:
            L.llama_sampler_chain_add(self.head, L.llama_sampler_init_top_k(self._top_k))
        if params.top_p < 1.0:
            L.llama_sampler_chain_add(self.tail, L.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0:
            L.llama_sampler_chain_add(self.tail, L.llama_sampler_init_min_p(params.min_p, 1))
        L.llama_sampler_chain_add(self.tail, L.llama_sampler_init_temp(params.temperature))
        L.llama_sampler_chain_add(self.tail, L.llama_sampler_init_dist(dist_seed(params.seed)))
        self.full_vocab_steps = 0  # steps where no top_k candidate was valid (for the benchmark)

    @staticmethod
    def _chain():
        chain_params = L.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        return L.llama_sampler_chain_init(chain_params)

    # -- the SequenceSampler interface ----------------------------------------------------------

    def allow_eog(self) -> None:
        self.text.allow_eog()  # the grammar decides when a constrained answer may end

    def sample(self, ctx, batch_index: int) -> int:
        if self.mode == "text":
            return self.text.sample(ctx, batch_index)
        if self.mode == "constrained":
            return self._sample_constrained(ctx, batch_index)
        return self._decide(ctx, batch_index)

    def free(self) -> None:
        for name in ("head", "tail", "grammar"):
            sampler = getattr(self, name, None)
            if sampler:
                L.llama_sampler_free(sampler)
                setattr(self, name, None)
        self.text.free()

    # -- deciding and constraining --------------------------------------------------------------

    def _decide(self, ctx, batch_index: int) -> int:
        """The first token of a lazy constraint: a call, or free text from here on."""
        logits = _logits(ctx, batch_index, self.n_vocab).astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        p_marker = float(probabilities[self.markers].sum() / probabilities.sum()) if len(self.markers) else 0.0
        if p_marker >= self.constraint.threshold:
            self.mode = "constrained"
            return self._sample_constrained(ctx, batch_index)
        token = self.text.sample(ctx, batch_index)
        if token in self.markers:  # the model started the marker by itself
            self.mode = "constrained"
            self._accept(token)
        else:
            self.mode = "text"
        return token

    def _fill(self, logits: np.ndarray) -> None:
        # Samplers sort this buffer in place, so the ids are laid out again every time.
        self._candidates["id"] = self._ids
        self._candidates["logit"] = logits
        self._candidates["p"] = 0.0
        self._array.data = ctypes.cast(self._candidates.ctypes.data, L.llama_token_data_p)
        self._array.size = self.n_vocab
        self._array.selected = -1
        self._array.sorted = False

    def _all_rejected(self) -> bool:
        size = self._array.size
        address = ctypes.addressof(self._array.data.contents)
        view = np.frombuffer((ctypes.c_char * (size * TOKEN_DATA.itemsize)).from_address(address), dtype=TOKEN_DATA)
        return not np.isfinite(view["logit"]).any()

    def _sample_constrained(self, ctx, batch_index: int) -> int:
        logits = _logits(ctx, batch_index, self.n_vocab)
        array = ctypes.byref(self._array)
        self._fill(logits)
        L.llama_sampler_apply(self.head, array)
        L.llama_sampler_apply(self.grammar, array)
        # The grammar may have rejected the top candidate: the order no longer holds (samplers that
        # trust `sorted` would take -inf for the maximum and make every probability NaN).
        self._array.sorted = False
        if self._all_rejected():
            # No top_k candidate is valid here (a forced literal, or the end of the JSON): the
            # grammar filters the whole vocabulary, then the head picks among what is left.
            self.full_vocab_steps += 1
            self._fill(logits)
            L.llama_sampler_apply(self.grammar, array)
            L.llama_sampler_apply(self.head, array)
        L.llama_sampler_apply(self.tail, array)
        token = int(self._array.data[self._array.selected].id)
        self._accept(token)
        return token

    def _accept(self, token: int) -> None:
        L.llama_sampler_accept(self.head, token)
        L.llama_sampler_accept(self.grammar, token)
        L.llama_sampler_accept(self.tail, token)
