"""Number types of the config sections: every numeric setting is a finite number (never a boolean) in a range.

The ranges are pydantic constraints, so a bad value fails when the config loads, with pydantic's message (which
medpipe.config rewords as `key=value: message`, e.g. `train.lr=0: Input should be greater than 0`), before any
data is read. A section states a field's own range as `Annotated[Int, Field(ge=.., le=..)]`; the aliases below
are the ranges many fields share.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

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
