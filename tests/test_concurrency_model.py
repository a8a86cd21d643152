"""Concurrency in model/: requests that miss the tool's image cache together encode an image once, and
loading one LoRA adapter holds up neither the versions already loaded nor a second request for it.
Real threads through the real classes, each bounded in time."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from model.core.clicks import Click
from model.policies.adapters import LoadedAdapters
from model.policies.base import Observation
from model.tools import ImageCache, Segmenter
from model.tools.classical import ClassicalTool
from tests.synthetic import scene

THREADS = 8


def run_together(call: Callable[[int], object], count: int = THREADS, timeout: float = 30) -> list:
    """`call(i)` in `count` threads released at once; what each returned or raised."""
    start = threading.Barrier(count)
    outcomes: list = [None] * count

    def one(index: int) -> None:
        start.wait(timeout)
        try:
            outcomes[index] = call(index)
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), f"still waiting after {timeout} s"
    return outcomes


class SlowEncoder(ClassicalTool):
    """The CPU tool, with an encoder as slow as SAM's that counts its calls (and can fail its first)."""

    def __init__(self, seconds: float = 0.3, fail_first: bool = False, meet: threading.Barrier | None = None):
        super().__init__()
        self.seconds, self.fail_first, self.meet = seconds, fail_first, meet
        self.calls = 0
        self._count = threading.Lock()

    def encode(self, image):
        with self._count:
            self.calls += 1
            first = self.calls == 1
        if self.meet is not None:
            self.meet.wait(10)  # broken (an error) unless the other image encodes at the same time
        time.sleep(self.seconds)
        if first and self.fail_first:
            raise RuntimeError("the encoder ran out of memory")
        return super().encode(image)


def test_requests_missing_one_image_together_encode_it_once():
    tool = SlowEncoder()
    segmenter = Segmenter(tool, ImageCache(64 << 20))
    image, _ = scene(160, 120, seed=1)
    results = run_together(lambda i: segmenter.predict(image.copy(), [Click(80, 60, True)]))
    assert tool.calls == 1, f"{tool.calls} encodings of one image"
    assert all(r.mask.shape == (120, 160) for r in results)
    assert (segmenter.cache.misses, segmenter.cache.hits) == (1, THREADS - 1)


def test_different_images_encode_at_the_same_time():
    tool = SlowEncoder(seconds=0, meet=threading.Barrier(2))
    segmenter = Segmenter(tool, ImageCache(64 << 20))
    images = [scene(160, 120, seed=seed)[0] for seed in (1, 2)]
    encoded = run_together(lambda i: segmenter.encode(images[i]), count=2)
    assert [e.shape for e in encoded] == [(120, 160), (120, 160)], encoded
    assert tool.calls == 2


def test_a_failed_encoding_is_not_kept_and_the_waiters_do_not_hang():
    tool = SlowEncoder(fail_first=True)
    segmenter = Segmenter(tool, ImageCache(64 << 20))
    image, _ = scene(160, 120, seed=3)
    outcomes = run_together(lambda i: segmenter.encode(image))
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert errors and all(isinstance(e, RuntimeError) and "out of memory" in str(e) for e in errors)
    assert all(o.shape == (120, 160) for o in outcomes if o not in errors)
    assert tool.calls == 1 + (len(errors) < THREADS)  # one failed encoding, then at most one that worked
    assert segmenter.encode(image).shape == (120, 160)  # the failure was not cached
    assert len(segmenter.cache) == 1


def test_an_encoding_larger_than_the_whole_cache_answers_but_is_not_kept():
    segmenter = Segmenter(SlowEncoder(seconds=0), ImageCache(max_bytes=10))
    image, _ = scene(160, 120, seed=4)
    assert segmenter.predict(image, [Click(80, 60, True)]).mask.shape == (120, 160)
    assert segmenter.cache.size_bytes <= 10 and len(segmenter.cache) == 0  # the bound holds


# ---------------------------------------------------------------- LoRA adapters
class SlowFiles:
    """Adapter folders that take `seconds` to read (a folder shared between machines), counting reads;
    a folder in `held` is read only once the test releases it. The model is the list of attached names."""

    def __init__(self, seconds: float = 0.3, held: str | None = None, fail_first: bool = False):
        self.seconds, self.held, self.fail_first = seconds, held, fail_first
        self.release, self.reading_held = threading.Event(), threading.Event()
        self.reads: dict[str, int] = {}
        self._count = threading.Lock()

    def read(self, folder: str):
        with self._count:
            self.reads[folder] = self.reads.get(folder, 0) + 1
            first = sum(self.reads.values()) == 1
        if folder == self.held:
            self.reading_held.set()
            self.release.wait(30)
        time.sleep(self.seconds)
        if first and self.fail_first:
            raise OSError(f"{folder}: no adapter_model.safetensors yet")
        return f"weights of {folder}"

    def attach(self, model: list, name: str, read):
        return [*model, name]

    def detach(self, model: list, name: str) -> None:
        model.remove(name)


class Owner:
    """A model and its lock, used as the in-process policy and the Qwen server use theirs."""

    def __init__(self, adapters: LoadedAdapters):
        self.adapters, self.model, self.lock = adapters, [], threading.Lock()

    def generate(self, name: str) -> list:
        self.adapters.prepare(name, f"/models/{name}")
        with self.lock:
            self.model = self.adapters.attach(self.model, name, f"/models/{name}")
            return list(self.model)


def test_a_loading_adapter_holds_up_no_other_version():
    files = SlowFiles(seconds=0, held="/models/v2")
    owner = Owner(LoadedAdapters(files=files))
    owner.generate("v1")
    loading = threading.Thread(target=owner.generate, args=("v2",), daemon=True)
    loading.start()
    assert files.reading_held.wait(10)
    answered = run_together(lambda i: owner.generate("v1"), count=4, timeout=10)  # while v2 is being read
    files.release.set()
    loading.join(10)
    assert all(model == ["v1"] for model in answered) and owner.model == ["v1", "v2"]


def test_requests_for_one_unloaded_adapter_read_it_once():
    files = SlowFiles()
    owner = Owner(LoadedAdapters(files=files))
    answered = run_together(lambda i: owner.generate("v3"))
    assert files.reads == {"/models/v3": 1} and owner.model == ["v3"]
    assert all(model == ["v3"] for model in answered)


def test_an_adapter_that_failed_to_read_is_read_again_and_the_oldest_is_detached():
    files = SlowFiles(fail_first=True)
    owner = Owner(LoadedAdapters(limit=2, files=files))
    outcomes = run_together(lambda i: owner.generate("v4"), count=4)
    assert any(isinstance(o, OSError) for o in outcomes)  # the first read's error, to whoever shared it
    assert owner.generate("v4") == ["v4"] and files.reads["/models/v4"] >= 2
    owner.generate("v5")
    assert owner.generate("v6") == ["v5", "v6"]  # v4, the least recently used, was detached
    assert owner.generate("v4") == ["v6", "v4"]


@pytest.fixture(scope="module")
def lora_folders(taught_vlm, tmp_path_factory):
    """Two LoRA adapters of the tiny VLM, saved as a training job saves them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from model.flywheel.finetune import TrainConfig

    folders = {}
    for name in ("one", "two"):
        model = get_peft_model(AutoModelForImageTextToText.from_pretrained(taught_vlm),
                               LoraConfig(r=2, target_modules=list(TrainConfig().lora_targets)))
        folders[name] = str(tmp_path_factory.mktemp("adapters") / name)
        model.save_pretrained(folders[name])
    return folders


def test_the_policy_answers_through_a_loaded_version_while_another_loads(taught_vlm, lora_folders, monkeypatch):
    """The in-process policy with real peft adapters: while one adapter's weights are being read (held
    back, as a slow shared folder would), a version already loaded answers."""
    import peft.peft_model
    import peft.utils

    from model.policies.prompts import instruction, observation_image
    from model.policies.transformers_vlm import TransformersPolicy

    read_weights = peft.utils.load_peft_weights
    reading, released = threading.Event(), threading.Event()

    def slow_read(folder, *args, **kwargs):
        if folder == lora_folders["two"]:
            reading.set()
            released.wait(60)
        return read_weights(folder, *args, **kwargs)

    for module in (peft.utils, peft.peft_model):  # what the adapter cache calls, and peft's own loader
        monkeypatch.setattr(module, "load_peft_weights", slow_read)
    policy = TransformersPolicy(str(taught_vlm))
    one = policy.with_adapter("one", lora_folders["one"])
    image, mask = scene(160, 120, seed=9)
    observation = Observation(observation_image(image, mask & False), instruction("a red blob"))
    loading = threading.Thread(target=policy.with_adapter, args=("two", lora_folders["two"]), daemon=True)
    loading.start()
    timer = threading.Timer(60, released.set)  # bounded, whatever the code under test does
    timer.start()
    try:
        assert reading.wait(30)
        answer = one.act([observation])
        answered_while_loading = not released.is_set()
    finally:
        released.set()
        timer.cancel()
        loading.join(60)
    assert answered_while_loading, "a loaded version waited for another version's load"
    assert answer[0][0].startswith("Positive point")
    assert policy.with_adapter("two", lora_folders["two"]).act([observation]) == answer  # identity adapters
