"""headscope models: the networks and their configs (public names only).

The analysis methods every family has (`run_with_cache`, ...; TransformerLens' `to_tokens`, `W_Q`, `add_hook`,
...) are defined in lens/methods.py and lens/tl_methods.py, outside the learner's files, and added here
(docs/architecture.md); so are TransformerLens' hook names (lens/tl_names.py: `HookedModel.aliases`).
Hard attention registers its weighting here, the general and additive scores theirs (model/scores.py), relu2 and
swiglu their activations (model/activations.py); document masking for packed rows (model/documents.py) is the
GPT's `documents`.
"""

import model.activations  # noqa: F401 (registers the "relu2" and "swiglu" activations)
import model.hard_attention  # noqa: F401 (registers the "hard" weighting)
import model.scores  # noqa: F401 (registers the "general" and "additive" scores)
from lens.methods import AnalysisMethods
from lens.tl_methods import TransformerLensMethods
from lens.tl_names import HookNameMethods, TransformerLensNames
from model.bert import BERT
from model.config import (BERTConfig, ConfigError, GPTConfig, HardAttentionConfig, RNNConfig, Seq2SeqConfig,
                          TransformerConfig)
from model.documents import PackedDocuments
from model.gpt import GPT
from model.hooks import HookedModel
from model.rnn import RNNEncoderDecoder
from model.seq2seq import Seq2Seq
from weights.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

HookedModel.add_methods(AnalysisMethods)
HookedModel.add_methods(TransformerLensMethods)
HookedModel.add_methods(HookNameMethods)
GPT.documents = PackedDocuments()  # doc_ids: document masks and positions, FlexAttention on CUDA
HookedModel.aliases = TransformerLensNames()  # blocks.0.attn.hook_z names blocks.0.attn.z, in TL's layout

__all__ = ["GPT", "GPTConfig", "BERT", "BERTConfig", "Seq2Seq", "Seq2SeqConfig", "RNNEncoderDecoder", "RNNConfig",
           "TransformerConfig", "HardAttentionConfig", "ConfigError", "CheckpointError", "load_checkpoint",
           "save_checkpoint"]
