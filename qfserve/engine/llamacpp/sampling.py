"""One native llama.cpp sampler chain per sequence, and logprobs from the logits row."""

from __future__ import annotations

import ctypes

import numpy as np
from llama_cpp import llama_cpp as L

from qfserve.engine.base import SamplingParams

MAX_TOP_LOGPROBS = 20


def dist_seed(seed: int | None) -> int:
    """llama.cpp's 32-bit seed. LLAMA_DEFAULT_SEED (2**32 - 1) means "draw one at random", so a
    caller's seed is reduced modulo 2**32 - 1 and never lands on it."""
    return L.LLAMA_DEFAULT_SEED if seed is None else seed % L.LLAMA_DEFAULT_SEED


class SequenceSampler:
    """A sampler chain in llama-server's order: [eog guard] → penalties → top_k → top_p → min_p →
    temperature → dist(seed).

    The penalties see only the tokens generated for this answer (the seed: penalty_score
    "penalises tokens already generated"), never the prompt: a persona or a question that repeats
    a word must not make the answer avoid it. Their window is the whole answer unless
    `penalty_last_n` names a shorter one. A `seed` fixes the dist sampler's random stream, so the
    same request with the same seed gives the same answer; no seed draws a random one.

    top_k runs before top_p so that top_p never sorts the whole vocabulary (engine-notes.md: an
    eightfold cheaper step). The optional eog guard is a logit bias of -inf on every end-of-generation
    token while fewer than `min_tokens` tokens exist; it is removed from the chain once they do.
    """

    def __init__(self, params: SamplingParams, n_vocab: int, eog_ids: list[int]) -> None:
        chain_params = L.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.chain = L.llama_sampler_chain_init(chain_params)
        self.guarding_eog = params.min_tokens > 0 and bool(eog_ids)
        if self.guarding_eog:
            biases = (L.llama_logit_bias * len(eog_ids))(
                *(L.llama_logit_bias(token=t, bias=float("-inf")) for t in eog_ids)
            )
            self._add(L.llama_sampler_init_logit_bias(n_vocab, len(eog_ids), biases))
        window = params.max_tokens if params.penalty_last_n < 0 else min(params.penalty_last_n, params.max_tokens)
        self._add(
            L.llama_sampler_init_penalties(
                n_vocab,
                window,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        )
        if params.top_k > 0:
            self._add(L.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            self._add(L.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0:
            self._add(L.llama_sampler_init_min_p(params.min_p, 1))
        self._add(L.llama_sampler_init_temp(params.temperature))
        self._add(L.llama_sampler_init_dist(dist_seed(params.seed)))

    def _add(self, sampler) -> None:
        L.llama_sampler_chain_add(self.chain, sampler)

    def sample(self, ctx, batch_index: int) -> int:
        """Sample (and accept) from the logits of `batch_index`, which MUST have had logits on:
        otherwise llama.cpp aborts the whole process."""
        return L.llama_sampler_sample(self.chain, ctx, batch_index)

    def allow_eog(self) -> None:
        if self.guarding_eog:
            # chain_remove hands the sampler back to us, so we free it.
            L.llama_sampler_free(L.llama_sampler_chain_remove(self.chain, 0))
            self.guarding_eog = False

    def free(self) -> None:
        if self.chain:
            L.llama_sampler_free(self.chain)
            self.chain = None


def token_logprobs(
    ctx, batch_index: int, n_vocab: int, token: int, top_n: int
) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of `token` and its `top_n` most likely tokens (raw logits, before
    penalties and temperature, as OpenAI-style APIs report them)."""
    pointer = L.llama_get_logits_ith(ctx, batch_index)
    logits = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
    peak = float(logits.max())
    log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
    chosen = float(logits[token]) - log_total
    top_n = min(top_n, MAX_TOP_LOGPROBS)
    if top_n <= 0:
        return chosen, []
    candidates = np.argpartition(-logits, top_n)[:top_n]
    ranked = candidates[np.argsort(-logits[candidates], kind="stable")]
    return chosen, [(int(t), float(logits[t]) - log_total) for t in ranked]
