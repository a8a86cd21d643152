"""The composition root: every component built once from the settings, wired together, and closed
with the app (background threads stop, executors shut down)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from model.flywheel.registry import Registry
from model.flywheel.trajectories import TrajectoryStore
from model.settings import Settings

from .capabilities import Capabilities
from .connection import LabelStudioConnection
from .images import ImageFetcher
from .ingest import AnnotationIngest
from .jobs import BackgroundJobs
from .metrics import Metrics
from .preannotation import Preannotator
from .preannotation_queue import PreannotationQueue
from .prediction import Predictor
from .projects import ProjectConfigs
from .serving import VersionServer
from .sessions import Sessions
from .store import AnnotationStore
from .training import Training
from .training_jobs import TrainingJobs
from .webhooks import Webhooks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predicting:
    """What predicting a task needs: the web process builds it, and so does a pre-annotation worker."""

    capabilities: Capabilities
    connection: LabelStudioConnection
    fetcher: ImageFetcher
    configs: ProjectConfigs
    annotations: AnnotationStore
    registry: Registry
    server: VersionServer
    predictor: Predictor

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics) -> Predicting:
        capabilities = Capabilities.build(settings)
        connection = LabelStudioConnection(settings)
        fetcher = ImageFetcher(settings, connection)
        annotations = AnnotationStore(settings.data_dir / "annotations.sqlite3")
        registry = Registry(settings.data_dir / "models")
        server = VersionServer(settings, capabilities, registry)
        sessions = Sessions(settings.interactive_ttl, settings.session_cache_bytes)
        caches: dict[str, object] = {"images": fetcher, "sessions": sessions}
        if capabilities.tool.on:
            caches["tool"] = capabilities.tool.get().cache
        metrics.watch_caches(caches)
        return cls(capabilities, connection, fetcher, ProjectConfigs(settings.output), annotations, registry, server,
                   Predictor(settings, capabilities, fetcher, sessions, annotations, metrics))

    def preannotator(self, settings: Settings, local_workers: bool) -> Preannotator:
        return Preannotator(settings, self.capabilities, self.connection, self.fetcher, self.configs, self.server,
                            self.predictor, PreannotationQueue(settings.data_dir / "preannotation.sqlite3"),
                            local_workers)


@dataclass
class Backend:
    settings: Settings
    metrics: Metrics
    capabilities: Capabilities
    connection: LabelStudioConnection
    fetcher: ImageFetcher
    configs: ProjectConfigs
    annotations: AnnotationStore
    trajectories: TrajectoryStore
    registry: Registry
    server: VersionServer
    predictor: Predictor
    ingest: AnnotationIngest
    training: Training
    preannotator: Preannotator
    webhooks: Webhooks
    background: BackgroundJobs
    started: float = field(default_factory=time.time)

    @classmethod
    def build(cls, settings: Settings) -> Backend:
        metrics = Metrics()
        parts = Predicting.build(settings, metrics)
        trajectories = TrajectoryStore(settings.data_dir / "trajectories")
        background = BackgroundJobs("background")
        training = Training(settings, parts.registry, trajectories, parts.server,
                            TrainingJobs(settings, parts.registry), background, metrics)
        ingest = AnnotationIngest(settings, parts.capabilities, parts.annotations, trajectories, parts.fetcher,
                                  parts.connection, background, training.after_new_trajectories)
        preannotator = parts.preannotator(settings, local_workers=not settings.redis_url)
        ingest.resume()
        preannotator.resume()
        return cls(settings=settings, metrics=metrics, capabilities=parts.capabilities, connection=parts.connection,
                   fetcher=parts.fetcher, configs=parts.configs, annotations=parts.annotations,
                   trajectories=trajectories, registry=parts.registry, server=parts.server, predictor=parts.predictor,
                   ingest=ingest, training=training, preannotator=preannotator,
                   webhooks=Webhooks(settings, ingest, training, preannotator, parts.configs, metrics),
                   background=background)

    def close(self) -> None:
        """Stop the periodic training thread and the pre-annotation workers, let the background job under way
        finish, close the stores."""
        self.training.close()
        self.preannotator.close()
        self.preannotator.queue.close()
        self.background.close()
        self.annotations.close()
        self.trajectories.close()
        log.info("backend closed")
