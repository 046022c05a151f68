"""Every registered model meets the model contract (see tests/model_contract.py).

Registering a model is all it takes to be checked here: build offline, forward shape,
input errors, one train step, params and MACs in the golden file, metadata schema.
"""

from __future__ import annotations

from model_contract import ModelContract

from models import list_models


class TestRegisteredModels(ModelContract):
    model_names = list_models()
