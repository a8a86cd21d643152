"""LoRA adapters loaded by name onto one model with peft, a bounded number at a time: how the in-process
policy (transformers_vlm.py) and the SegAgent-Qwen server (policy_server/qwen_model.py) serve trained
versions. The peft calls used here are the same in peft 0.5 (the Qwen server's environment) and the
backend's peft."""
from __future__ import annotations

import logging
from collections import OrderedDict

log = logging.getLogger(__name__)


class LoadedAdapters:
    """The adapters loaded onto a model, least recently used first. Beyond `limit` the oldest is unloaded;
    it is loaded again when next asked for. Call with the lock of the model's owner held."""

    def __init__(self, limit: int = 8):
        self.limit = limit
        self._folders: OrderedDict[str, str] = OrderedDict()  # name -> folder

    def load(self, model, name: str, folder: str):
        """`model` with the adapter `name` from `folder` loaded, in eval mode: a PeftModel, wrapping `model`
        the first time. What peft raises is raised again, with nothing left half loaded."""
        from peft import PeftModel

        if name in self._folders:
            self._folders.move_to_end(name)
            return model
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(folder, adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, folder, adapter_name=name)
        except Exception:
            if isinstance(model, PeftModel) and name in model.peft_config:
                model.delete_adapter(name)  # half loaded: its config without its weights
            raise
        self._folders[name] = folder
        log.info("adapter %s loaded from %s", name, folder)
        while len(self._folders) > self.limit:
            evicted, _ = self._folders.popitem(last=False)
            model.delete_adapter(evicted)
            log.info("adapter %s unloaded (more than %d loaded)", evicted, self.limit)
        return model.eval()
