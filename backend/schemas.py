"""The request bodies, validated at the edge: a body that does not match is a 400 that names the field.
Label Studio sends more than the backend reads, so unknown fields are allowed and ignored. The Label Studio
results a body carries are validated here too, into labelstudio/results.py's models; only those a task already
has (its annotations and predictions, or those of a project export) are the task's data rather than the
request: one of them that does not validate is kept as Unreadable, for its reader to skip and log."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, Strict, TypeAdapter, ValidationError

from model.flywheel.scopes import PROJECT_DIGITS, is_project_id

from .errors import InvalidRequest
from .labelstudio.results import Result

MAX_ID = 2**63 - 1  # Label Studio's ids are 64-bit integers
Id = Annotated[int, Strict(), Field(ge=0, le=MAX_ID)]
Text = Annotated[str, Field(max_length=1_000_000)]
Timestamp = Annotated[str, Field(max_length=64)]  # Label Studio's ISO 8601 times take about 30


def _project_id(value: Any) -> str:
    """Label Studio names a project as "id.timestamp", a number, or an object with an id."""
    if isinstance(value, dict):
        value = value.get("id")
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("a project is a number, \"id.timestamp\" or an object with an id")
    text = str(value).split(".")[0]
    if not is_project_id(text):
        raise ValueError(f"{str(value)[:40]!r} is not a project id (a number of up to {PROJECT_DIGITS} digits)")
    return str(int(text))


ProjectId = Annotated[str, BeforeValidator(_project_id)]


class Body(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


def problems(exc: ValidationError) -> str:
    """What is wrong, field by field (the first five), never echoing more than a little of the input."""
    return "; ".join(": ".join(filter(None, (".".join(str(part) for part in error["loc"]), error["msg"])))
                     for error in exc.errors()[:5])


class Unreadable(BaseModel):
    """A result or annotation a task already has that does not validate, and why."""

    model_config = ConfigDict(frozen=True)

    problem: str


def _or_unreadable(adapter: TypeAdapter[Any]) -> PlainValidator:
    def validate(value: Any) -> Any:
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            return Unreadable(problem=problems(exc))
    return PlainValidator(validate)


KeptResult = Annotated[Result | Unreadable, _or_unreadable(TypeAdapter(Result))]


class TaskLabels(Body):
    """One of a task's annotations or predictions, as far as a predict request reads it."""

    result: list[KeptResult] | None = None


KeptLabels = Annotated[TaskLabels | Unreadable, _or_unreadable(TypeAdapter(TaskLabels))]


class TaskData(Body):
    id: Id | None = None
    data: dict[str, Any]


class TaskBody(TaskData):
    annotations: list[KeptLabels] | None = None
    predictions: list[KeptLabels] | None = None


class PredictContext(Body):
    """What the labeling editor sends with an interactive request: the smart regions and the text."""

    result: list[Result] | None = None


class PredictParams(Body):
    context: PredictContext | None = None


class PredictBody(Body):
    tasks: list[TaskBody] = Field(max_length=10_000)
    project: ProjectId = ""
    label_config: Text | None = None
    params: PredictParams | None = None


class ProjectRef(Body):
    id: ProjectId = ""
    label_config: Text | None = None


def _project_ref(value: Any) -> Any:
    return value if isinstance(value, dict) else {"id": value}


class AnnotationBody(Body):
    id: Id
    result: list[Result] | None = None
    updated_at: Timestamp | None = None
    created_at: Timestamp | None = None
    was_cancelled: bool = False


class AnnotationRef(Body):
    id: Id


def _annotation_ref(value: Any) -> Any:
    return value if isinstance(value, dict) else {"id": value}


class TaskRef(Body):
    id: Id


class WebhookBody(Body):
    action: Annotated[str, Field(min_length=1, max_length=200)]
    project: Annotated[ProjectRef, BeforeValidator(_project_ref)] = ProjectRef()
    annotation: AnnotationBody | None = None
    task: TaskBody | None = None
    annotations: list[Annotated[AnnotationRef, BeforeValidator(_annotation_ref)]] | None = None
    tasks: list[TaskRef] | None = Field(None, max_length=100_000)  # TASKS_CREATED


class PreannotateBody(Body):
    project: ProjectId
    tasks: list[Id] | None = Field(None, max_length=100_000)


class SetupBody(Body):
    project: ProjectId = ""
    schema_: Text | None = Field(None, alias="schema")
    hostname: Annotated[str, Field(max_length=2000)] | None = None
    access_token: Annotated[str, Field(max_length=4000)] | None = None


class ExportedTask(TaskData):
    """A task of a project export, as legacy /train carries them, with its annotations."""

    annotations: list[Annotated[AnnotationBody | Unreadable, _or_unreadable(TypeAdapter(AnnotationBody))]] = []


class TrainBody(Body):
    project: ProjectId = ""
    label_config: Text | None = None
    annotations: list[ExportedTask] | None = None  # the project's annotated tasks


class JobStatusBody(Body):
    job: Annotated[str, Field(min_length=1, max_length=200)]


class RollbackBody(Body):
    project: ProjectId
    version: Annotated[str, Field(max_length=200)] | None = None
    kind: Literal["policy", "scorer"] = "policy"  # the project's policy, or its quality scorer


class ProjectQuery(Body):
    project: ProjectId = ""


class QualityQuery(Body):
    project: ProjectId
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


def parse(model: type[Body], data: Any) -> Any:
    """The body as `model`, or InvalidRequest naming what is wrong (never echoing more than a little)."""
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(problems(exc)) from None
