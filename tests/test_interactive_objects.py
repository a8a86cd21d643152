"""Interactive objects across requests, as Label Studio 1.23's editor sends them: every smart keypoint of a
label with its region id until the suggestion is accepted, then the next click alone. Each object answers
with a region id of its own (accepting replaces the region of that id), however many clicks refine it."""
from __future__ import annotations

import numpy as np
import pytest

from backend.sessions import Placed, Sessions
from model.core.clicks import Click
from model.core.masks import iou
from model.tools import ToolResult
from tests.synthetic import FileServer, png_bytes, two_objects
from tests.test_backend import CONFIG, decode, keypoint, make_client, predict, rectangle_around

A = (26.6, 50.0)  # the centre of the left object, in percent
A_EDGE = (20.0, 45.0)  # another point on it
B = (73.4, 50.0)  # the centre of the right object
INSIDE_A = (36.0, 50.0)  # a point on the left object, pixel (row 120, column 115): a negative click carves it


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-objects")
    image, mask_a, mask_b = two_objects()
    (folder / "two.png").write_bytes(png_bytes(image))
    with FileServer(folder) as server:
        yield {"url": f"{server.url}/two.png", "a": mask_a, "b": mask_b}


@pytest.fixture
def client(tmp_path):
    return make_client(tmp_path)


def point(at: tuple[float, float], id: str, positive: bool = True) -> dict:
    """A smart keypoint as the editor sends it: with the id of its region."""
    return {**keypoint(*at, positive=positive), "id": id}


def ask(client, scene, *points: dict) -> dict:
    response = predict(client, scene["url"], {"result": list(points)})
    assert response.status_code == 200, response.json
    [region] = response.json["results"][0]["result"]
    return region


def test_two_objects_clicked_in_turn_give_two_masks(client, scene):
    """A click on A, accepted (its keypoint deleted), then a click on B sent alone: B is a new object."""
    first = ask(client, scene, point(A, "k1"))
    second = ask(client, scene, point(B, "k2"))
    assert first["id"] != second["id"]
    assert iou(decode(first), scene["a"]) >= 0.85 and iou(decode(second), scene["b"]) >= 0.85
    assert not (decode(second) & scene["a"]).any()


def test_two_objects_without_ids_give_two_masks(client, scene):
    """Clients that send only the newest click, without ids: a click far from the object starts another."""
    first = ask(client, scene, keypoint(*A))
    second = ask(client, scene, keypoint(*B))
    assert first["id"] != second["id"] and not (decode(second) & scene["a"]).any()


def test_clicks_on_one_object_answer_one_region_id(client, scene):
    """Before accepting, the editor sends every keypoint again with each new one: one object, one id."""
    answers = [ask(client, scene, point(A, "k1")),
               ask(client, scene, point(A, "k1"), point(A_EDGE, "k2")),
               ask(client, scene, point(A, "k1"), point(A_EDGE, "k2"), point((28.0, 55.0), "k3"))]
    assert len({answer["id"] for answer in answers}) == 1
    assert iou(decode(answers[-1]), scene["a"]) >= 0.85


def test_refine_after_accept_keeps_the_region(client, scene):
    """Accept A (the editor deletes its keypoints), click on it again: the answer replaces A's region (same
    id) and refines its mask; a click on B then starts B."""
    accepted = ask(client, scene, point(A, "k1"))
    refined = ask(client, scene, point(INSIDE_A, "k2", positive=False))  # alone, inside A: carve
    assert refined["id"] == accepted["id"]
    assert decode(refined).sum() < decode(accepted).sum() and not decode(refined)[120, 115]
    again = ask(client, scene, point(A_EDGE, "k3"))  # alone again, on A (Auto-Accept sends every click so)
    assert again["id"] == accepted["id"]
    other = ask(client, scene, point(B, "k4"))
    assert other["id"] != accepted["id"] and iou(decode(other), scene["b"]) >= 0.85


def test_a_deleted_keypoint_is_left_out(client, scene):
    """The editor sends the keypoints that are left when one is deleted: the mask is made from those."""
    alone = ask(client, scene, point(A, "k1"))
    carved = ask(client, scene, point(A, "k1"), point(INSIDE_A, "k2", positive=False))
    restored = ask(client, scene, point(A, "k1"))
    assert carved["id"] == alone["id"] == restored["id"]
    assert not decode(carved)[120, 115] and decode(restored)[120, 115]


def test_objects_of_another_task_or_label_are_apart(client, scene):
    first = ask(client, scene, point(A, "k1"))
    response = predict(client, scene["url"], {"result": [point(A, "k2")]}, task_extra={"id": 8})
    assert response.json["results"][0]["result"][0]["id"] != first["id"]


def test_sessions_live_within_their_byte_budget():
    mask = np.zeros((1000, 1000), bool)  # a megabyte each
    sessions = Sessions(ttl=600, max_bytes=3_500_000)
    for task in range(10):
        step = sessions.resolve(("1", task, "tag", "Object"), [Placed(Click(1, 1, True), "k")])
        sessions.remember(("1", task, "tag", "Object"), step.session, ToolResult(mask, 1.0))
    assert len(sessions) == 3 and sessions.size_bytes <= 3_500_000
    newest = sessions.resolve(("1", 9, "tag", "Object"), [Placed(Click(1, 1, True), "k")]).previous
    oldest = sessions.resolve(("1", 0, "tag", "Object"), [Placed(Click(1, 1, True), "k")]).previous
    assert newest is not None and oldest is None  # the oldest went first


def test_polygon_answers_keep_the_object_s_id(client, scene):
    config = ('<View><Image name="image" value="$image"/>'
              '<PolygonLabels name="outline" toName="image"><Label value="Object"/></PolygonLabels>'
              '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/>'
              '</KeyPointLabels></View>')
    first = predict(client, scene["url"], {"result": [point(A, "k1")]}, config=config).json["results"][0]["result"]
    again = predict(client, scene["url"], {"result": [point(A, "k1"), point(A_EDGE, "k2")]},
                    config=config).json["results"][0]["result"]
    other = predict(client, scene["url"], {"result": [point(B, "k3")]}, config=config).json["results"][0]["result"]
    assert first[0]["type"] == "polygonlabels" and first[0]["id"] == again[0]["id"] != other[0]["id"]


def test_a_rectangle_is_an_object_of_its_own(client, scene):
    """A smart rectangle keeps its region id when the annotator moves it (the editor sends it again, same id)."""
    drawn = {**rectangle_around(scene["a"], pad=12), "id": "r1"}
    moved = {**rectangle_around(scene["a"], pad=6), "id": "r1"}
    first, second = ask(client, scene, drawn), ask(client, scene, moved)
    other = ask(client, scene, {**rectangle_around(scene["b"]), "id": "r2"})
    assert first["id"] == second["id"] != other["id"]
    assert iou(decode(second), scene["a"]) >= 0.85 and iou(decode(other), scene["b"]) >= 0.85


def test_each_object_s_real_clicks_become_its_own_trajectory(tmp_path, scene):
    """Two objects of one label, clicked, accepted (Label Studio keeps the suggestion's id) and submitted:
    each region's human trajectory holds that object's clicks only."""
    from label_studio_sdk.converter import brush

    from model.settings import Settings
    from tests.apps import App
    from tests.test_backend import _wait_for

    app = App(Settings(data_dir=tmp_path, banned_subnets="169.254.0.0/16"))
    first = ask(app.client, scene, point(A, "k1"))
    ask(app.client, scene, point(A, "k1"), point(A_EDGE, "k2"))
    second = ask(app.client, scene, point(B, "k3"))
    results = [{"id": region["id"], "type": "brushlabels", "from_name": "tag", "to_name": "image",
                "original_width": 320, "original_height": 240,
                "value": {"format": "rle", "rle": brush.mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Object"]}}
               for region, mask in ((first, scene["a"]), (second, scene["b"]))]
    app.client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 3, "label_config": CONFIG},
                                      "task": {"id": 7, "data": {"image": scene["url"]}},
                                      "annotation": {"id": 61, "updated_at": "1", "result": results}})
    assert _wait_for(lambda: app.client.get("/status").json["trajectories"]["human"] == 2)
    humans = {len(r.steps): r for r in app.backend.trajectories.records() if r.source == "human"}
    assert sorted(humans) == [1, 2]  # two clicks on A, one on B: not three on each
    assert all(step.click.x < 160 for step in humans[2].steps) and humans[1].steps[0].click.x > 160


def ask_as(client, scene, drafts: list[dict] | None, *points: dict) -> dict:
    """An interactive request as Label Studio 1.23 sends it for an annotator: with their drafts of the task."""
    response = predict(client, scene["url"], {"result": list(points)},
                       task_extra={} if drafts is None else {"drafts": drafts})
    assert response.status_code == 200, response.json
    [region] = response.json["results"][0]["result"]
    return region


def draft(user: str, *region_ids: str) -> dict:
    """A draft as Label Studio's server adds it to the task: its user, and the annotation as last autosaved."""
    return {"id": 1, "user": user, "annotation": None,
            "result": [{"id": region_id, "type": "brushlabels", "from_name": "tag", "to_name": "image"}
                       for region_id in region_ids]}


def pre_annotate(client, scene, mask: np.ndarray) -> dict:
    """The backend's prediction for the task from a rectangle around `mask` (refine mode, as pre-annotation
    and Retrieve predictions ask for it): its one brush region."""
    response = predict(client, scene["url"], task_extra={"predictions": [{"result": [rectangle_around(mask, pad=3)]}]})
    assert response.status_code == 200, response.json
    [region] = [r for r in response.json["results"][0]["result"] if r["type"] == "brushlabels"]
    return region


def at_pixel(row: int, col: int) -> tuple[float, float]:
    return 100 * (col + 0.5) / 320, 100 * (row + 0.5) / 240


def test_a_click_next_to_a_predicted_region_refines_it(client, scene):
    """A pre-annotated mask that misses part of A (its right side), one click just beyond its edge: the answer
    replaces the predicted region (its id) and covers A."""
    left_part = scene["a"] & (np.arange(320)[None, :] <= 85)
    predicted = pre_annotate(client, scene, left_part)
    mask = decode(predicted)
    assert iou(mask, scene["a"]) < 0.7 and not mask[:, 110:].any()
    edge = int(np.nonzero(mask[120])[0].max())
    refined = ask(client, scene, point(at_pixel(120, edge + 5), "k1"))
    assert refined["id"] == predicted["id"]
    assert iou(decode(refined), scene["a"]) >= 0.85


def test_a_negative_click_on_a_predicted_region_carves_it(client, scene):
    predicted = pre_annotate(client, scene, scene["a"])
    carved = ask(client, scene, point(INSIDE_A, "k1", positive=False))
    assert carved["id"] == predicted["id"]
    assert not decode(carved)[120, 115] and 0 < decode(carved).sum() < decode(predicted).sum()


def test_a_predicted_region_the_annotator_deleted_is_not_started_from(client, scene):
    """The annotator's draft no longer holds the predicted region: a click there starts a new object."""
    predicted = pre_annotate(client, scene, scene["a"])
    again = ask_as(client, scene, [draft("ann@example.com")], point(A, "k1"))
    assert again["id"] != predicted["id"] and iou(decode(again), scene["a"]) >= 0.85


def test_a_deleted_region_is_forgotten(client, scene):
    """A made with a negative click and accepted (a draft holds it), then deleted (the next draft does not):
    the next click on A starts afresh, with a new id and without the deleted attempt's clicks."""
    first = ask(client, scene, point(A, "k1"))
    carved = ask(client, scene, point(A, "k1"), point(INSIDE_A, "k2", positive=False))
    assert carved["id"] == first["id"] and not decode(carved)[120, 115]
    other = ask_as(client, scene, [draft("ann@example.com", carved["id"])], point(B, "k3"))
    assert other["id"] != carved["id"]
    fresh = ask_as(client, scene, [draft("ann@example.com", other["id"])], point(A_EDGE, "k4"))
    assert fresh["id"] not in (carved["id"], other["id"])
    assert decode(fresh)[120, 115] and iou(decode(fresh), scene["a"]) >= 0.85


def test_each_annotator_s_objects_are_their_own(client, scene):
    """Annotator 1 carves A (their drafts say who they are); annotator 2's first click on A, without a draft
    yet and with one, starts their own object; annotator 1's next click on A still refines theirs."""
    one = [draft("one@example.com")]
    first = ask_as(client, scene, one, point(A, "k1"))
    carved = ask_as(client, scene, one, point(A, "k1"), point(INSIDE_A, "k2", positive=False))
    assert carved["id"] == first["id"]
    theirs = ask_as(client, scene, [], point(A_EDGE, "m1"))
    assert theirs["id"] != first["id"] and decode(theirs)[120, 115]
    drafted = ask_as(client, scene, [draft("two@example.com", theirs["id"])], point(A, "m2"))
    assert drafted["id"] == theirs["id"] and decode(drafted)[120, 115]  # theirs, now named by their draft
    mine = ask_as(client, scene, [draft("one@example.com", first["id"])], point(A_EDGE, "k3"))
    assert mine["id"] == first["id"]


def test_an_object_begun_before_the_first_draft_stays_its_annotator_s(client, scene):
    """Annotator 1's first clicks come before any draft; a draft then names them: annotator 2 (no draft yet)
    does not join that object."""
    first = ask_as(client, scene, None, point(A, "k1"))
    claimed = ask_as(client, scene, [draft("one@example.com")], point(A, "k1"), point(A_EDGE, "k2"))
    assert claimed["id"] == first["id"]
    other = ask_as(client, scene, [], point(A_EDGE, "m1"))
    assert other["id"] != first["id"]
