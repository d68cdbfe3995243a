"""Validation from a rule table: a config class lists one rule per field (`rules = {"n_head": size(), ...}`)
and calls `check_fields(self)` in __post_init__; what relates two fields is written out after it.

A rule says what a valid value is in the words of the error: "n_head must be a positive integer, got 2.0."
The choices of `one_of` are read from a registry (a dict or tuple) when the config is checked, so a variant
registered later (hard attention) is a valid choice, and the message lists what is registered now.
"""

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

from weights.errors import ConfigError


def is_number(value) -> bool:
    """Whether value is an int or float (not a bool, a string or None)."""
    return type(value) in (int, float)


@dataclass(frozen=True)
class Rule:
    """One field's rule: `ok(value)` says whether a value is valid; `text(name)` ends the error after the name."""

    ok: Callable[[object], bool]
    text: Callable[[], str]

    def check(self, name: str, value) -> None:
        """A ConfigError in one sentence unless value is valid for the field called `name`."""
        if not self.ok(value):
            raise ConfigError(f"{name} {self.text()}, got {value!r}.")


def size(minimum: int = 1, text: str = "must be a positive integer", none: bool = False) -> Rule:
    """An int (not a bool, float or string) of at least `minimum`; with `none`, None too."""
    return Rule(lambda v: (none and v is None) or (type(v) is int and v >= minimum), lambda: text)


def number(text: str, above: float = -math.inf, at_least: float = -math.inf, below: float = math.inf,
           at_most: float = math.inf) -> Rule:
    """An int or float (not a bool) with above < value <= at_most and at_least <= value < below (NaN never)."""
    return Rule(lambda v: is_number(v) and above < v < below and at_least <= v <= at_most, lambda: text)


def one_of(choices: Collection[str], text: str = "") -> Rule:
    """One of the strings in `choices` (a registry's keys, read at check time); `text` replaces the listing."""
    return Rule(lambda v: isinstance(v, str) and v in choices,
                lambda: text or f"must be one of {', '.join(choices)}")


def flag() -> Rule:
    """True or False (not 1, 0 or a string)."""
    return Rule(lambda v: type(v) is bool, lambda: "must be True or False")


def registered(registry: dict, name: str) -> Rule:
    """An instance of the class registered under `name` (a plug-in's nested config), read at check time."""
    return Rule(lambda v: isinstance(v, registry[name]), lambda: f"must be a {registry[name].__name__}")


def check_fields(config, prefix: str = "") -> None:
    """Check every field of `config` that its class's rule table names, in the table's order (the first error
    raised); `prefix` is how the messages name a nested config's fields (hard_attention_)."""
    for name, rule in type(config).rules.items():
        rule.check(prefix + name, getattr(config, name))


__all__ = ["Rule", "size", "number", "one_of", "flag", "registered", "check_fields", "is_number"]
