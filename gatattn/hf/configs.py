"""``config.output_attentions = True`` on a converted model.

transformers 5 refuses that setting for every attention implementation but ``"eager"``, in two
places of ``configuration_utils.PreTrainedConfig``: the ``output_attentions`` property's setter
and the strict-dataclass validator ``validate_output_attentions`` (run by ``config.validate()``
and ``save_pretrained``). Neither reads a registry or a flag: both compare the name with
``"eager"``, because the other built-in functions (SDPA, flash) cannot return the weights.

gatattn's function returns them (the weights the output is computed from), so ``register``
widens both checks to also accept ``"gatattn"``, and only it: every other implementation keeps
transformers' own check and message. Passing ``output_attentions=True`` to ``forward`` never
went through these checks.
"""

from __future__ import annotations

from typing import Any

__all__ = ["allow_output_attentions"]

_MARK = "_gatattn_accepts"


def allow_output_attentions(implementation: str) -> None:
    """Let configs whose attention implementation is ``implementation`` set
    ``output_attentions = True`` (idempotent; other implementations are checked as before)."""
    from transformers import PreTrainedConfig

    prop = PreTrainedConfig.__dict__.get("output_attentions")
    if isinstance(prop, property) and prop.fset is not None and not hasattr(prop.fset, _MARK):
        original_set = prop.fset

        def fset(self: Any, value: bool) -> None:
            if value and self._attn_implementation == implementation:
                self._output_attentions = value
            else:
                original_set(self, value)

        setattr(fset, _MARK, implementation)
        PreTrainedConfig.output_attentions = property(prop.fget, fset, prop.fdel, prop.__doc__)  # type: ignore[method-assign,assignment]

    check = PreTrainedConfig.__dict__.get("validate_output_attentions")
    if callable(check) and not hasattr(check, _MARK):
        original_check = check

        def validate_output_attentions(self: Any) -> None:
            if not (self.output_attentions and self._attn_implementation == implementation):
                original_check(self)

        setattr(validate_output_attentions, _MARK, implementation)
        PreTrainedConfig.validate_output_attentions = validate_output_attentions  # type: ignore[method-assign]
        # @strict collected each config class's validators when the class was made: swap ours in
        stack: list[type] = [PreTrainedConfig]
        while stack:
            cls = stack.pop()
            stack.extend(cls.__subclasses__())
            found = cls.__dict__.get("__class_validators__")
            if isinstance(found, list) and original_check in found:
                cls.__class_validators__ = [  # type: ignore[attr-defined]
                    validate_output_attentions if v is original_check else v for v in found
                ]
