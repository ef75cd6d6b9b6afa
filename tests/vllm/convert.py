"""The default GGUF as a Hugging Face folder, for vLLM (which serves HF folders, not GGUF, on CPU).

transformers dequantizes the GGUF (`from_pretrained(folder, gguf_file=name)`), but then refuses to
`save_pretrained` a model it marked "quantized with gguf": the state dict is copied into a fresh
`from_config` model (no quantization config) and saved with the tokenizer, chat template included.
Usage: python -m tests.vllm.convert OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def convert(out: Path) -> Path:
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from qfserve.engine.prompt import default_model_path

    gguf = Path(default_model_path())
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    fresh.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".partial")
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]).resolve()))
