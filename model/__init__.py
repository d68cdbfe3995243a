"""headscope models: the networks and their configs (public names only)."""

from model.bert import BERT
from model.config import BERTConfig, ConfigError, GPTConfig, RNNConfig, Seq2SeqConfig, TransformerConfig
from model.gpt import GPT
from model.rnn import RNNEncoderDecoder
from model.seq2seq import Seq2Seq
from weights.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["GPT", "GPTConfig", "BERT", "BERTConfig", "Seq2Seq", "Seq2SeqConfig", "RNNEncoderDecoder", "RNNConfig",
           "TransformerConfig", "ConfigError", "CheckpointError", "load_checkpoint", "save_checkpoint"]
