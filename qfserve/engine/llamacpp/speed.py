"""How fast the engine is, measured as it runs: the basis of predicted queue waits.

A decode step of n sequences takes about `a + b * n` seconds (the weights are read once per step,
each sequence adds its own share), fitted by least squares over recent pure decode steps with
exponential forgetting, and seeded at load by a measured step of 1 and of `parallel` sequences.
Prefill runs at its own tokens per second. Answers end, on average, at some fraction of their
`max_tokens`; that fraction starts at 1 (no answer seen yet, assume the worst) and follows what
finished answers did.

Pure Python: the worker feeds it, the client reads its figures from the worker's stats.
"""

from __future__ import annotations

DECAY = 0.98  # each new step weighs as much as the last ~50 together
SEED_WEIGHT = 5.0


class StepTimer:
    def __init__(self) -> None:
        self._s0 = self._sn = self._st = self._snn = self._snt = 0.0
        self.a = 0.005
        self.b = 0.005
        self.prefill_tokens_per_s = 500.0
        self.out_ratio = 1.0  # generated / max_tokens of finished answers, moving average

    def seed(self, measured: dict) -> None:
        n = max(1, int(measured["n"]))
        self._add(1, measured["step_1"], SEED_WEIGHT)
        if n > 1:
            self._add(n, measured["step_n"], SEED_WEIGHT)
        self._fit()
        self.prefill_tokens_per_s = measured["prefill_tokens_per_s"]

    def step(self, decoded: int, prefilled: int, seconds: float) -> None:
        """One llama_decode of `decoded` sampling sequences and `prefilled` prompt tokens."""
        if decoded and not prefilled:
            self._add(decoded, seconds, 1.0)
            self._fit()
        elif prefilled >= 32:
            spent = seconds - (self.step_seconds(decoded) if decoded else 0.0)
            if spent > 0:
                rate = prefilled / spent
                self.prefill_tokens_per_s = 0.9 * self.prefill_tokens_per_s + 0.1 * rate

    def finished(self, generated: int, max_tokens: int) -> None:
        if max_tokens > 0:
            self.out_ratio = 0.9 * self.out_ratio + 0.1 * min(1.0, generated / max_tokens)

    def step_seconds(self, n: int) -> float:
        return self.a + self.b * max(1, n)

    def rates(self, parallel: int) -> dict:
        return {
            "step_a": self.a,
            "step_b": self.b,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "out_ratio": self.out_ratio,
            "decode_tokens_per_s": parallel / self.step_seconds(parallel),
        }

    def _add(self, n: int, seconds: float, weight: float) -> None:
        self._s0 = DECAY * self._s0 + weight
        self._sn = DECAY * self._sn + weight * n
        self._st = DECAY * self._st + weight * seconds
        self._snn = DECAY * self._snn + weight * n * n
        self._snt = DECAY * self._snt + weight * n * seconds

    def _fit(self) -> None:
        spread = self._s0 * self._snn - self._sn * self._sn
        if spread > 1e-9 * max(1.0, self._s0 * self._snn):
            self.b = max(0.0, (self._s0 * self._snt - self._sn * self._st) / spread)
        mean_n, mean_t = self._sn / self._s0, self._st / self._s0
        self.a = max(1e-5, mean_t - self.b * mean_n)
