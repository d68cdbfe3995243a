"""Nested options with flat keys: a plug-in's options are one nested config in the model configs (hard attention's
`hard_attention`, model/hard_attention_config.py, registered in model/transformer_config.py OPTIONS), while the
command line, config files and checkpoints name each option by a flat key `<field>_<name>`
(--hard_attention_estimator=reinforce). Kept out of the learner's files: model/config.py lets every config class
take those flat keys as keywords too (`flat_keys_too`), so nanoGPT's habit `GPTConfig(**checkpoint["model_args"])`
builds the nested configs.
"""

import dataclasses

from model.transformer_config import OPTIONS
from weights.common import flatten
from weights.errors import ConfigError


def nested_configs(cls) -> dict[str, type]:
    """The fields of a config class that hold a plug-in's options (e.g. hard_attention), with its config class."""
    return {f.name: OPTIONS[f.name] for f in dataclasses.fields(cls) if f.name in OPTIONS}


def unflatten(cls, values: dict) -> dict:
    """Keyword arguments for config class `cls` from flat values: `<field>_<name>` keys become the nested
    config `<field>`. Other keys pass through unchanged (the caller decides about unknown ones)."""
    kwargs = dict(values)
    for name, sub in nested_configs(cls).items():
        given = kwargs.pop(name, None)
        if not (given is None or isinstance(given, dict) or isinstance(given, sub)):
            raise ConfigError(f"{name} must be a {sub.__name__} or a dict of its options, got {given!r}; or pass "
                              f"its options as flat keys ({name}_<option>=...).")
        inner = dict(flatten(given)) if dataclasses.is_dataclass(given) else dict(given or {})
        for f in dataclasses.fields(sub):
            if f"{name}_{f.name}" in kwargs:
                inner[f.name] = kwargs.pop(f"{name}_{f.name}")
        unknown = sorted(set(inner) - {f.name for f in dataclasses.fields(sub)})
        if unknown:
            raise ConfigError(f"{name} has no option {unknown[0]!r}; its options are "
                              f"{', '.join(f.name for f in dataclasses.fields(sub))}.")
        kwargs[name] = sub(**inner)
    return kwargs


def from_flat(cls, values: dict):
    """Build config class `cls` from flat keyword values (`hard_attention_estimator=...` included)."""
    return cls(**unflatten(cls, values))


def flat_keys_too(cls):
    """Let the config class also take the flat keys of checkpoints and the command line as keywords, so that
    nanoGPT's habit `GPTConfig(**checkpoint["model_args"])` builds the nested configs."""
    init = cls.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **unflatten(type(self), kwargs))

    cls.__init__ = __init__
    return cls


__all__ = ["nested_configs", "flatten", "unflatten", "from_flat", "flat_keys_too"]
