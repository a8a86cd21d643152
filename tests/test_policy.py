"""The policy side: the action grammar, observations, the transformers and remote adapters (a real
server process), SegAgent-Qwen's prompt and answers, and the agent with greedy and PRM search."""
from __future__ import annotations

import base64
import io
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from model.agent.loop import Agent, AgentConfig, EpisodeTask
from model.core.clicks import Click
from model.core.masks import iou
from model.policies.actions import Action, ActionParseError, Coordinates, action_for_click, format_action, parse_action
from model.policies.base import Observation
from model.policies.prompts import INSTRUCTION, instruction, observation_image
from model.quality.scorers import PolicyScorer, parse_quality
from model.tools import ImageCache, Segmenter
from model.tools.classical import ClassicalTool
from tests.synthetic import free_port, scene

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- grammar

@pytest.mark.parametrize("text, expected", [
    ("Positive point: (200, 534)", Action("positive", (0.2, 0.534))),
    (" Negative point: (10,20)", Action("negative", (0.01, 0.02))),
    ("negative point:(999, 0)", Action("negative", (0.999, 0.0))),
    ("Positive Point: [3, 4]", Action("positive", (0.003, 0.004))),
    ("Sure. Positive point: (500, 500).", Action("positive", (0.5, 0.5))),
    ("<ref>person</ref><box>(68,308),(255,986)</box> Positive point: (679, 186)",
     Action("positive", (0.679, 0.186), (0.068, 0.308, 0.255, 0.986))),
    ("Finish", Action("finish")),
    ("finished.", Action("finish")),
])
def test_parse_variations(text, expected):
    assert parse_action(text) == expected


@pytest.mark.parametrize("text", ["", "Positive point: (1000, 5)", "Positive point: (-1, 5)",
                                  "Positive point: (2.5, 3)", "point (3, 4)", "Positive point: (3)", "I am done"])
def test_invalid_answers_are_parse_failures(text):
    with pytest.raises(ActionParseError):
        parse_action(text)


def test_unit_coordinates_and_formatting_round_trip():
    unit = Coordinates(scale="unit")
    action = parse_action("Negative point: (0.25, 0.75)", unit)
    assert action == Action("negative", (0.25, 0.75))
    assert parse_action(format_action(action, unit), unit) == action
    with pytest.raises(ActionParseError):
        parse_action("Negative point: (1.0, 0.5)", unit)
    click = Action("positive", (0.5, 0.25)).click(200, 100)
    assert click == Click(100.0, 25.0, True)
    assert format_action(action_for_click(Click(100, 25, True), 200, 100)) == "Positive point: (500, 250)"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_crashes_the_parser(text):
    try:
        action = parse_action(text)
    except ActionParseError:
        return
    if action.point is not None:
        assert all(0 <= v < 1 for v in action.point)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["positive", "negative"]), st.integers(0, 999), st.integers(0, 999),
       st.sampled_from(["xy", "yx"]))
def test_formatted_actions_parse_back(kind, a, b, order):
    coords = Coordinates(order=order)
    action = Action(kind, (a / 1000, b / 1000))
    assert parse_action(format_action(action, coords), coords) == action


# ---------------------------------------------------------------- SegAgent-Qwen

def test_segagent_qwen_prompt_is_the_released_one():
    from policy_server.qwen_model import build_prompt

    released = ('<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nPicture 1: '
                '<img>/tmp/a.jpg</img>\nPlease optimize the semi-transparent green mask in a point-wise manner '
                'based on the image and description content, so that it covers the target object as accurately '
                'as possible. The object description is as follows:<ref>man in red</ref><|im_end|>\n'
                '<|im_start|>assistant\n')
    assert build_prompt("/tmp/a.jpg", instruction("man in red")) == released


def test_segagent_qwen_answers_are_row_then_column():
    """Its evaluation code reads "(a, b)" as (a / 1000 * height, b / 1000 * width)."""
    coords = Coordinates(order="yx")
    action = parse_action(" Positive point: (200, 534)", coords)
    assert action.click(1000, 500) == Click(534.0, 100.0, True)
    boxed = parse_action("<ref>person bottom left</ref><box>(68,308),(255,986)</box> Positive point: (679, 186)",
                         coords)
    assert boxed.box == (0.068, 0.308, 0.255, 0.986)  # boxes stay (x, y), as Qwen-VL writes them
    assert boxed.point == (0.186, 0.679)


# ---------------------------------------------------------------- observations, quality answers

def test_observation_overlay_and_size():
    image, mask = scene(640, 480)
    picture = observation_image(image, mask, "green", max_side=320)
    assert picture.size == (320, 240)
    pixels = np.asarray(picture)
    inside, outside = pixels[120, 160], pixels[5, 5]
    assert inside[1] > image[240, 320, 1]  # tinted green inside the mask
    assert abs(int(outside[1]) - int(image[10, 10, 1])) < 40
    with pytest.raises(ValueError):
        observation_image(image, mask, "purple")
    assert "<ref>a cat</ref>" in instruction("a cat") and INSTRUCTION.count("{description}") == 1


@pytest.mark.parametrize("text, value", [("87", 0.87), ("IoU: 0.6", 0.6), ("about 45%", 0.45), ("none", None),
                                         ("250", None)])
def test_quality_answers(text, value):
    assert parse_quality(text) == value


# ---------------------------------------------------------------- the transformers adapter and the agent

@pytest.fixture(scope="module")
def classical():
    return Segmenter(ClassicalTool(), ImageCache(64 << 20))


def test_taught_vlm_answers_its_action_in_a_batch(taught_vlm):
    from model.policies.transformers_vlm import TransformersPolicy

    policy = TransformersPolicy(str(taught_vlm))
    image, mask = scene(320, 240)
    observations = [Observation(observation_image(image, np.zeros_like(mask)), instruction("a red blob")),
                    Observation(observation_image(image[:100, :150], np.zeros((100, 150), bool)), instruction("x"))]
    assert policy.act(observations) == [["Positive point: (500, 500)"], ["Positive point: (500, 500)"]]
    assert [len(a) for a in policy.act(observations, samples=3)] == [3, 3]


def test_agent_with_the_taught_vlm_segments_the_centre_object(taught_vlm, classical):
    from model.policies.transformers_vlm import TransformersPolicy

    agent = Agent(classical, TransformersPolicy(str(taught_vlm)), AgentConfig(max_steps=3))
    image, target = scene(320, 240, seed=2)
    episode = agent.run(EpisodeTask(image, "the red blob"))
    assert episode.clicks[0] == Click(160.0, 120.0, True)
    assert episode.stop_reason == "repeated_click"  # it answers the same click again: the episode ends
    assert iou(episode.mask, target) >= 0.5
    assert agent.steps_taken == 2 and agent.seconds["policy"] > 0 and agent.seconds["tool"] > 0


class ScriptedPolicy:
    """A policy whose answers the test writes: each call pops the next list of answers per observation."""

    name = "scripted"
    coordinates = Coordinates()

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    def act(self, observations, samples=1, temperature=0.0):
        self.calls.append((len(observations), samples, temperature))
        answers = self.script.pop(0)
        return [list(answers) for _ in observations]


def test_tree_search_keeps_the_candidate_the_scorer_prefers(classical):
    image, _target = scene(320, 240, seed=3)
    # two candidates: a click on the background (top-left) and one on the object (centre)
    policy = ScriptedPolicy([["Positive point: (50, 50)", "Positive point: (500, 500)"], ["Finish", "Finish"]])

    def prefers_the_centre(img, mask, description):
        return 1.0 if mask[120, 160] else 0.0

    agent = Agent(classical, policy, AgentConfig(max_steps=3, samples=2), scorer=prefers_the_centre)
    episode = agent.run(EpisodeTask(image, "the red blob"))
    assert episode.clicks == [Click(160.0, 120.0, True)]
    assert episode.stop_reason == "finish" and episode.score == 1.0
    assert policy.calls[0] == (1, 2, agent.config.temperature)

    def prefers_the_corner(img, mask, description):
        return 1.0 if mask[12, 16] else 0.0

    policy = ScriptedPolicy([["Positive point: (50, 50)", "Positive point: (500, 500)"], ["Finish", "Finish"]])
    episode = Agent(classical, policy, AgentConfig(max_steps=3, samples=2), scorer=prefers_the_corner).run(
        EpisodeTask(image, "the red blob"))
    assert episode.clicks == [Click(16.0, 12.0, True)]


def test_unparsable_answers_are_retried_then_the_episode_stops(classical):
    image, _ = scene(160, 120)
    policy = ScriptedPolicy([["gibberish"], ["Positive point: (500, 500)"], ["nope"], ["still no"], ["no"]])
    episode = Agent(classical, policy, AgentConfig(max_steps=4, max_retries=2)).run(EpisodeTask(image, "blob"))
    assert len(episode.steps) == 1 and episode.stop_reason == "parse_failure"
    assert episode.parse_failures == 4
    assert [call[2] for call in policy.calls] == [0.0, 0.8, 0.0, 0.8, 0.8]  # retries sample


def test_refine_from_a_box_and_converged_stop(classical):
    image, target = scene(320, 240, seed=4)
    rows, cols = np.nonzero(target)
    box = (cols.min() - 5, rows.min() - 5, cols.max() + 5, rows.max() + 5)
    policy = ScriptedPolicy([["Positive point: (500, 500)"], ["Positive point: (510, 500)"]])
    episode = Agent(classical, policy, AgentConfig(max_steps=2)).run(EpisodeTask(image, "blob", box=box))
    assert iou(episode.initial_mask, target) > 0.8  # the box alone, by the tool
    assert iou(episode.mask, target) > 0.8


def test_policy_scorer_asks_the_policy(classical):
    image, mask = scene(64, 48)
    policy = ScriptedPolicy([["73"]])
    assert PolicyScorer(policy)(image, mask, "blob") == pytest.approx(0.73)


# ---------------------------------------------------------------- the remote adapter, against a real server

@pytest.fixture(scope="module")
def policy_server(taught_vlm, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("policy-server") / "server.log"
    process = subprocess.Popen([sys.executable, "-m", "model", "serve-policy", "--policy", str(taught_vlm),
                                "--port", str(port), "--model-id", "tiny"], cwd=ROOT, stdout=open(log, "w"),
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        process.kill()
        raise RuntimeError(log.read_text())
    yield url
    process.terminate()
    process.wait(timeout=20)


def test_remote_policy_against_a_real_server(policy_server, classical):
    from model.policies import make_policy

    policy = make_policy(policy_server)
    assert policy.model == "tiny"
    image, target = scene(320, 240, seed=5)
    observation = Observation(observation_image(image, np.zeros_like(target)), instruction("the red blob"))
    assert policy.act([observation, observation]) == [["Positive point: (500, 500)"]] * 2
    assert len(policy.act([observation], samples=2)[0]) == 2
    episode = Agent(classical, policy, AgentConfig(max_steps=2)).run(EpisodeTask(image, "the red blob"))
    assert iou(episode.mask, target) >= 0.5


def test_policy_server_refuses_bad_requests(policy_server):
    url = f"{policy_server}/v1/chat/completions"
    remote_image = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, {"type": "text", "text": "hi"}]}]}
    assert requests.post(url, json=remote_image, timeout=10).status_code == 400
    assert requests.post(url, json={"messages": []}, timeout=10).status_code == 400
    garbage = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"xx").decode()}}]}]}
    assert requests.post(url, json=garbage, timeout=10).status_code == 400
    assert requests.get(f"{policy_server}/health", timeout=10).ok


def test_a_policy_server_refuses_requests_beyond_its_bound_and_health_still_answers():
    """A model answers one request at a time: requests beyond the bound get 503 at once instead of queueing
    without end, and /health does not wait for the model."""
    from PIL import Image
    from werkzeug.serving import make_server

    from model.policies.openai_protocol import create_chat_app

    release, answering = threading.Event(), threading.Semaphore(0)

    def slow_answer(_request):
        answering.release()
        release.wait(30)
        return ["Positive point: (500, 500)"]

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}},
        {"type": "text", "text": "the blob"}]}]}
    server = make_server("127.0.0.1", free_port(), create_chat_app(slow_answer, lambda: ["slow"], max_in_flight=2),
                         threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(requests.post, f"{url}/v1/chat/completions", json=body, timeout=30) for _ in range(2)]
            try:
                assert answering.acquire(timeout=10) and answering.acquire(timeout=10)
                busy = requests.post(f"{url}/v1/chat/completions", json=body, timeout=10)
                assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
                assert "busy" in busy.json()["error"]["message"]
                assert requests.get(f"{url}/health", timeout=10).ok
            finally:
                release.set()  # before the pool waits for the held requests
            assert [future.result().status_code for future in held] == [200, 200]
        answered = requests.post(f"{url}/v1/chat/completions", json=body, timeout=10)
        assert answered.json()["choices"][0]["message"]["content"] == "Positive point: (500, 500)"
    finally:
        server.shutdown()


def test_unreachable_policy_is_a_clear_error():
    from model.policies import PolicyError, make_policy

    with pytest.raises(PolicyError, match="lists no model"):
        make_policy(f"http://127.0.0.1:{free_port()}")
    policy = make_policy(f"http://127.0.0.1:{free_port()}", model="x")
    image, mask = scene(32, 32)
    with pytest.raises(PolicyError, match="failed"):
        policy.act([Observation(observation_image(image, mask), "x")])


def test_a_lora_adapter_loads_on_top_of_the_base(taught_vlm, tmp_path):
    """SEGAGENT_POLICY_ADAPTER: a peft LoRA adapter saved for the base, loaded by path on top of it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from model.policies.transformers_vlm import TransformersPolicy

    base = AutoModelForImageTextToText.from_pretrained(taught_vlm)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a visible change: LoRA's B matrices start at zero
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)
    lora.save_pretrained(tmp_path / "adapter")
    policy = TransformersPolicy(str(taught_vlm), adapter=str(tmp_path / "adapter"))
    assert policy.name.endswith("+" + str(tmp_path / "adapter"))
    image, mask = scene(160, 120)
    [[answer]] = policy.act([Observation(observation_image(image, np.zeros_like(mask)), instruction("blob"))])
    assert answer != "Positive point: (500, 500)"  # the adapter changed what the base answers
