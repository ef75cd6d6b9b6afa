"""The llama.cpp adapter GGUF computes what the PEFT adapter computes.

A random adapter on q_proj and k_proj only, the projections whose rows the HF→GGUF conversion
permutes: if the export got the names, shapes, transposes or that permutation wrong, llama.cpp's
change of the logits would not follow PyTorch's. Logits are compared as *changes* made by the
adapter, because the base itself differs a little between the two (Q4_1 kernels in llama.cpp,
dequantized float32 in PyTorch).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qfserve.sft import export
from qfserve.sft.base import load_base

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital"


def _delta_correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("permute", [True, False], ids=["as-exported", "without-qk-permutation"])
def test_gguf_adapter_changes_logits_like_peft(tmp_path, base_gguf, load_llama, monkeypatch, permute):
    from peft import LoraConfig, get_peft_model

    if not permute:  # the control: proves the test can tell a wrong export from a right one
        monkeypatch.setitem(export._GGUF_ARCHES, "llama", False)
    torch.manual_seed(0)
    loaded = load_base(base_gguf)
    model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # PEFT starts B at zero (no effect). A large random B makes the adapter's change of
            # the logits (~4 on average) dwarf the Q4_1-vs-float32 noise between the two (~0.2);
            # with a small one that noise dominates and the correlation says little.
            if "lora_B" in name:
                parameter.normal_(0.0, 1.0)
    path = str(tmp_path / "adapter.gguf")
    export.write_adapter_gguf(model, "llama", 8, path)

    ids = loaded.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        adapted = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        with model.disable_adapter():
            plain = model(input_ids=torch.tensor([ids])).logits[0].numpy()

    def llama_cpp_logits(lora_path):
        llm = load_llama(base_gguf, lora_path, logits_all=True)
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])

    cpp_delta = llama_cpp_logits(path) - llama_cpp_logits(None)
    correlation = _delta_correlation(adapted - plain, cpp_delta)
    # Measured: 0.998 as exported, 0.67 without the permutation.
    if permute:
        assert correlation > 0.95, correlation
    else:
        assert correlation < 0.9, correlation
