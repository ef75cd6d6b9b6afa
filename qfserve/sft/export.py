"""Writing a trained LoRA as (a) a llama.cpp adapter GGUF and (b) a PEFT folder for vLLM.

The GGUF layout follows llama.cpp's `convert_lora_to_gguf.py` (vendored in llama-cpp-python
0.3.36) and the loader `llama_adapter_lora_init_impl` in `src/llama-adapter.cpp`:

- KV: `general.architecture` = the base's arch, `general.type` = "adapter",
  `adapter.type` = "lora", `adapter.lora.alpha` (float32). llama.cpp scales by alpha / rank,
  the same as PEFT's `lora_alpha / r`.
- Tensors: `<base tensor name>.lora_a` and `.lora_b`, e.g. `blk.0.attn_q.weight.lora_a`.
  PEFT's A is (rank, in) and B is (out, rank) in torch order; GGUF lists dims reversed, so they
  are written as-is (A: ne = [in, rank], B: ne = [rank, out]) — the shapes llama.cpp checks.
- Llama-family q/k: the HF→GGUF converter permutes the rows of q_proj/k_proj (rotary pairs are
  interleaved in GGUF, split in halves in HF); transformers undoes it when dequantizing. The
  converter applies the same row permutation to lora_b (the output side), so we do too.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import torch

# llama.cpp architecture → whether q/k rows are permuted by the HF→GGUF converter.
# Other architectures are refused rather than exported wrongly.
_GGUF_ARCHES = {"llama": True, "qwen2": False, "qwen3": False}
# transformers model_type → llama.cpp architecture.
_MODEL_TYPE_TO_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def gguf_architecture(model_type: str) -> str:
    """The llama.cpp arch for a transformers model_type (for a GGUF base, transformers derived
    model_type from the file's `general.architecture`, so this round-trips)."""
    return _MODEL_TYPE_TO_ARCH.get(model_type, model_type)


def _permute_rows(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's `LlamaModel.permute` on the output dimension (rows) of `weight`."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _lora_pairs(peft_model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """HF weight name ("model.layers.0.self_attn.q_proj.weight") → (A, B) of the active adapter."""
    from peft.tuners.lora import LoraLayer

    pairs = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            hf_name = name.removeprefix("base_model.model.") + ".weight"
            a = module.lora_A["default"].weight.detach().to(torch.float32)
            b = module.lora_B["default"].weight.detach().to(torch.float32)
            pairs[hf_name] = (a, b)
    return pairs


def write_adapter_gguf(peft_model, arch: str, lora_alpha: float, path: str) -> int:
    """Writes the llama.cpp adapter; returns the number of adapted weight matrices."""
    import gguf

    if arch not in _GGUF_ARCHES:
        raise ValueError(f"GGUF adapter export does not support architecture {arch!r}")
    config = peft_model.get_base_model().config
    n_head = config.num_attention_heads
    n_kv_head = getattr(config, "num_key_value_heads", None) or n_head
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, config.num_hidden_layers)

    writer = gguf.GGUFWriter(path, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora_alpha))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    pairs = _lora_pairs(peft_model)
    for hf_name in sorted(pairs, key=_natural_key):
        a, b = pairs[hf_name]
        if _GGUF_ARCHES[arch] and hf_name.endswith("q_proj.weight"):
            b = _permute_rows(b, n_head)
        elif _GGUF_ARCHES[arch] and hf_name.endswith("k_proj.weight"):
            b = _permute_rows(b, n_kv_head)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"no llama.cpp tensor name for {hf_name}")
        writer.add_tensor(gguf_name + ".lora_a", np.ascontiguousarray(a.numpy()))
        writer.add_tensor(gguf_name + ".lora_b", np.ascontiguousarray(b.numpy()))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(pairs)


def _natural_key(name: str) -> list:
    """Sorts "layers.10" after "layers.9", so the file lists blocks in order."""
    return [int(part) if part.isdigit() else part for part in name.split(".")]


def write_peft_folder(peft_model, folder: str, base_path: str) -> None:
    """`adapter_model.safetensors` + `adapter_config.json`, the layout vLLM's --lora-modules loads."""
    with warnings.catch_warnings():
        # PEFT looks for a config.json beside the base to detect vocabulary changes; a GGUF base
        # has none, and we never train the embeddings.
        warnings.filterwarnings("ignore", message="Could not find a config file")
        peft_model.save_pretrained(folder, safe_serialization=True)
    readme = os.path.join(folder, "README.md")
    if os.path.exists(readme):  # PEFT's generated model-card template says nothing useful here
        os.remove(readme)
    # Record where the base came from; vLLM only checks rank and target modules.
    config_path = os.path.join(folder, "adapter_config.json")
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    config["base_model_name_or_path"] = base_path
    with open(config_path, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
