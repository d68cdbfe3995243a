"""headscope models: public names only."""

from model.bert import BERT
from model.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from model.config import BERTConfig, ConfigError, GPTConfig, RNNConfig, Seq2SeqConfig, TrainConfig, TransformerConfig
from model.gpt import GPT
from model.rnn import RNNEncoderDecoder
from model.seq2seq import Seq2Seq

MODELS = {"gpt": GPT, "bert": BERT}  # model_type -> class; MODEL_CONFIGS in model.config holds their configs
MODELS["seq2seq"] = Seq2Seq
MODELS["rnn"] = RNNEncoderDecoder  # model/rnn.py: GRU/LSTM encoder-decoder, with or without attention

__all__ = ["GPT", "GPTConfig", "BERT", "BERTConfig", "Seq2Seq", "Seq2SeqConfig", "RNNEncoderDecoder", "RNNConfig", "TransformerConfig", "TrainConfig",
           "ConfigError", "MODELS",
           "CheckpointError", "load_checkpoint", "save_checkpoint", "model_from_checkpoint"]
