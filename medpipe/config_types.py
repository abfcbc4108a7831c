"""Number types of the config sections: every numeric setting is a finite number (never a boolean) in a range.

The ranges are pydantic constraints, so a bad value fails when the config loads, with pydantic's message (which
medpipe.config rewords as `key=value: message`, e.g. `train.lr=0: Input should be greater than 0`), before any
data is read. A section states a field's own range as `Annotated[Int, Field(ge=.., le=..)]`; the aliases below
are the ranges many fields share.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal, Union

import annotated_types

from pydantic import BeforeValidator, ConfigDict, Discriminator, Field, Tag
from pydantic_core import PydanticCustomError

__all__ = [
    "STRICT",
    "Int",
    "Float",
    "Count",
    "CountOrOff",
    "Probability",
    "Fraction",
    "PositiveFloat",
    "NonNegativeFloat",
    "ClassWeights",
    "UNION_TAGS",
    "allowed_range",
]

# Unknown keys are errors; assignments after loading are validated too.
STRICT = ConfigDict(extra="forbid", validate_assignment=True)


def _refuse_bool(value: Any) -> Any:
    """Pass anything but a boolean on to pydantic's number parsing.

    YAML reads `true`, `yes` and `on` as booleans, and pydantic's lax mode takes a boolean as 1: `train.epochs=true`
    trained one epoch. Lax mode itself stays: PyYAML (YAML 1.1) reads `1e-3` as the string '1e-3', which has always
    meant 0.001 in a config here.
    """
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "Input should be a number, not a boolean")
    return value


_NO_BOOL = BeforeValidator(_refuse_bool)

Int = Annotated[int, _NO_BOOL]
Float = Annotated[float, _NO_BOOL, Field(allow_inf_nan=False)]  # nan would pass every `x < bound` check later

Count = Annotated[Int, Field(ge=1)]  # epochs, batch sizes, workers, attempts
CountOrOff = Annotated[Int, Field(ge=0)]  # a count where 0 means "off"; the field's comment says what off is
Probability = Annotated[Float, Field(ge=0, le=1)]
Fraction = Annotated[Float, Field(ge=0, lt=1)]  # dropout, jitter strengths: 1 would zero everything
PositiveFloat = Annotated[Float, Field(gt=0)]  # learning rates, tolerances
NonNegativeFloat = Annotated[Float, Field(ge=0)]  # weights, weight decay, concentration parameters

# train.class_weights: a list of weights, or the name of a rule. The discriminator validates a string as a name
# and anything else as a list, so a bad list reports its bad entry alone (a plain union adds "should be 'auto' or
# 'none'" for every list). Pydantic puts the tag into an error's location; UNION_TAGS lets the rewording drop it
# (bracketed: no field or mapping key is spelt so).
_WEIGHTS_LIST, _WEIGHTS_RULE = "[weights]", "[rule]"
UNION_TAGS = frozenset({_WEIGHTS_LIST, _WEIGHTS_RULE})
ClassWeights = Annotated[
    Union[Annotated[list[NonNegativeFloat], Tag(_WEIGHTS_LIST)],
          Annotated[Literal["auto", "none"], Tag(_WEIGHTS_RULE)]],
    Discriminator(lambda value: _WEIGHTS_RULE if isinstance(value, str) else _WEIGHTS_LIST),
]


def _bounds(tp: Any) -> list[Any]:
    """The annotated_types bounds (Ge, Gt, Le, Lt) stacked on an Annotated type, outermost last."""
    found = []
    while typing.get_origin(tp) is Annotated:
        base, *metadata = typing.get_args(tp)
        for item in metadata:
            found.extend(m for m in [item, *getattr(item, "metadata", ())]
                         if isinstance(m, (annotated_types.Ge, annotated_types.Gt, annotated_types.Le,
                                           annotated_types.Lt)))
        tp = base
    return found


def allowed_range(tp: Any) -> str | None:
    """`tp`'s range in words, e.g. "0 <= value <= 1", or None for a type without bounds. Pydantic's own message
    names only the bound a value broke; the config errors add the whole range."""
    low = high = None
    for bound in _bounds(tp):
        if isinstance(bound, annotated_types.Ge):
            low = f"{bound.ge} <= "
        elif isinstance(bound, annotated_types.Gt):
            low = f"{bound.gt} < "
        elif isinstance(bound, annotated_types.Le):
            high = f" <= {bound.le}"
        elif isinstance(bound, annotated_types.Lt):
            high = f" < {bound.lt}"
    return None if low is None and high is None else f"{low or ''}value{high or ''}"
