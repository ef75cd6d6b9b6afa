"""A Hugging Face model folder works as a base too (here a tiny random Llama, for speed)."""

from __future__ import annotations

from pathlib import Path

from qfserve.sft import manifest
from qfserve.sft.train import TrainConfig, train

PERSONA = Path(__file__).parents[2] / "examples" / "sft" / "persona.jsonl"


def test_train_on_hugging_face_folder(tmp_path, base_gguf):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from qfserve.sft.base import _load_cached

    folder = tmp_path / "tiny-llama"
    tokenizer = _load_cached(base_gguf)[1]  # SmolLM2's tokenizer and chat template
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)

    data = tmp_path / "data.jsonl"
    data.write_text("".join(PERSONA.read_text(encoding="utf-8").splitlines(keepends=True)[:6]),
                    encoding="utf-8")
    out = tmp_path / "out"
    info = train(str(data), str(folder), str(out),
                 TrainConfig(epochs=1, max_length=64, batch_size=3, eval_split=0.34, lora_rank=4))

    assert info["base"]["path"] == str(folder)
    assert info["base"]["sha256"] == manifest.base_hash(folder)
    assert info["base"]["architecture"] == "llama"
    assert info["result"]["eval_loss"] is not None and info["result"]["steps"] == 2

    import gguf

    reader = gguf.GGUFReader(manifest.adapter_gguf_path(out))
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    assert len(shapes) == 2 * 7 * 2
    assert shapes["blk.1.attn_k.weight.lora_b"] == (4, 32)  # rank × (2 kv heads × 16)
    assert (out / "peft" / "adapter_model.safetensors").is_file()
