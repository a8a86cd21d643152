"""Predictions, per task, in one of four modes:
- interactive: the context holds smart keypoints and/or a rectangle -> the tool makes the mask;
- refine: the task already has rectangles (imported predictions, annotations) -> box -> mask, which
  the policy's episode then refines when a policy is configured (which can start from masks too);
- concepts: nothing to start from, and a tool that finds every instance of a phrase (SAM 3) -> one region per
  instance of each label's phrase (or of the description), each refined by the policy's episode when there is one;
- auto: nothing to start from -> the policy's episode, one per object prompt (off without a policy).
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

from model.agent.loop import Agent, Episode, EpisodeTask
from model.settings import Settings
from model.tools import ToolResult
from model.tools.base import Instance

from .capabilities import Capabilities
from .errors import Busy
from .images import ImageFetcher
from .inputs import TaskInput
from .labelstudio.config import Schema
from .labelstudio.formatting import RegionPrediction
from .metrics import Metrics
from .predicted_regions import PredictedRegions
from .serving import Serving
from .sessions import UNKNOWN, Annotator, Placed, PlacedBox, Session, Sessions
from .store import AnnotationStore

log = logging.getLogger(__name__)
RECORDS_WAITING = 32  # interactive records handed to the writer and not yet written, at most


class InteractiveRecorder:
    """Each interactive request's record (its clicks so far and the mask they gave, which the annotation
    submitted later joins as the real clicks) written to the store by one thread, in the order handed
    over, so that a click never waits for SQLite: a long transaction of the learning thread, a checkpoint,
    another process's write lock. At most `waiting` records wait (their masks are held); a click beyond
    that waits for room. close() writes those waiting; a kill -9 loses them (derived, never acknowledged)."""

    def __init__(self, store: AnnotationStore, waiting: int = RECORDS_WAITING):
        self.store = store
        self._room = threading.BoundedSemaphore(waiting)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="interactive-records")

    def record(self, project: str, task_id: int, label: str, clicks: list[tuple[float, float, bool]],
               mask: np.ndarray, region_id: str) -> None:
        self._room.acquire()
        try:
            self._writer.submit(self._write, project, task_id, label, clicks, mask, region_id)
        except RuntimeError:  # closed: the backend is stopping
            self._room.release()
            log.warning("task %s: the interactive record of region %s is not kept: the backend is stopping",
                        task_id, region_id)

    def _write(self, project: str, task_id: int, label: str, clicks: list[tuple[float, float, bool]],
               mask: np.ndarray, region_id: str) -> None:
        try:
            self.store.record_interactive(project, task_id, label, clicks, mask, region_id)
        except Exception:  # the click was answered; only this record of it is lost
            log.exception("task %s: the interactive record of region %s is not kept", task_id, region_id)
        finally:
            self._room.release()

    def close(self) -> None:
        """Write the records waiting, then stop."""
        self._writer.shutdown(wait=True)


class Predictor:
    def __init__(self, settings: Settings, capabilities: Capabilities, fetcher: ImageFetcher, sessions: Sessions,
                 store: AnnotationStore, metrics: Metrics):
        self.settings = settings
        self.capabilities = capabilities
        self.fetcher = fetcher
        self.sessions = sessions
        self.store = store
        self.metrics = metrics
        self.records = InteractiveRecorder(store)
        self._tool_slots = threading.BoundedSemaphore(settings.interactive_concurrency)
        self.predicted = PredictedRegions(settings.store("predicted_regions"))

    def predict(self, task: TaskInput, schema: Schema, serving: Serving,
                annotator: Annotator = UNKNOWN) -> list[RegionPrediction] | None:
        """The task's regions; None when there is nothing to predict from (the reason is logged)."""
        concepts = self.capabilities.concepts
        if not task.interaction.has_geometry and not task.starts and not serving.agent.on and not concepts:
            log.info("task %s: no prediction: %s, and no clicks or boxes to start from", task.id, serving.agent.reason)
            return None
        self.capabilities.tool.get()  # off: a 503 that says why, before the image is fetched
        image = self.fetcher.fetch(task.image, task.id, project=serving.project)
        if task.interaction.has_geometry:
            regions = [self._interactive(task, schema, image, serving, annotator)]
        elif task.starts:
            regions = self._refine(task, image, serving)
        elif concepts:
            regions = self._concepts(task, schema, image, serving)
        else:
            regions = self._auto(task, schema, image, serving)
        found = [region for region in regions if region.mask.any()]
        if len(found) < len(regions):
            log.info("task %s: %d of %d regions left out: the tool found no object there", task.id,
                     len(regions) - len(found), len(regions))
        return found

    def close(self) -> None:
        """Write the interactive records still waiting (before the store closes)."""
        self.records.close()
        self.predicted.close()

    def _interactive(self, task: TaskInput, schema: Schema, image: np.ndarray, serving: Serving,
                     annotator: Annotator) -> RegionPrediction:
        """Busy (503, never queued) while `interactive_concurrency` clicks are being worked on, waiting for their
        object included, so that slow clicks (or one sent many times) never take every server thread from
        /health and the other routes."""
        if not self._tool_slots.acquire(blocking=False):
            raise Busy(f"busy: {self.settings.interactive_concurrency} clicks are being worked on; retry in a second")
        try:
            return self._interactive_object(task, schema, image, serving, annotator)
        finally:
            self._tool_slots.release()

    def _interactive_object(self, task: TaskInput, schema: Schema, image: np.ndarray, serving: Serving,
                            annotator: Annotator) -> RegionPrediction:
        """The object the clicks (or the box) are for, refined or started (sessions.py says which), answered
        with that object's region id."""
        height, width = image.shape[:2]
        interaction = task.interaction
        label = schema.choose_label(interaction.label)
        group = (serving.project, task.id, schema.region_name, label)
        box = interaction.box
        placed = [Placed(c.to_pixels(width, height), c.id) for c in interaction.clicks]
        starts = partial(self._predicted_starts, serving, task, label, placed, (height, width))
        step = self.sessions.resolve(group, placed, PlacedBox(box.to_pixels(width, height), box.id) if box else None,
                                     annotator, starts)
        clicks = step.clicks
        try:
            result = step.session.result
            if step.run or result is None:
                previous = step.previous
                result = self.capabilities.tool.get().predict(  # a predicted region's mask alone: no tool state
                    image, clicks, box=step.box,
                    previous=previous.mask if previous is not None and previous.state is None else previous)
                self.records.record(serving.project, task.id or 0, label, [(c.x, c.y, c.positive) for c in clicks],
                                    result.mask, step.session.region_id)
            kept = self.sessions.remember(group, step.session, result)
        finally:
            self.sessions.release(group, step.session)  # a failed request leaves the object as it was
        self.metrics.predictions.labels("interactive").inc()
        log.info("task %s: interactive mask for %r (region %s) from %d clicks%s, %d pixels", task.id, label,
                 step.session.region_id, len(clicks), " and a box" if step.box else "", kept.area)
        score = result.score if self.settings.interactive_score == "tool" else \
            self.capabilities.estimate(image, result.mask, interaction.text or label, result.score,
                                        serving.project)
        return RegionPrediction(label, result.mask, score, id=step.session.region_id)

    def _predicted_starts(self, serving: Serving, task: TaskInput, label: str, placed: list[Placed],
                          shape: tuple[int, int]) -> list[Session]:
        """The regions the backend predicted for the task that the first click may be on or next to (read with
        the sessions' lock held, only for a click no object knows)."""
        if task.id is None or task.interaction.box is not None or not placed:
            return []
        return [Session(region.region_id, result=ToolResult(region.mask, region.score), area=int(region.mask.sum()))
                for region in self.predicted.around(serving.project, task.id, label, placed[0].click.pixel,
                                                    Sessions.NEAR, shape)]

    def _refine(self, task: TaskInput, image: np.ndarray, serving: Serving) -> list[RegionPrediction]:
        """Each rectangle (or, with a policy, mask) the task has becomes a refined mask: a box through the
        tool, then the agent's episode when there is a policy."""
        height, width = image.shape[:2]
        starts = [s for s in task.starts if s.mask is None or s.mask.shape == (height, width)]
        if len(starts) < len(task.starts):
            log.warning("task %s: skipping masks of another size than its %d x %d image", task.id, width, height)
        self.metrics.predictions.labels("refine").inc(len(starts))
        labels = [start.label for start in starts]
        if serving.agent.on:
            episodes = serving.agent.get().run_many([
                EpisodeTask(image, task.prompt or start.label, initial_mask=start.mask,
                            box=start.box.to_pixels(width, height) if start.box else None) for start in starts])
            return self._episode_regions(serving, task, image, labels, episodes)
        regions = []
        for start in starts:
            assert start.box is not None  # without an agent, only boxes are parsed as starts
            result = self.capabilities.tool.get().predict(image, box=start.box.to_pixels(width, height))
            score = self.capabilities.estimate(image, result.mask, task.prompt or start.label, result.score,
                                               serving.project)
            regions.append(RegionPrediction(start.label, result.mask, score))
        return regions

    @staticmethod
    def _objects(task: TaskInput, schema: Schema, phrases: dict[str, str]) -> list[tuple[str, str]]:
        """(label, prompt) per object to look for: the task's description (or the TextArea's text), labelled with
        the label it names (or the first), else one per label, its phrase the label's own unless `phrases` maps it;
        none when the config has no labels to give a region."""
        prompt = task.interaction.text or task.prompt
        if prompt and schema.labels:
            named = [label for label in schema.labels if label.lower() in prompt.lower()]
            return [(named[0] if named else schema.labels[0], prompt)]
        return [(label, phrases.get(label, label)) for label in schema.labels]

    def _concepts(self, task: TaskInput, schema: Schema, image: np.ndarray,
                  serving: Serving) -> list[RegionPrediction]:
        """Every instance of each object's phrase the tool scores above the threshold (the highest scored,
        at most `concept_max_instances` each), one region per instance. A region's score is the tool's
        probability that the instance is one, times the quality scorer's estimate of its mask's IoU: its
        expected IoU, a false detection counting 0. With a policy, each instance is refined by an episode
        from its mask and box, as refine mode does."""
        segmenter = self.capabilities.tool.get()
        found: list[tuple[str, str, Instance]] = []
        for label, phrase in self._objects(task, schema, self.settings.concept_phrases):
            instances = segmenter.find_instances(image, phrase, self.settings.concept_threshold)
            instances = sorted(instances, key=lambda instance: -instance.score)[:self.settings.concept_max_instances]
            log.info("task %s: %d instances of %r (label %r)", task.id, len(instances), phrase, label)
            found += [(label, phrase, instance) for instance in instances]
        self.metrics.predictions.labels("concepts").inc(len(found))
        detected = [instance.score for _, _, instance in found]
        if serving.agent.on:
            episodes = serving.agent.get().run_many([EpisodeTask(image, phrase, initial_mask=instance.mask,
                                                                 box=instance.box) for _, phrase, instance in found])
            return self._episode_regions(serving, task, image, [label for label, _, _ in found], episodes, detected)
        return [RegionPrediction(label, instance.mask, instance.score * self.capabilities.estimate(
            image, instance.mask, phrase, 1.0, serving.project)) for label, phrase, instance in found]

    def _auto(self, task: TaskInput, schema: Schema, image: np.ndarray, serving: Serving) -> list[RegionPrediction]:
        """One episode per object prompt: the task's description (or the TextArea's text), else one per
        label (the label is the prompt)."""
        objects = self._objects(task, schema, {})
        agent: Agent = serving.agent.get()
        episodes = agent.run_many([EpisodeTask(image, description) for _, description in objects])
        for episode in episodes:
            log.info("task %s: episode for %r: %d steps, stopped by %s, score %.3f", task.id, episode.description,
                     len(episode.steps), episode.stop_reason, episode.score)
        self.metrics.predictions.labels("auto").inc(len(objects))
        return self._episode_regions(serving, task, image, [label for label, _ in objects], episodes)

    def _episode_regions(self, serving: Serving, task: TaskInput, image: np.ndarray, labels: list[str],
                         episodes: list[Episode], detected: list[float] | None = None) -> list[RegionPrediction]:
        """The episodes' regions, each episode recorded for the flywheel (a later annotation makes it a
        correction trajectory). A region's score is the quality scorer's estimate, times the probability that
        its object is one when the tool `detected` it with one (concepts)."""
        regions = []
        for index, (label, episode) in enumerate(zip(labels, episodes)):
            self.store.record_episode(
                serving.project, task.id or 0, label, episode.description, serving.version,
                [{"action": s.text, "x": s.click.x, "y": s.click.y, "positive": s.click.positive, "score": s.score}
                 for s in episode.steps], episode.mask, episode.score, episode.stop_reason)
            if episode.mask.any():
                score = self.capabilities.estimate(image, episode.mask, episode.description, episode.score,
                                                   serving.project)
                score *= detected[index] if detected else 1.0
                regions.append(RegionPrediction(label, episode.mask, score, episode.clicks))
        return regions
