"""The composition root: every component built once from the settings, wired together, and closed
with the app (background threads stop, executors shut down)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from model.flywheel.registry import Registry
from model.flywheel.stores import policy_registry, trajectory_store
from model.flywheel.trajectories import TrajectoryStore
from model.quality.scorers import OfflineScorer
from model.settings import Settings

from .capabilities import Capabilities
from .connection import LabelStudioConnection
from .dispatch import Dispatcher, Handler, InProcess, Kind, Rq
from .images import ImageFetcher
from .ingest import AnnotationIngest
from .metrics import Metrics
from .preannotation import Preannotator
from .preannotation_queue import PreannotationQueue
from .prediction import Predictor
from .project_scorers import ProjectScorers
from .projects import ProjectConfigs
from .quality_labels import CorrectionLabels, QualityLabels
from .serving import VersionServer
from .sessions import Sessions
from .store import AnnotationStore
from .training import Training
from .training_jobs import TrainingJobs
from .webhook_auth import WebhookAuth
from .webhooks import Webhooks

log = logging.getLogger(__name__)

PREANNOTATE_TIMEOUT = 600.0  # seconds an RQ worker may spend on one task (a policy's whole episode included)
ANNOTATION_TIMEOUT = 600.0


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
    dispatcher: Dispatcher
    handlers: dict[Kind, Handler]  # what each kind of background work runs, here or in a worker
    quality_labels: QualityLabels  # daily_counts(project): the scorer's labels by day and source
    scorers: ProjectScorers  # scorer_versions(project): each project's scorer versions and gate figures
    webhook_auth: WebhookAuth  # gives Label Studio's webhook to this backend the basic auth header after /setup
    started: float = field(default_factory=time.time)

    @classmethod
    def build(cls, settings: Settings, worker: bool = False) -> Backend:
        """The backend as the web process runs it, or (worker=True) as `segagent-worker` runs it: the same
        components and handlers, without the periodic training thread and without handing out again what the
        stores say is owed (the web process does that at its start)."""
        metrics = Metrics()
        quality_labels = QualityLabels(settings.store("quality_labels"))
        scorers = ProjectScorers(settings, quality_labels)
        capabilities = Capabilities.build(settings, per_project=scorers.scorer_for)
        connection = LabelStudioConnection(settings)
        fetcher = ImageFetcher(settings, connection)
        annotations = AnnotationStore(settings.store("annotations"))
        registry = policy_registry(settings)
        server = VersionServer(settings, capabilities, registry)
        sessions = Sessions(settings.interactive_ttl, settings.session_cache_bytes)
        metrics.watch_caches({"images": fetcher, "sessions": sessions,
                              **({"tool": capabilities.tool.get().cache} if capabilities.tool.on else {})})
        predictor = Predictor(settings, capabilities, fetcher, sessions, annotations, metrics)
        configs = ProjectConfigs(settings.output)
        dispatcher = make_dispatcher(settings)
        trajectories = trajectory_store(settings)
        training_jobs = TrainingJobs(settings, registry, dispatcher, annotations)
        training = Training(settings.model_copy(update={"train_interval": 0}) if worker else settings, registry,
                            trajectories, server, training_jobs, metrics,
                            scorers.refit if isinstance(capabilities.scorer.component, OfflineScorer) else None)
        ingest = AnnotationIngest(settings, capabilities, annotations, trajectories, fetcher, connection, dispatcher,
                                  training.after_new_trajectories,
                                  CorrectionLabels(quality_labels, predictor.predicted, annotations,
                                                   settings.scorer_match_iou, settings.max_mask_pixels),
                                  scorers.after_new_labels)
        preannotator = Preannotator(settings, capabilities, connection, fetcher, configs, server, predictor,
                                    PreannotationQueue(settings.store("preannotation"),
                                                       settings.preannotation_lease_seconds), dispatcher)
        handlers: dict[Kind, Handler] = {"preannotate": preannotator.run_task, "annotation": ingest.do_owed_work,
                                         "train": training_jobs.run}
        for kind, handler in handlers.items():
            dispatcher.register(kind, handler)
        if not worker:
            ingest.resume()
            preannotator.resume()
        return cls(settings=settings, metrics=metrics, capabilities=capabilities, connection=connection,
                   fetcher=fetcher, configs=configs, annotations=annotations, trajectories=trajectories,
                   registry=registry, server=server, predictor=predictor, ingest=ingest, training=training,
                   preannotator=preannotator, webhooks=Webhooks(settings, ingest, training, preannotator, configs,
                                                                metrics),
                   dispatcher=dispatcher, handlers=handlers, quality_labels=quality_labels, scorers=scorers,
                   webhook_auth=WebhookAuth(settings, connection))

    def close(self) -> None:
        """Stop the periodic training thread, let the background work under way finish, close the stores."""
        self.training.close()
        self.webhook_auth.close()
        self.dispatcher.close()
        self.preannotator.queue.close()
        self.predictor.close()
        self.annotations.close()
        self.quality_labels.close()
        self.trajectories.close()
        log.info("backend closed")


def make_dispatcher(settings: Settings) -> Dispatcher:
    """The one place that decides where background work runs."""
    if settings.redis_url:
        return Rq(settings.redis_url, {"preannotate": PREANNOTATE_TIMEOUT, "annotation": ANNOTATION_TIMEOUT,
                                       "train": settings.train_timeout})
    return InProcess({"preannotate": settings.preannotate_workers, "annotation": 1})
