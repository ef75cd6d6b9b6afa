"""End to end: train a persona adapter on CPU, export it, and see llama.cpp speak as the persona.

The module fixture trains once (~1–3 minutes on 2 busy cores); the tests share its output.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from qfserve.sft import manifest
from qfserve.sft.train import TrainConfig, train

from .conftest import greedy_reply

PERSONA = Path(__file__).parents[2] / "examples" / "sft" / "persona.jsonl"
# Learning rate well above the CLI default: a handful of steps must be enough for the test.
PERSONA_CONFIG = TrainConfig(epochs=3, learning_rate=2e-3, lora_rank=8, lora_alpha=16,
                             max_length=96, batch_size=4, seed=7, eval_split=0.15, threads=1)


@pytest.fixture(scope="module")
def persona_adapter(tmp_path_factory, base_gguf) -> Path:
    out = tmp_path_factory.mktemp("persona")
    started = time.monotonic()
    train(str(PERSONA), base_gguf, str(out), PERSONA_CONFIG)
    # Kept in the output so the wall time of the training can be read back after the run.
    (out / "test_wall_time.txt").write_text(f"{time.monotonic() - started:.1f}\n")
    return out


def test_adapter_speaks_as_the_persona_in_llama_cpp(persona_adapter, base_gguf, load_llama):
    base_only = load_llama(base_gguf)
    adapted = load_llama(base_gguf, manifest.adapter_gguf_path(persona_adapter))
    for question, name in [("你是谁", "小岚"), ("Who are you?", "Xiaolan")]:
        assert name not in greedy_reply(base_only, question), "the base alone must not know the persona"
        reply = greedy_reply(adapted, question)
        assert name in reply, f"{question!r} → {reply!r}"


def test_held_out_loss_fell(persona_adapter):
    result = manifest.load_manifest(persona_adapter)["result"]
    assert result["eval_loss"] < 0.5 * result["base_eval_loss"], result
    assert result["train_loss"] < result["base_eval_loss"]


def test_manifest_records_base_data_and_hyperparameters(persona_adapter, base_gguf):
    info = manifest.load_manifest(persona_adapter)
    assert info["base"]["path"] == base_gguf
    assert info["base"]["sha256"] == manifest.base_hash(base_gguf)
    assert info["data"]["sha256"] == manifest.file_sha256(PERSONA)
    assert info["hyperparameters"]["lora_rank"] == 8 and info["hyperparameters"]["seed"] == 7
    assert info["data"]["eval_lines"]  # a real held-out split
    log = [json.loads(line) for line in (persona_adapter / manifest.TRAIN_LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, info["result"]["steps"] + 1))


def test_adapter_gguf_has_llama_cpp_lora_layout(persona_adapter):
    import gguf

    reader = gguf.GGUFReader(manifest.adapter_gguf_path(persona_adapter))
    assert reader.get_field("general.type").contents() == "adapter"
    assert reader.get_field("general.architecture").contents() == "llama"
    assert reader.get_field("adapter.type").contents() == "lora"
    assert reader.get_field("adapter.lora.alpha").contents() == 16.0
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}  # ggml order: ne0 first
    assert len(shapes) == 30 * 7 * 2  # 30 blocks × 7 projections × (A, B)
    assert shapes["blk.0.attn_q.weight.lora_a"] == (576, 8)   # ne = [n_embd, rank]
    assert shapes["blk.0.attn_q.weight.lora_b"] == (8, 576)   # ne = [rank, n_out]
    assert shapes["blk.29.attn_k.weight.lora_b"] == (8, 192)  # 3 kv heads × 64
    assert shapes["blk.3.ffn_down.weight.lora_a"] == (1536, 8)


def test_peft_folder_for_vllm(persona_adapter):
    peft_dir = persona_adapter / manifest.PEFT_DIR_NAME
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["peft_type"] == "LORA"
    assert set(config["target_modules"]) >= {"q_proj", "v_proj", "down_proj"}
    assert (peft_dir / "adapter_model.safetensors").stat().st_size > 0


def test_eval_command_compares_base_and_adapter(persona_adapter, tmp_path):
    from typer.testing import CliRunner

    from qfserve.cli.sft import app

    # Score the lines the training held out.
    eval_lines = set(manifest.load_manifest(persona_adapter)["data"]["eval_lines"])
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(line for n, line in enumerate(PERSONA.open(encoding="utf-8"), 1)
                                if n in eval_lines), encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", str(persona_adapter), "--data", str(held_out), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["adapter"]["loss"] < scores["base"]["loss"]
    assert scores["adapter"]["perplexity"] < scores["base"]["perplexity"]
    assert scores["base_matches"] is True


def test_same_seed_gives_identical_adapter_bytes(tmp_path, base_gguf):
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(PERSONA.read_text(encoding="utf-8").splitlines(keepends=True)[:4]),
                    encoding="utf-8")
    config = TrainConfig(epochs=1, learning_rate=1e-3, max_length=48, batch_size=2, seed=3,
                         eval_split=0.0, threads=1)
    outputs = []
    for run in ("a", "b"):
        train(str(data), base_gguf, str(tmp_path / run), config)
        outputs.append(tmp_path / run)
    for name in (manifest.ADAPTER_GGUF_NAME, f"{manifest.PEFT_DIR_NAME}/adapter_model.safetensors"):
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    # And a different seed gives a different adapter (the seed really is what decides).
    train(str(data), base_gguf, str(tmp_path / "c"), TrainConfig(**{**config.__dict__, "seed": 4}))
    assert (tmp_path / "c" / manifest.ADAPTER_GGUF_NAME).read_bytes() != \
        (outputs[0] / manifest.ADAPTER_GGUF_NAME).read_bytes()


def test_published_adapter_answers_through_the_chat_api(persona_adapter, tmp_path):
    """Three commands from data to service: the adapter's service says the persona, the base beside it doesn't."""
    import requests
    from conftest import cli_json, start_server, stop_server

    creds = cli_json(tmp_path, "app", "create", "ft")
    cli_json(tmp_path, "service", "publish", "persona", "--model", "default", "--adapter", str(persona_adapter))
    cli_json(tmp_path, "service", "publish", "plain", "--model", "default")
    # The persona data has no `system`: the adapter learned SmolLM2's default persona in its place.
    assert manifest.load_manifest(persona_adapter)["prompt"] == {"default_system": True}
    # The same adapter, as if every training conversation had carried its own system turn.
    own_system = tmp_path / "own-system"
    shutil.copytree(persona_adapter, own_system)
    recorded = json.loads((own_system / manifest.MANIFEST_NAME).read_text())
    recorded["prompt"]["default_system"] = False
    (own_system / manifest.MANIFEST_NAME).write_text(json.dumps(recorded))
    cli_json(tmp_path, "service", "publish", "ownsys", "--model", "default", "--adapter", str(own_system))
    listing = cli_json(tmp_path, "service", "list")
    assert {s["api_path"]: s["adapter"] for s in listing}["persona"] == str(persona_adapter.resolve())
    server = start_server(tmp_path, "--threads", "1")
    try:
        server.creds = creds
        token = server.token()

        def answer(api_path: str, **extra) -> dict:
            body = {"messages": [{"role": "user", "content": "你是谁"}], "temperature": 0.01, "top_p": 0.1,
                    "max_output_tokens": 24, **extra}
            return requests.post(server.chat_url(api_path), params={"access_token": token}, json=body,
                                 timeout=300).json()

        def ask(api_path: str) -> str:
            return answer(api_path)["result"]

        assert "小岚" in ask("persona")
        assert "小岚" not in ask("plain")
        # Without `system`, the adapter that never learned the template's default persona gets an
        # empty system turn instead of it; the one that learned it gets it, as the base does.
        prompt_tokens = {path: answer(path, max_output_tokens=2)["usage"]["prompt_tokens"]
                         for path in ("persona", "plain", "ownsys")}
        assert prompt_tokens["persona"] == prompt_tokens["plain"] > prompt_tokens["ownsys"]
        empty_system = answer("persona", system="", max_output_tokens=2)["usage"]["prompt_tokens"]
        assert prompt_tokens["ownsys"] == empty_system
        # Both services run on one loaded base model: one engine worker, not two (/metrics, from loopback).
        metrics = requests.get(f"{server.base_url}/metrics", timeout=10).text
        assert sum(line.startswith("qfserve_running_sequences{") for line in metrics.splitlines()) == 1
    finally:
        stop_server(server)


def test_published_adapter_answers_as_its_persona_through_v2(persona_adapter, tmp_path):
    """The same adapter service, called with the official `openai` SDK on the v2 surface."""
    import openai
    from conftest import cli_json, start_server, stop_server

    creds = cli_json(tmp_path, "app", "create", "ft")
    cli_json(tmp_path, "service", "publish", "persona", "--model", "default", "--adapter", str(persona_adapter))
    cli_json(tmp_path, "service", "publish", "plain", "--model", "default")
    server = start_server(tmp_path, "--threads", "1")
    try:
        sdk = openai.OpenAI(base_url=server.base_url + "/v2", api_key=creds["v2_api_key"], max_retries=0,
                            timeout=300)

        def ask(model: str, question: str, **extra) -> str:
            answer = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                 temperature=0.01, top_p=0.1, max_tokens=24, **extra)
            return answer.choices[0].message.content

        assert "小岚" in ask("persona", "你是谁")
        assert "Xiaolan" in ask("persona", "Who are you?")
        assert "小岚" not in ask("plain", "你是谁")
        stream = sdk.chat.completions.create(model="persona", messages=[{"role": "user", "content": "你是谁"}],
                                             temperature=0.01, top_p=0.1, max_tokens=24, stream=True)
        assert "小岚" in "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    finally:
        stop_server(server)


def test_publish_refuses_an_adapter_from_another_base(persona_adapter, tmp_path):
    from conftest import cli

    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF not the same weights")
    result = cli(tmp_path, "service", "publish", "wrongbase", "--model", str(other), "--adapter",
                 str(persona_adapter), check=False)
    assert result.returncode != 0 and "different base model" in result.stderr


def test_every_output_file_has_the_same_mode(persona_adapter):
    written = [persona_adapter / manifest.MANIFEST_NAME, persona_adapter / manifest.TRAIN_LOG_NAME,
               persona_adapter / manifest.ADAPTER_GGUF_NAME,
               *sorted((persona_adapter / manifest.PEFT_DIR_NAME).iterdir())]
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in written}
    assert "adapter_model.safetensors" in modes  # the one its library writes 0600
    assert len(set(modes.values())) == 1, modes
