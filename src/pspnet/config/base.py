"""What every section of the schema shares: the strict base model, value types and split names."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: The split every model is scored and gated on.
VAL_SPLIT = "val"
#: The labelled test split a source may ship (CamVid's test/ + testannot/): scored only apart
#: from val, by the ``test`` stage or ``pspnet evaluate --split test``, never by the gate.
TEST_SPLIT = "test"

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
#: A share of the image height, strictly between 0 and 1.
HeightShare = Annotated[float, Field(gt=0, lt=1)]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

