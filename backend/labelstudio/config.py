"""The label config: what the backend uses of it, and which label a region gets.

Predictions answer with brush masks (`BrushLabels`) or polygons (`PolygonLabels`) bound to the image:
with SEGAGENT_OUTPUT=auto, brushes when the config has both, polygons when it has only those."""
from __future__ import annotations

from dataclasses import dataclass

from label_studio_sdk.label_interface import LabelInterface

from ..errors import InvalidLabelConfig, InvalidRequest


@dataclass(frozen=True)
class Schema:
    """What the backend uses of a label config."""

    image_name: str
    image_key: str  # the task data field holding the image URL
    region_type: str  # brushlabels or polygonlabels: what predictions answer with
    region_name: str  # the control of that type
    labels: tuple[str, ...]  # its labels
    keypoint_names: tuple[str, ...] = ()
    rectangle_names: tuple[str, ...] = ()
    textarea_names: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: object, output: str = "auto") -> Schema:
        if not isinstance(config, str) or not config.strip():
            raise InvalidLabelConfig("the request has no label_config, and no project was set up with one")
        try:
            interface = LabelInterface(config)
        except Exception as exc:  # the SDK raises many types for bad XML
            raise InvalidLabelConfig(f"the label config is not valid XML: {exc}") from exc
        images = {o.name: o for o in interface.objects if o.tag == "Image"}
        if not images:
            raise InvalidLabelConfig("the label config has no <Image> tag")
        control = _output_control(interface, set(images), output)
        image = images[next(n for n in control.to_name if n in images)]
        bound = [c for c in interface.controls if image.name in (c.to_name or [])]

        def names(tag: str) -> tuple[str, ...]:
            return tuple(c.name for c in bound if c.tag == tag)

        return cls(
            image_name=image.name,
            image_key=image.value.lstrip("$"),
            region_type=control.tag.lower(),
            region_name=control.name,
            labels=tuple(control.labels),
            keypoint_names=names("KeyPointLabels"),
            rectangle_names=names("RectangleLabels"),
            textarea_names=tuple(c.name for c in interface.controls if c.tag == "TextArea"),
        )

    def choose_label(self, wanted: str | None) -> str:
        """The label for a region: the one asked for if the output control has it, else its only one."""
        if wanted and wanted in self.labels:
            return wanted
        if len(self.labels) == 1:
            return self.labels[0]
        if wanted:
            raise InvalidRequest(f"label {wanted!r} is not one of the {self.tag} {list(self.labels)}")
        raise InvalidRequest(f"several {self.tag} and none selected: select a label first")

    @property
    def tag(self) -> str:
        """The output control's tag as the config writes it."""
        return {"brushlabels": "BrushLabels", "polygonlabels": "PolygonLabels"}[self.region_type]


OUTPUT_TAGS = {"brush": ("BrushLabels",), "polygon": ("PolygonLabels",), "auto": ("BrushLabels", "PolygonLabels")}


def _output_control(interface: LabelInterface, images: set[str], output: str):
    """The first control of the preferred output tag bound to an image."""
    for tag in OUTPUT_TAGS[output]:
        controls = [c for c in interface.controls if c.tag == tag and set(c.to_name or []) & images]
        if controls:
            return controls[0]
    wanted = " or ".join(f"<{tag}>" for tag in OUTPUT_TAGS[output])
    raise InvalidLabelConfig(f"the label config has no {wanted} tag bound to an <Image>"
                             + ("" if output == "auto" else f" (SEGAGENT_OUTPUT={output})"))
