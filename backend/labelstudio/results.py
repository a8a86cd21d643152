"""A Label Studio result (a region, a text or a choice of an annotation, a prediction or a predict request's
context) as a typed model, told apart by its `type` and validated once, with the request body (schemas.py).
The types the backend reads have models of their own; a result of any other type is an OtherResult, accepted
and ignored. Coordinates are checked as geometry.py says; only the pixel limit waits until a mask is made."""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Strict, Tag, model_validator
from pydantic_core import PydanticCustomError

from .geometry import Extent, Percent, Pixels, image_size

MAX_RLE_ITEMS = 4_000_000  # an RLE longer than this is refused rather than decoded in pure Python
MAX_POLYGON_POINTS = 100_000
MAX_REGION_ID = 64  # the editor's ids are short; the backend keeps one per interactive object


def _label_names(value: Any) -> Any:
    if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
        raise PydanticCustomError("label_names", "must be a list of label names")
    return tuple(value)


def _region_id(value: Any) -> str | None:
    """The region's id in the labeling editor, which it sends again with each request until accepted."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PydanticCustomError("region_id", "a region id is a string or a number")
    return str(value)[:MAX_REGION_ID]


def _outline(value: Any) -> Any:
    if not isinstance(value, list) or not 3 <= len(value) <= MAX_POLYGON_POINTS:
        raise PydanticCustomError("polygon_points", "a polygon needs a list of at least 3 [x, y] points, "
                                  "at most {limit}", {"limit": MAX_POLYGON_POINTS})
    return value


def _point(value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PydanticCustomError("polygon_point", "a polygon point must be [x, y]")
    return value


def _text(value: Any) -> Any:
    """A TextArea's text: Label Studio sends a list of lines; they are read as one text."""
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return " ".join(value)
    if not isinstance(value, str):
        raise PydanticCustomError("text", "must be a text or a list of texts")
    return value


Labels = Annotated[tuple[str, ...], BeforeValidator(_label_names)]
RegionId = Annotated[str | None, BeforeValidator(_region_id)]
Byte = Annotated[int, Strict(), Field(ge=0, le=255)]
Point = Annotated[tuple[Percent, Percent], BeforeValidator(_point)]


class Value(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    labels: Labels = ()


class BrushValue(Value):
    format: Literal["rle"] = "rle"
    rle: Annotated[list[Byte], Field(min_length=8, max_length=MAX_RLE_ITEMS, fail_fast=True)]
    labels: Labels = Field((), alias="brushlabels")


class PolygonValue(Value):
    points: Annotated[list[Point], Field(fail_fast=True), BeforeValidator(_outline)]
    labels: Labels = Field((), alias="polygonlabels")


class KeypointValue(Value):
    x: Percent
    y: Percent
    labels: Labels = Field((), alias="keypointlabels")


class RectangleValue(Value):
    x: Percent
    y: Percent
    width: Extent
    height: Extent
    labels: Labels = Field((), alias="rectanglelabels")


class TextAreaValue(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    text: Annotated[str, BeforeValidator(_text)] = ""


class KnownResult(BaseModel):
    """What every result of a type the backend reads carries besides its value."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    kind: ClassVar[str]

    id: RegionId = None
    to_name: str | None = None  # the image it is on
    original_width: Pixels | None = None
    original_height: Pixels | None = None

    def image_size(self, max_pixels: int) -> tuple[int, int]:
        return image_size(self.original_width, self.original_height, self.kind, max_pixels)


class LabelledResult(KnownResult):
    value: Value

    @property
    def label(self) -> str | None:
        return next(iter(self.value.labels), None)


class BrushResult(LabelledResult):
    kind = "brushlabels"
    value: BrushValue

    @model_validator(mode="after")
    def _rle_fits_the_image(self) -> BrushResult:
        if self.original_width is not None and self.original_height is not None:
            declared = int.from_bytes(bytes(self.value.rle[:4]), "big")
            needed = self.original_width * self.original_height * 4
            if declared != needed:
                raise PydanticCustomError("rle_size", "the RLE declares {declared} values, the image needs {needed}",
                                          {"declared": declared, "needed": needed})
        return self


class PolygonResult(LabelledResult):
    kind = "polygonlabels"
    value: PolygonValue


class KeypointResult(LabelledResult):
    kind = "keypointlabels"
    value: KeypointValue
    is_positive: bool = True


class RectangleResult(LabelledResult):
    kind = "rectanglelabels"
    value: RectangleValue


class TextAreaResult(KnownResult):
    kind = "textarea"
    value: TextAreaValue


class OtherResult(BaseModel):
    """A result of a type the backend does not read (choices, ellipses, labels on text, ...)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    kind: ClassVar[str] = "other"


KINDS = frozenset(model.kind for model in (BrushResult, PolygonResult, KeypointResult, RectangleResult, TextAreaResult))


def _kind(value: Any) -> str:
    """The model a result is validated as: its type's, any letter case, else OtherResult's."""
    if isinstance(value, (KnownResult, OtherResult)):
        return value.kind
    kind = value.get("type") if isinstance(value, dict) else None
    kind = kind.lower() if isinstance(kind, str) else None
    return kind if kind in KINDS else OtherResult.kind


Result = Annotated[
    Annotated[BrushResult, Tag(BrushResult.kind)]
    | Annotated[PolygonResult, Tag(PolygonResult.kind)]
    | Annotated[KeypointResult, Tag(KeypointResult.kind)]
    | Annotated[RectangleResult, Tag(RectangleResult.kind)]
    | Annotated[TextAreaResult, Tag(TextAreaResult.kind)]
    | Annotated[OtherResult, Tag(OtherResult.kind)],
    Discriminator(_kind),
]
