"""headscope models: public names only."""

from model.bert import BERT
from model.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from model.config import BERTConfig, ConfigError, GPTConfig, TrainConfig, TransformerConfig
from model.gpt import GPT

MODELS = {"gpt": GPT, "bert": BERT}  # model_type -> class; MODEL_CONFIGS in model.config holds their configs

__all__ = ["GPT", "GPTConfig", "BERT", "BERTConfig", "TransformerConfig", "TrainConfig", "ConfigError", "MODELS",
           "CheckpointError", "load_checkpoint", "save_checkpoint", "model_from_checkpoint"]
