"""The worker: a Flower ClientApp that trains the logical clients a round's message lists.

In simulation a worker is a SuperNode (a Ray actor) hosting many logical clients; in deployment it hosts
one. Data and model are rebuilt deterministically from the scenario and cached per process, so any actor
can serve any worker's message.
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import lru_cache

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedsim.data import FederatedData
from fedsim.engine.cohort import select_cohort_trainer
from fedsim.engine.memory import memory_budget_bytes
from fedsim.engine.messages import (
    TrainRequest,
    decode_prepare_request,
    decode_train_request,
    encode_prepare_reply,
    encode_train_reply,
)
from fedsim.engine.placement import add_node_identity
from fedsim.engine.protocol import WorkerResult
from fedsim.engine.setup import build_data, build_initial_model
from fedsim.scenario import parse_scenario


def training_device(setting: str) -> torch.device:
    """``engine.device``: ``auto`` = CUDA when this process sees a GPU, else CPU."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@lru_cache(maxsize=4)
def _environment(scenario_json: str) -> tuple[FederatedData, torch.nn.Module, int]:
    """The run's data (pooled training tensors on the training device), model and memory budget."""
    scenario = parse_scenario(json.loads(scenario_json), source="<message>")
    device = training_device(scenario.engine.device)
    data = build_data(scenario)
    data = dataclasses.replace(data, train_x=data.train_x.to(device), train_y=data.train_y.to(device))
    budget = memory_budget_bytes(scenario.engine.memory_budget_mb, device, scenario.engine.gpus_per_worker)
    return data, build_initial_model(scenario, data).to(device), budget


def prepare_environment(scenario: dict) -> float:
    """Build (and cache in this process) the scenario's data and model; return the seconds it took."""
    start = time.perf_counter()
    _environment(json.dumps(scenario, sort_keys=True))
    return time.perf_counter() - start


def handle_train(request: TrainRequest) -> WorkerResult:
    """Train the request's clients (no Flower types here); the reply says how long training took."""
    start = time.perf_counter()
    data, model, budget = _environment(json.dumps(request.scenario, sort_keys=True))
    cfg = dataclasses.replace(request.train_config, memory_budget_bytes=budget)
    trainer = select_cohort_trainer(str(request.scenario["engine"]["vectorize"]), model, cfg)
    result = trainer(model, request.params, request.tasks, data, cfg)
    result.train_s = time.perf_counter() - start
    return result


client_app = ClientApp()


@client_app.query("prepare")
def prepare(msg: Message, context: Context) -> Message:
    """Get ready before round 1 (imports, data, model), while the server builds its own side; say which
    partition this node owns, if its node config names one (deployment)."""
    seconds = prepare_environment(decode_prepare_request(msg.content))
    return Message(content=add_node_identity(encode_prepare_reply(seconds), context.node_config), reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Decode the round's work, train the listed clients, reply once with the reduced sum."""
    result = handle_train(decode_train_request(msg.content))
    return Message(content=encode_train_reply(result), reply_to=msg)
