"""The errors and the label that model/, weights/ and every other package share: a leaf of the import graph
(standard library only), so the core's files import it without the rest of weights/. weights/common.py, the
old home of these names, re-exports them.

- `UserError`: the base of every error a user can cause (a bad option, path, checkpoint or dataset). Its
  message is one sentence saying what to do; train.py, sample.py and the tools catch this class alone.
- `ConfigError`: a configuration mistake (a bad option or value).
- `HookNameError`: a hook name that matches no hook point (model/hooks.py) or no cached value (lens/cache.py).
- `IGNORE_INDEX`: the label that every loss skips (padding, unmasked MLM positions).
"""

IGNORE_INDEX = -100  # PyTorch's and Hugging Face's default label to skip


class UserError(Exception):
    """An error the user caused and can fix; its message says how, in one sentence."""


class ConfigError(UserError, ValueError):
    """A user-caused configuration mistake; its message is one sentence saying what to do."""


class HookNameError(UserError, KeyError):
    """A hook name or pattern that matches no hook point of the model (or no cached value)."""

    def __str__(self) -> str:
        return str(self.args[0])


__all__ = ["IGNORE_INDEX", "UserError", "ConfigError", "HookNameError"]
