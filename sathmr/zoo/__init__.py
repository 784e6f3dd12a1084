"""The model zoo: what models exist (:mod:`.registry`), what is on this machine (:mod:`.local`), how to get
them (:mod:`.fetch`, from the Hugging Face Hub) and the `sathmr models` / `sathmr weights` commands
(:mod:`.cli`). Importing the package loads only the registry: no network library."""

from sathmr.zoo.registry import EMBEDDED, MODELS, HubFile, ModelEntry, Reported, get_entry, list_models

__all__ = ["EMBEDDED", "MODELS", "HubFile", "ModelEntry", "Reported", "get_entry", "list_models"]
