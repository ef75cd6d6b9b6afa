"""Supervised fine-tuning: LoRA adapters trained on CPU from Qianfan-format data.

- `data`: read and validate prompt+response JSONL (line-numbered errors)
- `encode`: chat-template rendering with labels on response tokens only
- `train` / `config`: the training run; `evaluate`: base vs adapter loss and perplexity
- `export`: llama.cpp adapter GGUF and PEFT folder
- `manifest`: the torch-free API the server uses (`load_manifest`, `adapter_gguf_path`, `base_hash`)
"""
