"""The observation formats: what the released SegAgent-Qwen policy is shown must be what SegAgent's evaluation code
shows it (the overlay at alpha 0.5 on the full-resolution image, truncated to uint8, sent as a JPEG at PIL's default
quality, resized to 448 x 448 bicubic by Qwen-VL's own transform), and the agent loop, the remote policy, the export
and `python -m model observe` must all agree on it."""
from __future__ import annotations

import base64
import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from model.agent.loop import Agent, AgentConfig, EpisodeTask
from model.cli import main
from model.flywheel.export import export_sharegpt
from model.flywheel.sources import simulated
from model.flywheel.trajectories import TrajectoryStore
from model.policies.actions import Coordinates, parse_action
from model.policies.prompts import observation_format, observation_image
from model.policies.remote import RemotePolicy
from model.tools import ImageCache, Segmenter, make_segmenter
from model.tools.classical import ClassicalTool
from tests.synthetic import png_bytes, scene

GREEN = np.array([0, 255, 0])
QWEN_SIDE = 448


def textured_scene(width: int = 640, height: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """Gradients under a fine texture (which a shrink to 448 first would blur), and an irregular mask: a tilted
    ellipse with a hole, and a separate triangle."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    texture = 60 * np.sin(2 * np.pi * cols / 8) * np.sin(2 * np.pi * rows / 9)
    image = np.stack([40 + 160 * cols / (width - 1), 65 + 0 * cols, 60 + 120 * rows / (height - 1)], -1)
    image += texture[..., None] + np.random.default_rng(0).normal(0, 1, image.shape)
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (300, 220), (170, 110), 25, 0, 360, 1, -1)
    cv2.circle(mask, (280, 220), 40, 0, -1)
    cv2.fillPoly(mask, [np.array([[420, 60], [600, 140], [470, 300]])], 1)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(bool)


def official_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """SegAgent's evaluation code's formula, written out here independently of model/."""
    out = image.copy()
    out[mask] = (image[mask] * (1 - alpha) + GREEN * alpha).astype(np.uint8)
    return out


def qwen_resize(picture: Image.Image) -> np.ndarray:
    """Qwen-VL's transform: Resize((448, 448), BICUBIC) on a PIL image, that is PIL's own bicubic."""
    return np.asarray(picture.convert("RGB").resize((QWEN_SIDE, QWEN_SIDE), Image.Resampling.BICUBIC), np.float64)


def observe(tmp_path, image, mask, observation: str, *extra: str) -> bytes:
    (tmp_path / "image.png").write_bytes(png_bytes(image))
    (tmp_path / "mask.png").write_bytes(png_bytes(mask.astype(np.uint8) * 255))
    out = tmp_path / f"observation-{observation}"
    assert main(["observe", "--image", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"),
                 "--format", observation, "--out", str(out), *extra]) == 0
    return out.read_bytes()


def test_segagent_qwen_sees_what_the_official_code_shows_it(tmp_path):
    image, mask = textured_scene()
    sent = observe(tmp_path, image, mask, "segagent-qwen")
    seen = qwen_resize(Image.open(io.BytesIO(sent)))
    official = qwen_resize(Image.fromarray(official_overlay(image, mask)))
    # what the code before the formats did, and a plain alpha-0.4 overlay; both lossless, and still farther off
    shrunk_first = Image.fromarray(official_overlay(image, mask)).resize((448, 336), Image.Resampling.BILINEAR)
    alternatives = {"alpha 0.4": qwen_resize(Image.fromarray(official_overlay(image, mask, 0.4))),
                    "shrunk to 448 first": qwen_resize(shrunk_first)}

    error = np.abs(seen - official).mean()
    assert error < 2.75  # JPEG's noise only
    for name, alternative in alternatives.items():
        assert np.abs(alternative - official).mean() > 2.75, f"the test cannot tell {name} apart"
        assert np.abs(seen - alternative).mean() > error, name

    inside = cv2.erode(mask.astype(np.uint8), np.ones((9, 9), np.uint8))
    inside = cv2.resize(inside, (QWEN_SIDE, QWEN_SIDE), interpolation=cv2.INTER_NEAREST).astype(bool)
    green = seen[..., 1][inside].mean()
    assert 155 < green < 165 and abs(green - official[..., 1][inside].mean()) < 2  # 65 / 2 + 127.5
    assert alternatives["alpha 0.4"][..., 1][inside].mean() < green - 10  # 0.6 * 65 + 102


def test_formats_travel_as_jpeg_at_full_resolution_or_png_shrunk(tmp_path):
    image, mask = textured_scene()
    qwen = observe(tmp_path, image, mask, "segagent-qwen")
    assert qwen[:2] == b"\xff\xd8" and Image.open(io.BytesIO(qwen)).size == (640, 480)
    generic = observe(tmp_path, image, mask, "segagent", "--color", "red")
    assert generic[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(generic)).size == (448, 336)
    pixels = np.asarray(Image.open(io.BytesIO(generic)))
    assert pixels[150, 200, 0] > pixels[5, 5, 0] + 50  # tinted red inside the mask


def test_a_mask_of_another_size_is_a_clear_error(tmp_path, capsys):
    image, mask = textured_scene()
    with pytest.raises(SystemExit, match="the mask is 320 x 240 pixels and the image 640 x 480"):
        observe(tmp_path, image, mask[::2, ::2], "segagent-qwen")
    (tmp_path / "mask.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="not a readable mask"):
        main(["observe", "--image", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"),
              "--format", "segagent", "--out", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="observation format must be one of"):
        observation_image(image, mask, observation="qwen")


class _Answered:
    def __init__(self, answer: str):
        self.answer = answer

    def raise_for_status(self) -> None:
        pass

    def json(self) -> dict:
        return {"choices": [{"message": {"content": self.answer}}]}


def test_the_agent_sends_a_segagent_qwen_policy_the_full_resolution_jpeg(tmp_path):
    image, _ = scene(640, 480, seed=7)
    policy = RemotePolicy("http://127.0.0.1:9", model="segagent-qwen", answer_format="segagent-qwen")
    bodies: list[dict] = []

    def post(url, json, timeout):
        bodies.append(json)
        return _Answered("Positive point: (500, 500)")

    policy.session.post = post  # type: ignore[method-assign]
    agent = Agent(Segmenter(ClassicalTool(), ImageCache(64 << 20)), policy,
                  AgentConfig(max_steps=1, observation_format="segagent-qwen"))
    episode = agent.run(EpisodeTask(image, "the red blob"))
    assert len(episode.steps) == 1
    url = bodies[0]["messages"][0]["content"][0]["image_url"]["url"]
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix)
    sent = base64.b64decode(url[len(prefix):])
    assert Image.open(io.BytesIO(sent)).size == (640, 480)
    # the very bytes `observe` writes for the first step's mask (none yet)
    assert sent == observe(tmp_path, image, np.zeros((480, 640), bool), "segagent-qwen")


def test_the_export_writes_the_bytes_the_policy_is_sent(tmp_path):
    image, target = scene(160, 120, seed=3)
    store = TrajectoryStore(tmp_path / "trajectories")
    record = simulated(make_segmenter("classical"), image, target, "scratch", "Object", "a red blob",
                       store.put_image(image))
    store.replace_annotation("1", 5, 11, "v1", [record])
    assert export_sharegpt(store, tmp_path / "export", observation="segagent-qwen") == len(record.steps)
    examples = json.loads((tmp_path / "export" / "segagent.json").read_text())
    form = observation_format("segagent-qwen")
    for example, step in zip(examples, record.steps, strict=True):
        [path] = example["images"]
        assert path.endswith(".jpg")
        expected = form.encode(observation_image(image, step.mask_before, "green", 448, "segagent-qwen"))
        assert (tmp_path / "export" / path).read_bytes() == expected
        # and the action as that policy writes it: row first
        answer = parse_action(example["conversations"][1]["value"], Coordinates("int1000", "yx"))
        click = answer.click(160, 120)
        assert click.positive == step.click.positive
        assert abs(click.x - step.click.x) <= 1 and abs(click.y - step.click.y) <= 1


def test_the_agent_and_the_policy_scorer_show_the_policy_its_own_format(tmp_path):
    """Built from the settings (the backend's agent, bench-flywheel's), they show a segagent-qwen policy what it
    was trained on."""
    from model.agent.loop import AgentConfig
    from model.quality.scorers import PolicyScorer
    from model.settings import Settings

    settings = Settings(data_dir=tmp_path, policy_format="segagent-qwen")
    assert AgentConfig.from_settings(settings).observation_format == "segagent-qwen"

    class Recording:
        name, coordinates = "recording", Coordinates()

        def __init__(self):
            self.seen = []

        def act(self, observations, samples=1, temperature=0.0):
            self.seen += [o.image for o in observations]
            return [["IoU: 73"]] * len(observations)

    policy = Recording()
    image, mask = scene(640, 480)
    PolicyScorer(policy, observation="segagent-qwen")(image, mask, "blob")
    assert policy.seen[0].size == (640, 480)  # full resolution, not shrunk to 448
