"""The label config: what the backend uses of it, and which label a region gets."""
from __future__ import annotations

from dataclasses import dataclass

from label_studio_sdk.label_interface import LabelInterface

from ..errors import InvalidLabelConfig, InvalidRequest


@dataclass(frozen=True)
class Schema:
    """What the backend uses of a label config."""

    image_name: str
    image_key: str  # the task data field holding the image URL
    brush_name: str
    labels: tuple[str, ...]
    keypoint_names: tuple[str, ...] = ()
    rectangle_names: tuple[str, ...] = ()
    textarea_names: tuple[str, ...] = ()
    polygon_names: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: object) -> Schema:
        if not isinstance(config, str) or not config.strip():
            raise InvalidLabelConfig("the request has no label_config, and no project was set up with one")
        try:
            interface = LabelInterface(config)
        except Exception as exc:  # the SDK raises many types for bad XML
            raise InvalidLabelConfig(f"the label config is not valid XML: {exc}") from exc
        images = {o.name: o for o in interface.objects if o.tag == "Image"}
        if not images:
            raise InvalidLabelConfig("the label config has no <Image> tag")
        brushes = [c for c in interface.controls if c.tag == "BrushLabels" and set(c.to_name) & set(images)]
        if not brushes:
            raise InvalidLabelConfig("the label config has no <BrushLabels> tag bound to an <Image>")
        control = brushes[0]
        image = images[next(n for n in control.to_name if n in images)]
        bound = [c for c in interface.controls if image.name in (c.to_name or [])]

        def names(tag: str) -> tuple[str, ...]:
            return tuple(c.name for c in bound if c.tag == tag)

        return cls(
            image_name=image.name,
            image_key=image.value.lstrip("$"),
            brush_name=control.name,
            labels=tuple(control.labels),
            keypoint_names=names("KeyPointLabels"),
            rectangle_names=names("RectangleLabels"),
            textarea_names=tuple(c.name for c in interface.controls if c.tag == "TextArea"),
            polygon_names=names("PolygonLabels"),
        )

    def choose_label(self, wanted: str | None) -> str:
        """The brush label for a region: the one asked for if the BrushLabels tag has it, else the only one."""
        if wanted and wanted in self.labels:
            return wanted
        if len(self.labels) == 1:
            return self.labels[0]
        if wanted:
            raise InvalidRequest(f"label {wanted!r} is not one of the BrushLabels {list(self.labels)}")
        raise InvalidRequest("several BrushLabels and none selected: select a label first")
