"""The one entry of weights/ that the core calls: `GPT.from_pretrained` reads a Hugging Face folder (or Hub id)
through it, and `save_pretrained` writes one. A learner may skip it: what it gives are config dicts and state
dicts, and the readers behind it (one per family of weights/hf_families.py's table) are weight I/O, not the
network."""

from weights.hf_export import save_hf
from weights.hf_families import read_pretrained, read_pretrained_config
from weights.hf_folder import PretrainedError, check_state
from weights.hf_tokenizer import folder_tokenizer

__all__ = ["PretrainedError", "check_state", "folder_tokenizer", "read_pretrained", "read_pretrained_config",
           "save_hf"]
