"""Moderation cost per 10k characters: input check and streaming output filter (~20-char
pieces), with a synthetic 10k-term lexicon and with no lexicon, in the same run.

    .venv/bin/python bench/safety_bench.py [--terms 10000] [--chars 10000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from qfserve.safety import Moderator  # noqa: E402
from qfserve.safety import normalize  # noqa: E402

COMMON = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理"
PUNCT = "，。！？、；：“”（）《》 \n"
LATIN = "the quick brown fox jumps over a lazy dog and some words "


def synth_lexicon(path: str, allow_path: str, n_terms: int, rng: random.Random) -> list[str]:
    """Deny terms from CJK Extension A (U+3400–U+4DBF) so that the ordinary text below does not
    match by accident, plus a few planted level-1 terms made of common characters."""
    planted = ["测试甲乙", "样例词丙", "badwordx", "合成词丁"]
    seen = set(planted)
    lines = [f"{t}\tplanted\t1" for t in planted]
    while len(lines) < n_terms:
        k = rng.randint(2, 6)
        t = "".join(chr(rng.randint(0x3400, 0x4DBF)) for _ in range(k))
        if t in seen:
            continue
        seen.add(t)
        lines.append(f"{t}\tcat{len(lines) % 20}\t{rng.randint(1, 3)}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(allow_path, "w", encoding="utf-8") as f:
        f.write("\n".join("白" + t + "节" for t in list(seen)[:200]) + "\n")
    return planted


def synth_text(n_chars: int, rng: random.Random, planted: list[str] | None) -> str:
    out, size = [], 0
    while size < n_chars:
        r = rng.random()
        if planted and r < 0.004:
            piece = rng.choice(planted)
        elif r < 0.15:
            piece = rng.choice(PUNCT)
        elif r < 0.25:
            piece = LATIN[rng.randint(0, len(LATIN) - 10):][:rng.randint(3, 9)]
        else:
            piece = rng.choice(COMMON)
        out.append(piece)
        size += len(piece)
    return "".join(out)[:n_chars]


def timeit(fn, repeat: int) -> float:
    """Median seconds per call."""
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--terms", type=int, default=10_000)
    ap.add_argument("--chars", type=int, default=10_000)
    ap.add_argument("--piece", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-request-latency", dest="request_latency", action="store_false",
                    help="skip timing a real request on the embedded model for the share figure")
    args = ap.parse_args()
    rng = random.Random(42)

    t0 = time.perf_counter()
    normalize.table("default"), normalize.table("strict")
    t_tables = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as d:
        lex, allow = os.path.join(d, "lex.tsv"), os.path.join(d, "allow.txt")
        planted = synth_lexicon(lex, allow, args.terms, rng)
        t0 = time.perf_counter()
        mod = Moderator.from_files([lex], allow)
        t_load = time.perf_counter() - t0
    empty = Moderator.from_files([], None)

    clean = synth_text(args.chars, rng, None)
    dirty = synth_text(args.chars, rng, planted)
    scale = 10_000 / args.chars

    def input_check(m, text, policy="default"):
        # 10 user rounds plus a system prompt, as a multi-turn request would carry them
        n = len(text) // 11
        msgs = []
        for i in range(10):
            msgs.append(("user", text[i * n:(i + 1) * n]))
            msgs.append(("assistant", "好的。"))
        msgs.pop()
        return lambda: m.check_input(msgs, text[10 * n:], None, policy)

    def output_stream(m, text, policy="default"):
        pieces = [text[i:i + args.piece] for i in range(0, len(text), args.piece)]

        def run():
            f = m.output_filter(policy)
            out = []
            for p in pieces:
                s, v = f.feed(p)
                out.append(s)
                if v is not None:
                    raise SystemExit("benchmark text unexpectedly stopped the stream")
            out.append(f.finish()[0])
            return out
        return run

    import logging
    logging.getLogger("qfserve.safety").setLevel(logging.ERROR)  # don't time log formatting of hits

    print(f"normalisation tables (once per process): {t_tables * 1e3:.0f} ms")
    print(f"lexicon load + compile, {mod.n_terms} terms (default+strict automata): {t_load * 1e3:.0f} ms")
    print(f"holdback: {mod.output_filter().holdback} normalised chars; text {args.chars} chars, "
          f"stream pieces of {args.piece} chars; median of {args.repeat}")
    print(f"{'case':48s} {'ms / 10k chars':>15s}")
    rows = [
        ("no lexicon: input check", input_check(empty, clean)),
        ("no lexicon: output stream", output_stream(empty, clean)),
        (f"{mod.n_terms} terms: input check, clean text", input_check(mod, clean)),
        (f"{mod.n_terms} terms: input check, text with level-1 hits", input_check(mod, dirty)),
        (f"{mod.n_terms} terms: input check, strict policy", input_check(mod, clean, "strict")),
        (f"{mod.n_terms} terms: output stream, clean text", output_stream(mod, clean)),
        (f"{mod.n_terms} terms: output stream, level-1 hits masked", output_stream(mod, dirty)),
    ]
    per_10k = {}
    for name, fn in rows:
        per_10k[name] = timeit(fn, args.repeat) * scale
        print(f"{name:48s} {per_10k[name] * 1e3:15.3f}")
    if args.request_latency:
        _share_of_request(mod, per_10k, rows)


def _share_of_request(mod: Moderator, per_10k: dict, rows: list) -> None:
    """Moderation's share of one real request: input check of its prompt plus the output filter over
    its answer, against the same answer generated by the embedded engine, timed in this run."""
    import asyncio

    from qfserve.engine.base import FinishEvent, GenerateRequest, SamplingParams
    from qfserve.engine.llamacpp.client import LlamaCppEngine
    from qfserve.engine.prompt import ChatPrompt, default_model_path

    question = "给我推荐一些自驾游路线，并介绍沿途的景点和美食。"
    model = default_model_path()
    prompt = ChatPrompt(model)
    ids = prompt.tokenize(prompt.render([{"role": "user", "content": question}]))

    async def generate() -> tuple[float, str]:
        engine = LlamaCppEngine(model, parallel=1, ctx_per_seq=1024, show_progress=False)
        await engine.start()
        try:
            started, text = time.perf_counter(), []
            params = SamplingParams(max_tokens=256, min_tokens=256, seed=1)
            async for event in engine.generate(GenerateRequest("bench", ids, params)):
                text.append(event.text)
                if isinstance(event, FinishEvent):
                    break
            return time.perf_counter() - started, "".join(text)
        finally:
            await engine.close()

    latency, answer = asyncio.run(generate())
    checks = per_10k[rows[2][0]] * len(question) / 10_000 + per_10k[rows[5][0]] * len(answer) / 10_000
    print(f"\none request ({len(question)}-char question, {len(answer)}-char answer of 256 tokens): "
          f"end-to-end {latency * 1e3:.0f} ms in the engine, moderation {checks * 1e3:.3f} ms "
          f"= {checks / latency * 100:.5f} % of the request")


if __name__ == "__main__":
    main()
