"""The message schema between the ServerApp and a worker's ClientApp, in one place.

Every key that crosses the Flower boundary is a constant here; encode/decode functions turn the engine's
typed objects into Flower ``RecordDict``s and back. The same schema serves simulation (a worker hosts many
logical clients) and deployment (a device hosts one).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsim.engine.protocol import (
    NOISE_MULTIPLIER_KEY,
    ClientClip,
    ClientTask,
    SampleDP,
    TrainConfig,
    WorkerResult,
)
from fedsim.privacy.client_level import clip_mode

MESSAGE_TYPE_TRAIN = "train"
MESSAGE_TYPE_PREPARE = "query.prepare"

PARAMS = "fedsim.params"
CONFIG = "fedsim.config"
DELTA_SUM = "fedsim.delta_sum"
STATS = "fedsim.stats"

SCENARIO_JSON = "scenario_json"
ROUND = "round"
CLIENT_IDS = "client_ids"
CLIENT_SEEDS = "client_seeds"
ROUND_CONFIG_JSON = "round_config_json"
UPDATE_NORMS = "update_norms"
CLIENT_STAT_PREFIX = "client_stat."
CLIENT_WEIGHTS = "client_weights"
CLIENT_GROUPS = "client_groups"
GROUP_SUM_PREFIX = "fedsim.group_sum."

WEIGHT_SUM = "weight_sum"
NUM_EXAMPLES = "num_examples"
TRAIN_LOSS = "train_loss"
FAILED = "failed"
TRAIN_SECONDS = "train_s"
PREPARE_SECONDS = "prepare_s"


@dataclass(frozen=True)
class TrainRequest:
    """What a worker needs for one round: the scenario, the round, the global model and its clients."""

    scenario: Mapping[str, Any]
    round: int
    params: dict[str, torch.Tensor]
    tasks: tuple[ClientTask, ...]
    round_config: Mapping[str, Any] = field(default_factory=dict)
    """The strategy's per-round settings for every client (``RoundPlan.config``, e.g. this round's clip)."""

    @property
    def train_config(self) -> TrainConfig:
        return train_config(self.scenario, self.round_config)


def train_config(scenario: Any, round_config: Mapping[str, Any] | None = None) -> TrainConfig:
    """The client training settings of a scenario (a :class:`Scenario` or its JSON dict).

    With client-level privacy, clients clip their updates; the bound is ``round_config["clip"]`` when the
    strategy sets one (adaptive clipping), else ``privacy.clip``. With sample-level privacy, clients run DP-SGD
    with σ from ``round_config["dp_noise_multiplier"]`` (the strategy wrapper always sends it).

    Raises:
        ValueError: a sample-level DP scenario whose round config lacks σ (a worker must not train without it).
    """
    sc = scenario if isinstance(scenario, Mapping) else scenario.model_dump(mode="json")
    client = sc["client"]
    opt = dict(client["optimizer"])
    privacy = sc.get("privacy")
    clip = sample_dp = None
    if privacy and privacy["level"] == "sample":
        if NOISE_MULTIPLIER_KEY not in (round_config or {}):
            raise ValueError(f"sample-level DP needs {NOISE_MULTIPLIER_KEY!r} in the round config; none was sent")
        sample_dp = SampleDP(
            max_norm=float(privacy["clip"]),
            noise_multiplier=float(round_config[NOISE_MULTIPLIER_KEY]),  # type: ignore[index]
            secure=not bool(privacy["insecure_seed"]),
        )
    if privacy and privacy["level"] == "client":
        clip = ClientClip(
            max_norm=float((round_config or {}).get("clip", privacy["clip"])),
            mode=clip_mode(privacy["per_layer"]),
            layer_split=str(privacy["layer_split"]),
            normalize_layers=bool(privacy["normalize_layers"]),
        )
    return TrainConfig(
        epochs=int(client["epochs"]),
        batch_size=int(client["batch_size"]),
        optimizer=str(opt.pop("name")),
        optimizer_args=opt,
        clip=clip,
        sample_dp=sample_dp,
    )


def encode_prepare_request(scenario: Mapping[str, Any]) -> RecordDict:
    """Server side: ask a worker to get ready (imports, data, model) before round 1."""
    return RecordDict({CONFIG: ConfigRecord({SCENARIO_JSON: json.dumps(scenario, sort_keys=True)})})


def decode_prepare_request(content: RecordDict) -> dict[str, Any]:
    """Worker side: the scenario of a prepare request."""
    return json.loads(str(content.config_records[CONFIG][SCENARIO_JSON]))


def encode_prepare_reply(seconds: float) -> RecordDict:
    """Worker side: ready, after ``seconds`` of preparation."""
    return RecordDict({STATS: MetricRecord({PREPARE_SECONDS: float(seconds)})})


def decode_prepare_reply(content: RecordDict) -> float:
    """Server side: the seconds a worker took to get ready."""
    return float(content.metric_records[STATS][PREPARE_SECONDS])  # type: ignore[arg-type]


def encode_train_request(
    *,
    scenario: Mapping[str, Any],
    round: int,
    params: Mapping[str, torch.Tensor],
    tasks: Sequence[ClientTask],
    round_config: Mapping[str, Any] | None = None,
) -> RecordDict:
    """Server side: one worker's round of work as a RecordDict."""
    config = ConfigRecord(
        {
            SCENARIO_JSON: json.dumps(scenario, sort_keys=True),
            ROUND: int(round),
            CLIENT_IDS: [int(t.cid) for t in tasks],
            CLIENT_SEEDS: [int(t.seed) for t in tasks],
            ROUND_CONFIG_JSON: json.dumps(dict(round_config or {}), sort_keys=True),
        }
    )
    if any(t.group is not None or t.weight is not None for t in tasks):  # event-driven strategies
        config[CLIENT_WEIGHTS] = [float("nan") if t.weight is None else float(t.weight) for t in tasks]
        config[CLIENT_GROUPS] = [-1 if t.group is None else int(t.group) for t in tasks]
    return RecordDict({PARAMS: ArrayRecord({k: v.detach().cpu() for k, v in params.items()}), CONFIG: config})


def decode_train_request(content: RecordDict) -> TrainRequest:
    """Worker side: the inverse of :func:`encode_train_request`."""
    cfg = content.config_records[CONFIG]
    ids = [int(c) for c in cfg[CLIENT_IDS]]  # type: ignore[union-attr]
    seeds = [int(s) for s in cfg[CLIENT_SEEDS]]  # type: ignore[union-attr]
    weights = [float(w) for w in cfg.get(CLIENT_WEIGHTS, [float("nan")] * len(ids))]  # type: ignore[union-attr]
    groups = [int(g) for g in cfg.get(CLIENT_GROUPS, [-1] * len(ids))]  # type: ignore[union-attr]
    return TrainRequest(
        scenario=json.loads(str(cfg[SCENARIO_JSON])),
        round=int(cfg[ROUND]),  # type: ignore[arg-type]
        params=dict(content.array_records[PARAMS].to_torch_state_dict()),
        tasks=tuple(
            ClientTask(cid=c, seed=s, weight=None if math.isnan(w) else w, group=None if g < 0 else g)
            for c, s, w, g in zip(ids, seeds, weights, groups, strict=True)
        ),
        round_config=json.loads(str(cfg.get(ROUND_CONFIG_JSON, "{}"))),
    )


def encode_train_reply(result: WorkerResult) -> RecordDict:
    """Worker side: the reduced sum and per-client facts."""
    stats = MetricRecord(
        {
            WEIGHT_SUM: float(result.weight_sum),
            CLIENT_IDS: [int(c) for c in result.client_ids],
            NUM_EXAMPLES: [int(n) for n in result.num_examples],
            TRAIN_LOSS: [float(x) for x in result.train_loss],
            FAILED: [int(c) for c in result.failed],
            TRAIN_SECONDS: float(result.train_s),
            UPDATE_NORMS: [float(x) for x in result.update_norms],
            **{CLIENT_STAT_PREFIX + k: [float(x) for x in v] for k, v in result.client_stats.items()},
        }
    )
    records: dict[str, Any] = {DELTA_SUM: ArrayRecord(dict(result.weighted_delta_sum)), STATS: stats}
    for group, sums in result.group_sums.items():
        records[f"{GROUP_SUM_PREFIX}{group}"] = ArrayRecord(dict(sums))
    return RecordDict(records)


def decode_train_reply(content: RecordDict) -> WorkerResult:
    """Server side: the inverse of :func:`encode_train_reply`."""
    stats = content.metric_records[STATS]
    return WorkerResult(
        weighted_delta_sum=dict(content.array_records[DELTA_SUM].to_torch_state_dict()),
        group_sums={
            int(name.removeprefix(GROUP_SUM_PREFIX)): dict(record.to_torch_state_dict())
            for name, record in content.array_records.items()
            if name.startswith(GROUP_SUM_PREFIX)
        },
        weight_sum=float(stats[WEIGHT_SUM]),  # type: ignore[arg-type]
        client_ids=[int(c) for c in stats[CLIENT_IDS]],  # type: ignore[union-attr]
        num_examples=[int(n) for n in stats[NUM_EXAMPLES]],  # type: ignore[union-attr]
        train_loss=[float(x) for x in stats[TRAIN_LOSS]],  # type: ignore[union-attr]
        failed=[int(c) for c in stats[FAILED]],  # type: ignore[union-attr]
        train_s=float(stats.get(TRAIN_SECONDS, 0.0)),  # type: ignore[arg-type]
        update_norms=[float(x) for x in stats.get(UPDATE_NORMS, [])],  # type: ignore[union-attr]
        client_stats={
            k.removeprefix(CLIENT_STAT_PREFIX): [float(x) for x in v]  # type: ignore[union-attr]
            for k, v in stats.items()
            if k.startswith(CLIENT_STAT_PREFIX)
        },
    )
