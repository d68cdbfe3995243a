"""The one registry of model families: model class, config class, batch maker and sample.py's decoding.

train.py, sample.py and the checkpoint loader read it; adding a family is one entry here.
"""

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from data.loader import LMBatches
from data.mlm import MLMBatches
from data.pairs import PairBatches
from model import BERT, GPT, BERTConfig, GPTConfig, RNNConfig, RNNEncoderDecoder, Seq2Seq, Seq2SeqConfig
from training.config import coerce, field_defaults, field_types, from_dict
from training.decoding import fill_mask, sample_gpt, sample_seq2seq
from data.tokenizer import GPT2Tokenizer, Tokenizer, from_meta
from weights.checkpoint import CheckpointError, upgrade_state
from weights.hf_families import ROWS, read_pretrained_config
from weights.hf_tokenizer import folder_tokenizer
from weights.common import ConfigError


@dataclass(frozen=True)
class ModelFamily:
    """Everything headscope needs to train, save, load and sample one kind of model."""

    model: type  # the nn.Module class, built as model(config)
    config: type  # its config dataclass (model/config.py)
    batches: type  # its batch maker (data/): see data/loader.py LMBatches for the interface
    decode: Callable  # what sample.py does with it: decode(model, tokenizer, sample_config, device, dtype)
    description: str  # for messages: "a GPT"
    train_options: tuple[str, ...] = ()  # train.py options that only some families read (documents: gpt, bert)
    sample_options: tuple[str, ...] = ()  # sample.py options that only some families read


DOCUMENTS = ("doc_mask", "batch_align")  # data/documents.py: the batch makers of gpt and bert
FAMILIES: dict[str, ModelFamily] = {
    "gpt": ModelFamily(GPT, GPTConfig, LMBatches, sample_gpt, "a GPT", DOCUMENTS,
                       ("ablate", "ablate_mode", "prompts", "fast_decode", "prompt_prefix", "doc_mask")),
    "bert": ModelFamily(BERT, BERTConfig, MLMBatches, fill_mask, "a BERT (fill-mask)", DOCUMENTS, ("candidates",)),
    "seq2seq": ModelFamily(Seq2Seq, Seq2SeqConfig, PairBatches, sample_seq2seq, "an encoder-decoder", (),
                           ("decoding", "beam_size", "length_penalty")),
    # model/rnn.py: GRU/LSTM encoder-decoder, with or without attention; the same pairs and decoding as seq2seq
    "rnn": ModelFamily(RNNEncoderDecoder, RNNConfig, PairBatches, sample_seq2seq, "an RNN encoder-decoder", (),
                       ("decoding", "beam_size", "length_penalty")),
}


def family(model_type: str) -> ModelFamily:
    """The registered family called model_type; a ConfigError naming the registered ones otherwise."""
    if model_type not in FAMILIES:
        raise ConfigError(f"model_type must be one of {', '.join(FAMILIES)}, got {model_type!r}.")
    return FAMILIES[model_type]


def refuse_ignored(given: dict, model_type: str, script: type, source: str = "") -> None:
    """The one place that refuses an option which model_type would ignore, in one sentence naming who reads it.

    `given`: the raw values of the command line and config file; `script`: TrainConfig (train.py) or
    SampleConfig (sample.py, `source` the checkpoint's folder or the pretrained name). A model option of
    another family's config is refused when given at all (--cell, an RNN's, on a Transformer; build() would
    only call it unknown); a script option that only some families read (--doc_mask, --ablate) when set to
    something other than its default.
    """
    types, defaults = field_types(script), field_defaults(script)
    own = set(types) | set(field_types(family(model_type).config))
    for key, value in given.items():
        owners = [name for name, entry in FAMILIES.items() if key not in own and key in field_types(entry.config)]
        if not owners and key in types and coerce(key, value, types[key]) != defaults[key]:
            owners = [name for name, entry in FAMILIES.items()
                      if key in (entry.sample_options if source else entry.train_options)]
        if not owners or model_type in owners:
            continue
        if source:  # sample.py: the checkpoint's family is what matters (e.g. seq2seq and rnn read --decoding)
            hint = " (in Python: model.hooks(ablate_heads(...)), lens/interventions.py)" if key == "ablate" else ""
            raise ConfigError(f"--{key} is for {FAMILIES[owners[0]].description} checkpoint and {source} holds "
                              f"{FAMILIES[model_type].description}; drop --{key}{hint}.")
        raise ConfigError(f"{key} is an option of model_type={' or '.join(owners)}, not of model_type={model_type}; "
                          f"drop --{key} or pick another --model_type.")


def model_from_checkpoint(ckpt: dict):
    """Rebuild the model stored in a checkpoint dict (weights/checkpoint.py load_checkpoint) and load its weights."""
    model_type = ckpt.get("model_type", "gpt")
    if model_type not in FAMILIES:
        raise CheckpointError(f"checkpoint holds an unknown model type {model_type!r}.")
    entry = FAMILIES[model_type]
    net = entry.model(from_dict(entry.config, ckpt["model_args"]))
    try:
        net.load_state_dict(upgrade_state(ckpt["model"]))
    except RuntimeError:
        raise CheckpointError("the checkpoint's weights do not match the model config it stores, so it is damaged; "
                              "restore it from a copy or train a new one.") from None
    if isinstance(ckpt.get("tokenizer"), dict):
        net.tokenizer = from_meta(ckpt["tokenizer"])
    return net


def pretrained_tokenizer(model, source: str, choice: str = "") -> Tokenizer:
    """The tokenizer for a model loaded from `source`: `choice` ('gpt2' or a folder of tokenizer files) when
    given, else the folder's own (model.tokenizer); a ConfigError saying so when there is none."""
    if choice == "gpt2":
        tokenizer = GPT2Tokenizer()
    elif choice:
        if not os.path.isdir(choice):
            raise ConfigError(f"--tokenizer={choice} is neither gpt2 nor a folder; pass a folder holding tokenizer.json, "
                              "vocab.txt or vocab.json + merges.txt.")
        tokenizer = folder_tokenizer(choice)
        if tokenizer is None:
            raise ConfigError(f"{choice} holds no tokenizer files (tokenizer.json, vocab.txt or vocab.json + merges.txt).")
    elif model.tokenizer is not None:
        tokenizer = model.tokenizer
    elif model.config.vocab_size == GPT2Tokenizer.base_vocab_size:  # GPT-2's own ids, as before folders had theirs
        print(f"({source} holds no tokenizer files; using GPT-2's BPE for its 50257 ids: --tokenizer= picks another)",
              file=sys.stderr)
        tokenizer = GPT2Tokenizer()
    else:
        raise ConfigError(f"{source} holds no tokenizer files (tokenizer.json, vocab.txt or vocab.json + merges.txt); "
                          "pass --tokenizer=DIR, a folder holding this model's tokenizer, or --tokenizer=gpt2.")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.vocab_size}; "
                          "pass the model's own tokenizer with --tokenizer=.")
    return tokenizer


def load_pretrained(name_or_dir: str, **options):
    """A Hugging Face folder or Hub id of any family in weights/hf_families.py's table, as our GPT or BERT (in
    eval mode, `tokenizer` set from the folder); `options` go to that class's from_pretrained."""
    row = ROWS[read_pretrained_config(name_or_dir)[0]]
    return FAMILIES[row.family].model.from_pretrained(name_or_dir, **options)
