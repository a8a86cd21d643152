"""A remote OpenAI-compatible chat-completions endpoint with image input (vLLM, `transformers serve`,
`python -m model serve-policy`, or the SegAgent-Qwen server): the scale-out path, where many backend
replicas share a pool of policy servers."""
from __future__ import annotations

import base64
import copy
import logging
from concurrent.futures import ThreadPoolExecutor

import requests

from model.policies.actions import Coordinates
from model.policies.base import Observation, PolicyError
from model.policies.model_names import versioned_model
from model.policies.prompts import ObservationFormat, observation_format

log = logging.getLogger(__name__)

# How each family of served models writes coordinates
ANSWER_FORMATS = {"segagent": Coordinates("int1000", "xy"), "segagent-qwen": Coordinates("int1000", "yx")}


def image_data_url(image, form: ObservationFormat) -> str:
    return f"data:{form.media_type};base64," + base64.b64encode(form.encode(image)).decode("ascii")


class RemotePolicy:
    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 answer_format: str = "segagent", timeout: float = 120.0, max_tokens: int = 48, concurrency: int = 8):
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer format must be one of {sorted(ANSWER_FORMATS)}")
        root = base_url.rstrip("/")
        self.base_url = root if root.endswith("/v1") else root + "/v1"
        self.coordinates = ANSWER_FORMATS[answer_format]
        self.observation = observation_format(answer_format)  # how the pictures travel
        self.session = requests.Session()
        self.session.trust_env = False
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout
        self.max_tokens = max_tokens
        self._pool = ThreadPoolExecutor(concurrency)
        self.model = model or self._first_model()
        self.name = f"{self.base_url} ({self.model})"

    def _first_model(self) -> str:
        try:
            response = self.session.get(f"{self.base_url}/models", timeout=self.timeout)
            response.raise_for_status()
            return response.json()["data"][0]["id"]
        except (requests.RequestException, KeyError, IndexError, ValueError) as exc:
            raise PolicyError(f"policy endpoint {self.base_url} lists no model: {exc}") from exc

    def _ask(self, observation: Observation, samples: int, temperature: float) -> list[str]:
        body = {"model": self.model, "n": samples, "temperature": temperature, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": image_data_url(observation.image, self.observation)}},
                    {"type": "text", "text": observation.text}]}]}
        try:
            response = self.session.post(f"{self.base_url}/chat/completions", json=body, timeout=self.timeout)
            response.raise_for_status()
            choices = response.json()["choices"]
            return [str(choice["message"]["content"] or "") for choice in choices]
        except (requests.RequestException, KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"policy endpoint {self.base_url} failed: {exc}") from exc

    def act(self, observations: list[Observation], samples: int = 1, temperature: float = 0.0) -> list[list[str]]:
        return list(self._pool.map(lambda o: self._ask(o, samples, temperature), observations))

    def for_version(self, scope: str, version: str) -> RemotePolicy:
        """This endpoint asked for a trained version of its model (the server loads its adapter by name)."""
        policy = copy.copy(self)  # the session and the pool are shared
        policy.model = versioned_model(self.model, scope, version)
        policy.name = f"{self.base_url} ({policy.model})"
        return policy
