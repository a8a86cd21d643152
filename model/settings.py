"""Every setting of the backend, the CLI and the training jobs, in one model read from the environment.
Each default works offline on a CPU. `Settings()` reads the environment; `Settings(tool="sam", ...)`
sets fields by name (what is not given still comes from the environment)."""
from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Never fetched, whatever a task says: link-local (cloud metadata services live there) and "this host".
DEFAULT_BANNED_SUBNETS = "169.254.0.0/16,0.0.0.0/8,fe80::/10,fd00:ec2::254/128,100.100.100.200/32"
# Credentials are compared byte for byte: their spaces are kept.
VERBATIM = frozenset({"BASIC_AUTH_USER", "BASIC_AUTH_PASS"})
# Credentials (a Redis URL may carry a password) stay out of job specs, which go to disk and to Redis.
# The basic auth user goes too: a job needs no credentials, and half of them would not validate.
SECRETS = frozenset({"label_studio_api_key", "basic_auth_user", "basic_auth_pass", "redis_url", "hf_token",
                     "database_url"})
DATABASE_SCHEMES = ("postgresql://", "postgresql+psycopg://", "postgres://")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True)

    sam_checkpoint: str = Field("", alias="SAM_CHECKPOINT", description=(
        "SAM ViT-B/L/H checkpoint: a path, or an http(s) URL downloaded once into `SEGAGENT_DATA_DIR/checkpoints`"))
    sam_sha256: str = Field("", alias="SAM_CHECKPOINT_SHA256",
                            description="the SHA-256 a downloaded SAM checkpoint must have (a URL is refused without it)")
    sam2_checkpoint: str = Field("", alias="SAM2_CHECKPOINT",
                                 description=(
                                     "SAM 2 checkpoint (`sam2.1_hiera_tiny.pt` and the others): a path, or an http(s) "
                                     "URL downloaded once into `SEGAGENT_DATA_DIR/checkpoints`"))
    sam2_sha256: str = Field("", alias="SAM2_CHECKPOINT_SHA256",
                             description="the SHA-256 a downloaded SAM 2 checkpoint must have (a URL is refused without it)")
    sam2_config: str = Field("", alias="SAM2_CONFIG", description=(
        "the SAM 2 model config: `configs/sam2.1/sam2.1_hiera_t.yaml` (`_s`, `_b+`, `_l`) as shipped in the `sam2` "
        "package, or a YAML file of that form; empty: chosen from the checkpoint's file name when it is one of Meta's"))
    sam3_checkpoint: str = Field("", alias="SAM3_CHECKPOINT", description=(
        "SAM 3's weights: a folder written by transformers' `save_pretrained` (facebook/sam3's layout), or a hub name "
        "(`facebook/sam3`, gated) downloaded once into `SEGAGENT_DATA_DIR/checkpoints/hub` at `SAM3_REVISION`"))
    sam3_revision: str = Field("", alias="SAM3_REVISION", description=(
        "the commit of a hub `SAM3_CHECKPOINT` to download (40 hexadecimal characters); a hub name is refused "
        "without it"))
    hf_token: str = Field("", alias="HF_TOKEN", repr=False, description=(
        "a Hugging Face read token, for a gated hub `SAM3_CHECKPOINT` (facebook/sam3): sent to the hub only, "
        "never logged"))
    # its default reads the checkpoints; ahead of the fields that can fail, so their errors come alone
    tool: Literal["classical", "sam", "sam2", "sam3"] = Field(
        default_factory=lambda data: "sam" if data["sam_checkpoint"] else "sam2" if data["sam2_checkpoint"]
        else "sam3" if data["sam3_checkpoint"] else "classical", alias="SEGAGENT_TOOL",
        description=(
            "the interactive tool, the gate's too: `classical` (the CPU tool), `sam`, `sam2` or `sam3`; by default "
            "`sam` when `SAM_CHECKPOINT` is set, else `sam2` when `SAM2_CHECKPOINT` is, else `sam3` when "
            "`SAM3_CHECKPOINT` is, else `classical`"))
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", alias="SEGAGENT_DEVICE", description=(
            "where the SAM tools, an in-process policy and its LoRA training run (the SegAgent-Qwen server and "
            "trainer read it too): `auto` (CUDA when a usable GPU is there, else the CPU, with a warning when torch is "
            "a CUDA build that sees no GPU), `cuda` (the backend refuses to start without a usable GPU, and says why), "
            "`cpu`; `/health`'s `device` says where the tool and the policy run (`cpu`, `cuda`, or `remote` for an "
            "endpoint)"))
    policy: str = Field("", alias="SEGAGENT_POLICY", description=(
        "the policy: a local folder or hub id of a transformers VLM, or an `http(s)://.../v1` OpenAI-compatible "
        "endpoint; empty: no policy, so no auto mode"))
    policy_adapter: str = Field("", alias="SEGAGENT_POLICY_ADAPTER",
                                description="a LoRA adapter (peft) on top of a local policy")
    policy_model: str = Field("", alias="SEGAGENT_POLICY_MODEL",
                              description=(
                                  "the model name to ask a remote endpoint for (empty: the endpoint's first; set it "
                                  "when the endpoint may start after the backend)"))
    policy_format: Literal["segagent", "segagent-qwen"] = Field(
        "segagent", alias="SEGAGENT_POLICY_FORMAT", description=(
            "the policy's family: how it writes points and what it is shown. `segagent`: (x, y), the overlay at alpha "
            "0.4, at most 448 px, PNG; `segagent-qwen` (the released checkpoint): row, column, the overlay at alpha 0.5 "
            "at full resolution, JPEG"))
    policy_python: str = Field("", alias="SEGAGENT_POLICY_PYTHON", description=(
        "the interpreter of the SegAgent-Qwen server's environment on this machine: its fine-tuning runs there as a "
        "worker process (empty: through `REDIS_URL`'s `segagent-training-qwen` queue, or not at all)"))
    agent_steps: int = Field(5, ge=1, alias="SEGAGENT_AGENT_STEPS",
                             description="actions per episode (the paper evaluates 1 to 7), the gate's episodes too")
    agent_samples: int = Field(1, ge=1, alias="SEGAGENT_AGENT_SAMPLES",
                               description="candidate actions per step: 1 is greedy; above 1, PRM-guided tree search")
    prm: Literal["tool", "policy"] = Field("tool", alias="SEGAGENT_PRM",
                                           description=(
                                               "what scores candidates in the search: `tool` (the tool's confidence) "
                                               "or `policy` (the policy asked for the mask's IoU)"))
    return_clicks: bool = Field(False, alias="SEGAGENT_RETURN_CLICKS",
                                description="return the agent's clicks as keypoint regions")
    interactive_score: Literal["tool", "quality"] = Field(
        "tool", alias="SEGAGENT_INTERACTIVE_SCORE",
        description=(
            "an interactive answer's score: `tool`, the tool's own confidence (adds nothing to a click), or "
            "`quality`, the quality scorer's estimate (about 0.15 s more per click on the CPU); stored predictions "
            "(refine, auto, pre-annotation) are always scored by the quality scorer"))
    output: Literal["auto", "brush", "polygon"] = Field(
        "auto", alias="SEGAGENT_OUTPUT",
        description=(
            "predicted regions: `brush` masks or `polygon`s; `auto`: brushes when the label config has `BrushLabels`, "
            "else polygons"))
    polygon_tolerance: float = Field(1.0, ge=0, alias="SEGAGENT_POLYGON_TOLERANCE",
                                     description="pixels a polygon's outline may move from the mask (less on small objects)")
    concept_threshold: float = Field(0.5, ge=0, le=1, alias="SEGAGENT_CONCEPT_THRESHOLD", description=(
        "concept pre-annotation (a tool that finds every instance of a phrase: `sam3`): an instance the tool "
        "scores at or below this is left out"))
    concept_prompts: str = Field("", alias="SEGAGENT_CONCEPT_PROMPTS", description=(
        "concept pre-annotation: the phrase to look for per label, a JSON object such as `{\"Car\": \"red car\"}`; "
        "a label not in it is looked for by its name"))
    concept_max_instances: int = Field(20, ge=1, le=200, alias="SEGAGENT_CONCEPT_MAX_INSTANCES", description=(
        "concept pre-annotation: the most instances one label (or description) gets per task, the highest scored"))
    data_dir: Path = Field(Path("data"), alias="SEGAGENT_DATA_DIR",
                           description=(
                               "the annotation store, the trajectories, downloaded checkpoints, the registry, the "
                               "pre-annotation queue"))
    database_url: str = Field("", alias="SEGAGENT_DATABASE_URL", repr=False, description=(
        "a PostgreSQL URL (`postgresql://user:password@host:5432/db`): every store (annotations, trajectories, the "
        "pre-annotation queue, the registries and their jobs, quality labels) lives there, shared by backends and "
        "workers on several machines; empty: SQLite files in `SEGAGENT_DATA_DIR`, for one machine"))
    blob_dir: Path | None = Field(None, alias="SEGAGENT_BLOB_DIR", description=(
        "where files shared by every machine live: images by digest, trained adapters and scorer versions, the "
        "embedding store; a folder all of them mount (written by atomic renames); empty: `SEGAGENT_DATA_DIR`"))
    label_studio_url: str = Field("", alias="LABEL_STUDIO_URL",
                                  description=(
                                      "where Label Studio is, to fetch `/data/upload/...`, `/data/local-files/...` "
                                      "and cloud storage images, pre-annotate and write back quality scores; empty: the "
                                      "`hostname` Label Studio sends to `/setup`"))
    label_studio_api_key: str = Field("", alias="LABEL_STUDIO_API_KEY", repr=False,
                                      description=(
                                          "Label Studio's token, used with `LABEL_STUDIO_URL` only (empty: the "
                                          "`access_token` Label Studio sends to `/setup`, a legacy token, which "
                                          "Label Studio 1.23 refuses unless the organisation turned legacy tokens "
                                          "on); a personal access token (or a legacy one) works"))
    basic_auth_user: str = Field("", alias="BASIC_AUTH_USER", description=(
        "with `BASIC_AUTH_PASS`: the user every route but `/health` needs (set the same in Label Studio's model "
        "connection); set both or neither"))
    basic_auth_pass: str = Field("", alias="BASIC_AUTH_PASS", repr=False,
                                 description="with `BASIC_AUTH_USER`: the basic auth password")
    webhook_auth: bool = Field(True, alias="SEGAGENT_WEBHOOK_AUTH", description=(
        "with basic auth on: after each project's `/setup`, give Label Studio's webhook to this backend the "
        "`Authorization` header through Label Studio's API (its token must be allowed to edit the project's "
        "webhooks), since Label Studio makes it with none; off: set the header by hand"))
    redis_url: str = Field("", alias="REDIS_URL", repr=False,
                           description=(
                               "a Redis whose RQ queues run training jobs (`segagent-training`) and pre-annotation "
                               "(`segagent-preannotation`) instead of a local worker process and threads"))
    prompt_fields: tuple[str, ...] = Field(("prompt", "text", "caption", "description"),
                                           alias="SEGAGENT_PROMPT_FIELDS",
                                           description="task data fields read as the object's description")
    max_image_mb: float = Field(50, gt=0, alias="SEGAGENT_MAX_IMAGE_MB",
                               description="larger task images are refused (before decoding)")
    max_image_pixels: int = Field(80_000_000, gt=0, alias="SEGAGENT_MAX_IMAGE_PIXELS",
                                  description="larger task images are refused before decoding")
    max_mask_pixels: int = Field(500_000_000, gt=0, alias="SEGAGENT_MAX_MASK_PIXELS", description=(
        "the pixels of the masks one request's brush and polygon regions make, all together (a byte of memory "
        "each): more is refused (413) before any is made"))
    fetch_timeout: float = Field(20.0, gt=0, alias="SEGAGENT_FETCH_TIMEOUT",
                                 description="seconds a whole image fetch may take, redirects included")
    banned_subnets: tuple[Network, ...] = Field(DEFAULT_BANNED_SUBNETS, alias="SEGAGENT_BANNED_SUBNETS",
                                                validate_default=True,
                                                description=(
                                                    "image hosts in these subnets (link-local, \"this host\", cloud "
                                                    "metadata addresses) are never fetched (checked on every "
                                                    "redirect)"))
    image_cache_mb: float = Field(512, ge=0, alias="SEGAGENT_IMAGE_CACHE_MB", description="decoded images, LRU by bytes")
    tool_cache_mb: float = Field(1024, ge=0, alias="SEGAGENT_TOOL_CACHE_MB",
                                 description="encoded images (SAM embeddings), LRU by bytes")
    embedding_store_mb: float = Field(2048, ge=0, alias="SEGAGENT_EMBEDDING_STORE_MB", description=(
        "a deep tool's image encodings kept on disk (`SEGAGENT_DATA_DIR/embeddings`, or `SEGAGENT_BLOB_DIR/embeddings` "
        "when set), shared by the backend and its workers and kept across restarts; least recently used out past "
        "this bound; 0 turns it off"))
    embedding_store_precision: Literal["float16", "float32"] = Field(
        "float16", alias="SEGAGENT_EMBEDDING_STORE_PRECISION",
        description="the precision of the stored encodings (float16: half the bytes; see docs/tools.md)")
    interactive_ttl: float = Field(600.0, ge=0, alias="SEGAGENT_INTERACTIVE_TTL",
                                   description="seconds an object's clicks are remembered between requests")
    session_cache_mb: float = Field(256, ge=0, alias="SEGAGENT_SESSION_CACHE_MB",
                                    description="interactive sessions (each keeps its last mask), oldest evicted")
    interactive_concurrency: int = Field(4, ge=1, alias="SEGAGENT_INTERACTIVE_CONCURRENCY", description=(
        "clicks (and smart boxes) the tool works on at once; one more is answered 503 with `Retry-After: 1` at "
        "once. Keep it below the server's threads (`THREADS`, 8), so that slow clicks never hold every thread "
        "and `/health` and the other routes always have one"))
    preannotate_workers: int = Field(2, ge=1, le=16, alias="SEGAGENT_PREANNOTATE_WORKERS",
                                     description=(
                                         "tasks pre-annotated at once in the background (`/preannotate`, "
                                         "`TASKS_CREATED`)"))
    preannotation_lease_seconds: float = Field(60.0, ge=5, alias="SEGAGENT_PREANNOTATION_LEASE_SECONDS", description=(
        "how long a task being pre-annotated stays its worker's without a renewal (renewed every quarter of it): "
        "a worker killed with `kill -9` has its task run elsewhere after this"))
    retention_days: float = Field(30.0, ge=0, alias="SEGAGENT_RETENTION_DAYS",
                                  description=(
                                      "recorded agent episodes and interactive requests older than this many days, "
                                      "never followed by an annotation, are forgotten (hourly)"))
    max_request_mb: float = Field(64, gt=0, alias="SEGAGENT_MAX_REQUEST_MB", description="larger request bodies get 413")
    policy_scope: Literal["project", "shared"] = Field("project", alias="SEGAGENT_POLICY_SCOPE",
                                                       description=(
                                                           "`project`: each project trains and serves its own "
                                                           "versions; `shared`: one for all"))
    train_every: int = Field(50, ge=0, alias="SEGAGENT_TRAIN_EVERY",
                             description="a training job after this many new trajectories of a scope (0: off)")
    train_interval: float = Field(0.0, ge=0, alias="SEGAGENT_TRAIN_INTERVAL",
                                  description=(
                                      "seconds between periodic training jobs for scopes with new trajectories "
                                      "(0: off)"))
    train_timeout: float = Field(6 * 3600.0, gt=0, alias="SEGAGENT_TRAIN_TIMEOUT",
                                 description="seconds an RQ worker gives one job")
    train_epochs: int = Field(1, ge=1, alias="SEGAGENT_TRAIN_EPOCHS", description="LoRA epochs of a training job")
    train_learning_rate: float = Field(2e-4, gt=0, alias="SEGAGENT_TRAIN_LR",
                                       description="LoRA learning rate of a training job")
    train_lora_rank: int = Field(16, ge=1, alias="SEGAGENT_TRAIN_LORA_RANK", description="LoRA rank (alpha is twice it)")
    train_accumulation: int = Field(4, ge=1, alias="SEGAGENT_TRAIN_ACCUMULATION",
                                    description="training turns per optimizer step")
    train_max_turns: int = Field(4000, ge=1, alias="SEGAGENT_TRAIN_MAX_TURNS",
                                 description="training turns per epoch, the newest first")
    train_held_out: float = Field(0.2, ge=0, lt=1, alias="SEGAGENT_TRAIN_HELD_OUT",
                                  description="the fraction of tasks held out for the gate")
    train_seed: int = Field(0, alias="SEGAGENT_TRAIN_SEED", description="the seed of the split and of training")
    gate_turns: int = Field(200, ge=1, alias="SEGAGENT_GATE_TURNS",
                            description="held-out steps the gate asks for their next action")
    gate_episodes: int = Field(16, ge=1, alias="SEGAGENT_GATE_EPISODES",
                               description="held-out objects the gate segments from scratch with each version")
    gate_tolerance: float = Field(0.0, alias="SEGAGENT_GATE_TOLERANCE",
                                  description=(
                                      "how much worse than the active version a candidate may be and still be "
                                      "promoted"))
    scorer_refit_every: int = Field(50, ge=0, alias="SEGAGENT_SCORER_REFIT_EVERY", description=(
        "a project's quality scorer is refitted after this many new labels from corrections (0: only on Start "
        "training without a policy); see docs/quality.md"))
    scorer_prior_strength: float = Field(1.0, ge=0, alias="SEGAGENT_SCORER_PRIOR_STRENGTH", description=(
        "how strongly a project's scorer is held to the shipped one: the ridge pull of its correction toward none, "
        "in labels' worth (its feature weights 10 times harder)"))
    scorer_gate_tolerance: float = Field(0.0, ge=0, alias="SEGAGENT_SCORER_GATE_TOLERANCE", description=(
        "how much higher a refitted scorer's held-out MAE, and lower its Pearson beyond that Pearson's standard "
        "error on the held-out labels, may be than the active scorer's for it to be promoted"))
    scorer_match_iou: float = Field(0.3, ge=0, le=1, alias="SEGAGENT_SCORER_MATCH_IOU", description=(
        "a submitted region with no prediction of its id is the same object as a prediction of its label when "
        "their IoU is at least this (one to one, best pairs first): the prediction's label for the scorer"))

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments first, then the environment by variable name only: no .env or secrets files."""
        return init_settings, Environment(settings_cls)

    @field_validator("policy_format", "prm", "policy_scope", "tool", "output", "device", "interactive_score",
                     mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("label_studio_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("label_studio_url", "policy")
    @classmethod
    def _no_space_in_urls(cls, value: str) -> str:
        """A URL holds no whitespace (RFC 3986); a password with a space would also escape the redaction of what
        is shown and logged."""
        if value.startswith(("http://", "https://")) and any(c.isspace() for c in value):
            raise ValueError("a URL has no spaces in it: percent-encode them (%20)")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str) -> str:
        if value and not value.startswith(DATABASE_SCHEMES):
            raise ValueError("SEGAGENT_DATABASE_URL is a postgresql:// URL (empty: SQLite in SEGAGENT_DATA_DIR)")
        return "postgresql://" + value.split("://", 1)[1] if value.startswith("postgres://") else value

    @field_validator("blob_dir", mode="before")
    @classmethod
    def _empty_is_data_dir(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    @field_validator("prompt_fields", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _items(value) if isinstance(value, str) else value

    @field_validator("concept_prompts", mode="before")
    @classmethod
    def _phrases(cls, value: Any) -> Any:
        """A JSON object of label -> phrase (a dict is accepted and written as one)."""
        try:
            phrases = json.loads(value) if isinstance(value, str) and value.strip() else value or {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc}): write a JSON object of label -> phrase") from exc
        if not isinstance(phrases, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                                    for k, v in phrases.items()):
            raise ValueError("a JSON object of label -> phrase, each phrase non-empty text")
        return json.dumps(phrases, ensure_ascii=False) if phrases else ""

    @field_validator("banned_subnets", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> tuple[Network, ...]:
        items = _items(value) if isinstance(value, str) else value
        return tuple(ipaddress.ip_network(item, strict=False) for item in items)

    @model_validator(mode="after")
    def _basic_auth_whole(self) -> Settings:
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither: with only one of them basic "
                             "auth would be off and every route open")
        return self

    @property
    def basic_auth(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def concept_phrases(self) -> dict[str, str]:
        """SEGAGENT_CONCEPT_PROMPTS read: label -> the phrase looked for."""
        return json.loads(self.concept_prompts) if self.concept_prompts else {}

    def store(self, name: str) -> str | Path:
        """Where a store's rows are: the database URL, or its SQLite file in the data folder."""
        return self.database_url or self.data_dir / f"{name}.sqlite3"

    @property
    def blobs(self) -> Path:
        """The folder of the files every machine shares."""
        return self.blob_dir or self.data_dir

    @property
    def max_image_bytes(self) -> int:
        return _bytes(self.max_image_mb)

    @property
    def image_cache_bytes(self) -> int:
        return _bytes(self.image_cache_mb)

    @property
    def tool_cache_bytes(self) -> int:
        return _bytes(self.tool_cache_mb)

    @property
    def embedding_store_bytes(self) -> int:
        return _bytes(self.embedding_store_mb)

    @property
    def session_cache_bytes(self) -> int:
        return _bytes(self.session_cache_mb)

    @property
    def max_request_bytes(self) -> int:
        return _bytes(self.max_request_mb)


class Environment(PydanticBaseSettingsSource):
    """Each field from its environment variable, never by its field name; a blank value means the default."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return os.environ.get(field.alias or field_name), field.alias or field_name, False

    def __call__(self) -> dict[str, str]:
        values = {}
        for name in (field.alias for field in self.settings_cls.model_fields.values() if field.alias):
            value = os.environ.get(name, "")
            if value.strip():
                values[name] = value if name in VERBATIM else value.strip()
        return values


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _bytes(megabytes: float) -> int:
    return int(megabytes * (1 << 20))
