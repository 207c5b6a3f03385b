"""The worker: a Flower ClientApp that trains the logical clients a round's message lists.

In simulation a worker is a SuperNode (a Ray actor) hosting many logical clients; in deployment it hosts
one. Data and model are rebuilt deterministically from the scenario and cached per process, so any actor
can serve any worker's message.
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedsim.data import FederatedData
from fedsim.engine.cohort import select_cohort_trainer
from fedsim.engine.messages import TrainRequest, decode_train_request, encode_train_reply
from fedsim.engine.protocol import WorkerResult
from fedsim.engine.setup import build_data, build_initial_model
from fedsim.scenario import parse_scenario


def training_device(setting: str) -> torch.device:
    """``engine.device``: ``auto`` = CUDA when this process sees a GPU, else CPU."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@lru_cache(maxsize=4)
def _environment(scenario_json: str) -> tuple[FederatedData, torch.nn.Module]:
    scenario = parse_scenario(json.loads(scenario_json), source="<message>")
    data = build_data(scenario)
    return data, build_initial_model(scenario, data).to(training_device(scenario.engine.device))


def handle_train(request: TrainRequest) -> WorkerResult:
    """Train the request's clients (no Flower types here)."""
    data, model = _environment(json.dumps(request.scenario, sort_keys=True))
    trainer = select_cohort_trainer(str(request.scenario["engine"]["vectorize"]), model, request.train_config)
    return trainer(model, request.params, request.tasks, data, request.train_config)


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Decode the round's work, train the listed clients, reply once with the reduced sum."""
    result = handle_train(decode_train_request(msg.content))
    return Message(content=encode_train_reply(result), reply_to=msg)
