"""End to end in a real browser: Debian's Chromium, driven by Playwright, labels with Label Studio 1.23's
editor and the backend started by `make serve`, following the README's interactive steps on a scene with
two objects of one label: click on A, refine it, accept, refine it again after accepting, then B with
Auto-Accept on (click, refine), and submit. The annotation holds exactly two regions, A's and B's. And the
annotator's loop on a pre-annotation: the backend's prediction misses part of A, one Ctrl+click there, and
the annotation holds one region, the predicted one, covering A.

Skipped only when Chromium or Playwright is missing (`.ci/run` installs Chromium; Playwright comes with
requirements-test.txt). Its browser never downloads anything: it is Debian's, and requests to any host
but this machine are refused."""
from __future__ import annotations

import re
import shutil
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter import brush

from model.core.masks import iou
from tests.e2e.conftest import ROOT
from tests.synthetic import png_bytes, two_objects

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium on this machine (Debian: apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
WAIT_MS = 30_000  # the longest any one step may take
ANSWER_MS = 90_000  # an interactive answer (the first one loads the tool)
A, A_MORE, A_AGAIN = (85, 120), (70, 110), (100, 132)  # pixels on the left object
B, B_AGAIN = (235, 120), (250, 112)  # pixels on the right object


class _CorsHandler(SimpleHTTPRequestHandler):
    """The editor fetches the image from the browser: another origin's image needs CORS."""

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-scene")
    image, mask_a, mask_b = two_objects()
    (folder / "two.png").write_bytes(png_bytes(image))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_CorsHandler, directory=str(folder)))
    Thread(target=server.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}/two.png", "a": mask_a, "b": mask_b}
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def task(label_studio, backend_server, scene):
    """A project with the README's label config, the backend connected for interactive pre-annotation,
    one task."""
    readme = (ROOT / "README.md").read_text()
    config = re.search(r"```xml\n(.*?)```", readme, re.S).group(1)
    client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    project = client.projects.create(title="segagent in a browser", label_config=config)
    client.ml.create(project=project.id, url=backend_server["url"], is_interactive=True, title="SegAgent")
    client.projects.import_tasks(id=project.id, request=[{"data": {"image": scene["url"]}}])
    [created] = list(client.tasks.list(project=project.id))
    return {"client": client, "project": project.id, "id": created.id, "config": config}


def pre_annotate(task: dict, backend_url: str, scene: dict) -> dict:
    """The backend's prediction for the task from a rectangle over A's left part only (refine mode, as
    Retrieve predictions asks for it), added to the task as Label Studio adds it: a brush mask that misses
    A's right side. Its brush region."""
    rows, cols = np.nonzero(scene["a"] & (np.arange(320)[None, :] <= 85))
    box = {"type": "rectanglelabels", "from_name": "box", "to_name": "image",
           "value": {"x": 100 * (cols.min() - 3) / 320, "y": 100 * (rows.min() - 3) / 240,
                     "width": 100 * (np.ptp(cols) + 6) / 320, "height": 100 * (np.ptp(rows) + 6) / 240,
                     "rectanglelabels": ["Cat"]}}
    answer = requests.post(f"{backend_url}/predict", timeout=ANSWER_MS / 1000, json={
        "tasks": [{"id": task["id"], "data": {"image": scene["url"]}, "predictions": [{"result": [box]}]}],
        "project": str(task["project"]), "label_config": task["config"]})
    answer.raise_for_status()
    [prediction] = answer.json()["results"]
    [region] = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    task["client"].predictions.create(task=task["id"], result=[region],
                                      score=prediction["score"], model_version=prediction["model_version"])
    # the editor is given the predictions of the project's model version only (label_studio/tasks/models.py,
    # get_predictions_for_prelabeling), which connecting the backend sets, sometimes after this prediction
    task["client"].projects.update(id=task["project"], model_version=prediction["model_version"])
    return region


class Editor:
    """Label Studio's labeling editor in a page, as a person uses it."""

    def __init__(self, page, url: str):
        self.page = page
        self.url = url

    def log_in(self) -> None:
        self.page.goto(f"{self.url}/user/login")
        self.page.fill("input[name=email]", "e2e@example.com")
        self.page.fill("input[name=password]", "e2e-password-123")
        with self.page.expect_navigation():
            self.page.click("button[type=submit]")

    def open(self, project: int, task: int) -> None:
        self.page.goto(f"{self.url}/projects/{project}/data?task={task}")
        self.page.get_by_test_id("bottombar-auto-annotation-toggle").wait_for()
        self.page.wait_for_function("() => document.querySelectorAll('canvas').length > 0")

    def open_prefilled(self, project: int, task: int, tries: int = 3) -> None:
        """Open a task that has a prediction, until the editor starts from it: the data manager sometimes
        hands the editor the task without its predictions (seen with Label Studio 1.23.2, the prediction
        there on the server), and opening it again gives them."""
        for _ in range(tries):
            self.open(project, task)
            try:
                self.page.wait_for_function(
                    "() => window.dataManager.lsf.currentAnnotation.regionStore.regions.length > 0", timeout=10_000)
                return
            except sync_api.TimeoutError:
                continue
        raise AssertionError(f"the editor did not start from the prediction in {tries} openings")

    def turn_on(self, test_id: str) -> None:
        self.page.get_by_test_id(test_id).click()

    def choose_smart_keypoints(self) -> None:
        """The Auto-Detect tool's keypoint variant: the plain keypoint tool sends nothing to the backend."""
        self.page.locator(".lsf-toolbar__group > .lsf-tool_smart").first.hover()
        self.page.locator(".lsf-toolbar__smart button[aria-label=key-point-tool]").click()

    def click(self, at: tuple[int, int], *, on_region: bool = False, negative: bool = False) -> dict:
        """Select the keypoint label (the editor deselects it after every answer) and click; the answer.
        A click on a region selects it unless Ctrl is held."""
        self.page.get_by_text("Cat", exact=True).nth(1).click()  # the KeyPointLabels' Cat: the second row
        box = self.page.locator("canvas").last.bounding_box()
        x, y = box["x"] + at[0] * box["width"] / 320, box["y"] + at[1] * box["height"] / 240
        keys = (["Control"] if on_region else []) + (["Alt"] if negative else [])
        with self.page.expect_response(lambda r: "interactive-annotating" in r.url, timeout=ANSWER_MS) as answer:
            for key in keys:
                self.page.keyboard.down(key)
            self.page.mouse.click(x, y)
            for key in reversed(keys):
                self.page.keyboard.up(key)
        body = answer.value.json()
        assert "errors" not in body, body
        self.page.wait_for_function("() => !window.dataManager.lsf.lsf.awaitingSuggestions")  # shown (or accepted)
        [region] = body["data"]["result"]
        return region

    def accept(self) -> None:
        self.page.get_by_test_id("bottombar-accept-suggestions-button").click()

    def regions(self) -> int:
        """How many regions the annotation holds (accepted suggestions; smart keypoints not yet accepted too)."""
        return self.page.evaluate("() => window.dataManager.lsf.currentAnnotation.regionStore.regions.length")

    def submit(self) -> None:
        with self.page.expect_response(lambda r: r.request.method == "POST" and "/annotations" in r.url):
            self.page.get_by_role("button", name="Submit").click()


def _mask(result: dict) -> np.ndarray:
    height, width = result["original_height"], result["original_width"]
    return brush.decode_rle(result["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 0


def _page(browser):
    """A page whose requests to any host but this machine are refused."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.route(re.compile(r"^(?!http://(127\.0\.0\.1|localhost)[:/])"), lambda route: route.abort())
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    return context, page


def test_two_objects_refined_and_accepted_give_two_regions(browser, label_studio, task, scene, tmp_path):
    started = time.monotonic()
    context, page = _page(browser)
    editor = Editor(page, label_studio["url"])
    try:
        editor.log_in()
        editor.open(task["project"], task["id"])
        editor.turn_on("bottombar-auto-annotation-toggle")
        editor.choose_smart_keypoints()
        first = editor.click(A)
        refined = editor.click(A_MORE)  # not accepted yet: the editor sends both keypoints
        editor.accept()
        assert editor.regions() == 1
        after_accept = editor.click(A_AGAIN, on_region=True)  # alone: its keypoints went with the accept
        editor.accept()
        assert editor.regions() == 1, "refining A after accepting it added a region"
        editor.turn_on("bottombar-auto-accept-toggle")
        other = editor.click(B)
        assert editor.regions() == 2, "B did not become a region of its own"
        other_refined = editor.click(B_AGAIN, on_region=True)
        assert editor.regions() == 2, "refining B with Auto-Accept on added a region"
        editor.submit()
    except Exception as exc:
        page.screenshot(path=str(tmp_path / "browser-failure.png"))
        raise AssertionError(f"the browser flow failed ({exc}); the page is in {tmp_path / 'browser-failure.png'}") from exc
    finally:
        context.close()

    assert first["id"] == refined["id"] == after_accept["id"] != other["id"] == other_refined["id"]
    [annotation] = task["client"].tasks.get(id=task["id"]).annotations
    masks = [_mask(r) for r in annotation["result"] if r["type"] == "brushlabels"]
    assert len(masks) == 2, [r["type"] for r in annotation["result"]]
    left, right = sorted(masks, key=lambda mask: np.nonzero(mask)[1].mean())
    assert iou(left, scene["a"]) >= 0.85 and iou(right, scene["b"]) >= 0.85
    assert time.monotonic() - started < 300


def test_one_click_completes_a_pre_annotated_mask(browser, label_studio, backend_server, task, scene, tmp_path):
    """The backend's pre-annotation misses A's right side; the annotator opens the task (the editor makes the
    annotation from the prediction), Ctrl+clicks once on the missed part next to the mask, and accepts:
    one region, the predicted one replaced, covering A."""
    predicted = pre_annotate(task, backend_server["url"], scene)
    mask = _mask(predicted)
    assert iou(mask, scene["a"]) < 0.7
    missed = (int(np.nonzero(mask[120])[0].max()) + 5, 120)  # just right of the mask's edge, on A
    assert scene["a"][missed[1], missed[0]] and not mask[missed[1], missed[0]]
    context, page = _page(browser)
    editor = Editor(page, label_studio["url"])
    try:
        editor.log_in()
        editor.open_prefilled(task["project"], task["id"])
        assert editor.regions() == 1, "the editor did not start from the prediction"
        editor.turn_on("bottombar-auto-annotation-toggle")
        editor.choose_smart_keypoints()
        answer = editor.click(missed, on_region=True)
        editor.accept()
        assert editor.regions() == 1, "the click on the pre-annotated mask added a region"
        editor.submit()
    except Exception as exc:
        page.screenshot(path=str(tmp_path / "browser-failure.png"))
        raise AssertionError(f"the browser flow failed ({exc}); the page is in {tmp_path / 'browser-failure.png'}") from exc
    finally:
        context.close()

    assert answer["id"] == predicted["id"]
    [annotation] = task["client"].tasks.get(id=task["id"]).annotations
    masks = [_mask(r) for r in annotation["result"] if r["type"] == "brushlabels"]
    assert len(masks) == 1, [r["type"] for r in annotation["result"]]
    assert masks[0][missed[1], missed[0]] and iou(masks[0], scene["a"]) >= 0.85
