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
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsim.privacy.client_level import clip_mode
from fedsim.protocol import (
    NOISE_MULTIPLIER_KEY,
    ClientClip,
    ClientTask,
    SampleDP,
    TrainConfig,
    WorkerResult,
)

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
            raise ValueError(
                f"sample-level DP needs {NOISE_MULTIPLIER_KEY!r} in the round config; none was sent"
            )
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


# ------------------------------------------------------------------------------ gossip (issue 8)
# One message per worker per superstep (``fedsim.gossip.supersteps``): phase B of the last tick with the models the
# other workers sent at it, an evaluation flag, phase A of the next tick, and which of its nodes other workers' nodes
# pull from. The worker keeps its shard (node models, buffers, clocks) in its ``context.state``.

MESSAGE_TYPE_GOSSIP = "train.gossip"

GOSSIP_MAIL = "fedsim.gossip.mail"
GOSSIP_MODELS = "fedsim.gossip.models"
GOSSIP_STATE = "fedsim.gossip.shard"
GOSSIP_STATE_CONFIG = "fedsim.gossip.shard_config"
STATE_TOKEN = "token"

OWNED = "owned"
B_TICK = "b_tick"
A_TICK = "a_tick"
EVALUATE = "evaluate"
SERVE_NODES = "serve_nodes"
SERVE_SIZES = "serve_sizes"
SERVE_PULLERS = "serve_pullers"
SNAPSHOT = "snapshot"
GOSSIP_RESTORE = "fedsim.gossip.restore"
MAIL_SENDERS = "mail_senders"
MAIL_SIZES = "mail_sizes"
MAIL_DESTS = "mail_dests"
NEXT_TICK = "next_tick"
PULL_NODES = "pull_nodes"
PULL_TICKS = "pull_ticks"
LOSSES = "losses"
COUNT_NAMES = "count_names"
COUNT_VALUES = "count_values"
ONLINE = "online"


PACKED_STYPE = "fedsim.packed"
"""The ``stype`` of an :class:`~flwr.app.Array` that holds several tensors' raw bytes end to end (one per dtype)."""
PACKED_NAMES = "names"
PACKED_DTYPES = "dtypes"
PACKED_NDIMS = "ndims"
PACKED_SHAPES = "shapes"
LAYOUT = ".layout"


def pack_tensors(tensors: Mapping[str, torch.Tensor]) -> tuple[ArrayRecord, ConfigRecord]:
    """Tensors as one ``Array`` of raw bytes per dtype and their layout (names, dtypes, shapes).

    Why: a gossip worker's shard (its nodes' models, ~10 MB for 500 nodes of the quickstart MLP) travels in its
    Flower ``context.state`` at every superstep, and the mail between workers in every message; Flower's own
    ``ArrayRecord`` of tensors writes and reads each tensor through ``numpy.save``/``numpy.load``, several
    times the cost of copying the bytes once. :func:`unpack_tensors` is the inverse (bit-exact)."""
    groups: dict[str, list[str]] = {}
    for name, t in tensors.items():
        groups.setdefault(str(t.dtype).removeprefix("torch."), []).append(name)
    arrays: dict[str, Array] = {}
    for dtype, names in groups.items():
        parts = [tensors[n].detach().cpu().contiguous().reshape(-1).numpy() for n in names]
        data = b"".join(memoryview(a) for a in parts)  # the one copy
        size = sum(a.size for a in parts)
        arrays[dtype] = Array(dtype=dtype, shape=(size,), stype=PACKED_STYPE, data=data)
    layout = ConfigRecord(
        {
            PACKED_NAMES: list(tensors),
            PACKED_DTYPES: [str(t.dtype).removeprefix("torch.") for t in tensors.values()],
            PACKED_NDIMS: [t.dim() for t in tensors.values()],
            PACKED_SHAPES: [int(x) for t in tensors.values() for x in t.shape],
        }
    )
    return ArrayRecord(arrays), layout  # type: ignore[arg-type]


def unpack_tensors(record: ArrayRecord, layout: ConfigRecord) -> dict[str, torch.Tensor]:
    """The tensors :func:`pack_tensors` packed, in their order (each one a view of one fresh buffer per dtype)."""
    import numpy as np

    flat = {
        dtype: torch.from_numpy(np.frombuffer(a.data, dtype=a.dtype).copy()) for dtype, a in record.items()
    }
    pos = dict.fromkeys(flat, 0)
    shapes, k, out = [int(x) for x in layout[PACKED_SHAPES]], 0, {}  # type: ignore[union-attr]
    names, dtypes, ndims = layout[PACKED_NAMES], layout[PACKED_DTYPES], layout[PACKED_NDIMS]
    for name, dtype, ndim in zip(names, dtypes, ndims, strict=True):  # type: ignore[arg-type]
        shape, k = shapes[k : k + int(ndim)], k + int(ndim)
        size = math.prod(shape)
        out[str(name)] = flat[str(dtype)][pos[dtype] : pos[dtype] + size].view(shape)
        pos[dtype] += size
    return out


def put_packed(records: dict[str, Any], key: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Add ``tensors`` packed to ``records`` (a RecordDict's items) under ``key`` (and ``key + LAYOUT``)."""
    records[key], records[key + LAYOUT] = pack_tensors(tensors)


def get_packed(content: RecordDict, key: str) -> dict[str, torch.Tensor] | None:
    """The tensors :func:`put_packed` added under ``key`` (None when there are none)."""
    record = content.array_records.get(key)
    return None if record is None else unpack_tensors(record, content.config_records[key + LAYOUT])


def _encode_mail(mail: Any, config: ConfigRecord, records: dict[str, Any]) -> None:
    config[MAIL_SENDERS] = [int(x) for x in mail.senders]
    config[MAIL_SIZES] = [len(d) for d in mail.dests]
    config[MAIL_DESTS] = [int(x) for d in mail.dests for x in d]
    put_packed(records, GOSSIP_MAIL, mail.params)


def _decode_mail(config: Any, content: RecordDict) -> Any:
    import numpy as np

    from fedsim.gossip.shard import Mail

    sizes = [int(x) for x in config[MAIL_SIZES]]
    flat = np.asarray([int(x) for x in config[MAIL_DESTS]], dtype=np.int64)
    cuts = np.cumsum([0, *sizes])
    return Mail(
        np.asarray([int(x) for x in config[MAIL_SENDERS]], dtype=np.int64),
        [flat[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)],
        get_packed(content, GOSSIP_MAIL) or {},
    )


def encode_gossip_order(
    *,
    scenario: Mapping[str, Any],
    superstep: int,
    owned: Sequence[int],
    order: Any,
    like: Mapping[str, torch.Tensor],
    restore: Mapping[str, torch.Tensor] | None = None,
) -> RecordDict:
    """Server side: one worker's superstep (a ``fedsim.gossip.supersteps.WorkOrder``); ``like``: one model's
    tensors (the shapes of an empty inbox); ``restore``: the shard's state to load first (a resumed run)."""
    from fedsim.gossip.shard import Mail

    serve = sorted(order.serve.items())
    config = ConfigRecord(
        {
            SCENARIO_JSON: json.dumps(scenario, sort_keys=True),
            ROUND: int(superstep),
            OWNED: [int(x) for x in owned],
            B_TICK: -1 if order.b_tick is None else int(order.b_tick),
            A_TICK: -1 if order.a_tick is None else int(order.a_tick),
            EVALUATE: bool(order.evaluate),
            SERVE_NODES: [int(j) for j, _ in serve],
            SERVE_SIZES: [len(r) for _, r in serve],
            SERVE_PULLERS: [int(x) for _, r in serve for x in r],
        }
    )
    inbox = (
        order.inbox if order.inbox is not None else Mail.empty({k: v.unsqueeze(0) for k, v in like.items()})
    )
    records: dict[str, Any] = {CONFIG: config}
    _encode_mail(inbox, config, records)
    if restore is not None:
        put_packed(records, GOSSIP_RESTORE, restore)
    return RecordDict(records)


def encode_gossip_snapshot_request(*, scenario: Mapping[str, Any], owned: Sequence[int]) -> RecordDict:
    """Server side: ask a worker for its shard's state (for a checkpoint); it runs nothing."""
    config = ConfigRecord(
        {SCENARIO_JSON: json.dumps(scenario, sort_keys=True), ROUND: -1, OWNED: [int(x) for x in owned], SNAPSHOT: True}
    )
    return RecordDict({CONFIG: config})


def is_gossip_snapshot_request(content: RecordDict) -> bool:
    """Worker side: whether a gossip message asks for the shard's state instead of a superstep."""
    return bool(content.config_records[CONFIG].get(SNAPSHOT, False))


def encode_gossip_snapshot(state: Mapping[str, torch.Tensor]) -> RecordDict:
    """Worker side: the shard's state (``GossipShard.state``)."""
    records: dict[str, Any] = {}
    put_packed(records, GOSSIP_STATE, state)
    return RecordDict(records)


def decode_gossip_snapshot(content: RecordDict) -> dict[str, torch.Tensor]:
    """Server side: the inverse of :func:`encode_gossip_snapshot`."""
    state = get_packed(content, GOSSIP_STATE)
    assert state is not None
    return state


def gossip_restore_state(content: RecordDict) -> dict[str, torch.Tensor] | None:
    """Worker side: the shard state a resumed run's first order hands over (None: keep the node's own)."""
    return get_packed(content, GOSSIP_RESTORE)


def decode_gossip_order(content: RecordDict) -> tuple[dict[str, Any], list[int], Any]:
    """Worker side: the scenario, the worker's nodes and the ``WorkOrder``."""
    from fedsim.gossip.supersteps import WorkOrder

    cfg = content.config_records[CONFIG]
    b, a = int(cfg[B_TICK]), int(cfg[A_TICK])  # type: ignore[arg-type]
    nodes, sizes = [int(x) for x in cfg[SERVE_NODES]], [int(x) for x in cfg[SERVE_SIZES]]  # type: ignore[union-attr]
    pullers, serve, pos = [int(x) for x in cfg[SERVE_PULLERS]], {}, 0  # type: ignore[union-attr]
    for j, k in zip(nodes, sizes, strict=True):
        serve[j], pos = pullers[pos : pos + k], pos + k
    order = WorkOrder(
        b_tick=None if b < 0 else b,
        inbox=_decode_mail(cfg, content),
        evaluate=bool(cfg[EVALUATE]),
        a_tick=None if a < 0 else a,
        serve=serve,
    )
    return json.loads(str(cfg[SCENARIO_JSON])), [int(x) for x in cfg[OWNED]], order  # type: ignore[union-attr]


def encode_gossip_report(report: Any, train_s: float) -> RecordDict:
    """Worker side: a ``fedsim.gossip.supersteps.ShardReport``."""
    names = sorted(report.counts)
    config = ConfigRecord(
        {
            NEXT_TICK: int(report.next_tick),
            PULL_NODES: [int(x) for x in report.pull_nodes],
            PULL_TICKS: [int(x) for x in report.pull_ticks],
            LOSSES: [float(x) for x in report.losses],
            COUNT_NAMES: names,
            COUNT_VALUES: [int(report.counts[k]) for k in names],
            ONLINE: int(report.online),
            TRAIN_SECONDS: float(train_s),
        }
    )
    records: dict[str, Any] = {CONFIG: config}
    _encode_mail(report.mail, config, records)
    if report.params is not None:
        put_packed(records, GOSSIP_MODELS, report.params)
    return RecordDict(records)


def decode_gossip_report(content: RecordDict) -> tuple[Any, float]:
    """Server side: the ``ShardReport`` and the worker's seconds of work."""
    import numpy as np

    from fedsim.gossip.supersteps import ShardReport

    cfg = content.config_records[CONFIG]
    report = ShardReport(
        mail=_decode_mail(cfg, content),
        next_tick=int(cfg[NEXT_TICK]),  # type: ignore[arg-type]
        pull_nodes=np.asarray([int(x) for x in cfg[PULL_NODES]], dtype=np.int64),  # type: ignore[union-attr]
        pull_ticks=np.asarray([int(x) for x in cfg[PULL_TICKS]], dtype=np.int64),  # type: ignore[union-attr]
        params=get_packed(content, GOSSIP_MODELS),
        losses=[float(x) for x in cfg[LOSSES]],  # type: ignore[union-attr]
        counts=dict(
            zip([str(k) for k in cfg[COUNT_NAMES]], [int(v) for v in cfg[COUNT_VALUES]], strict=True)
        ),  # type: ignore[union-attr]
        online=int(cfg[ONLINE]),  # type: ignore[arg-type]
    )
    return report, float(cfg[TRAIN_SECONDS])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ DIFF2 / DP-GD (issue 9)
# One message per worker per round: the current iterate x_{r−1} (flat), the round's kind and clip radius, and the
# worker's logical clients. The worker keeps x_{r−1} in its ``context.state`` for the next round's differences.

MESSAGE_TYPE_DIFF2 = "train.diff2"

DIFF2_X = "fedsim.diff2.x"
DIFF2_SUMS = "fedsim.diff2.sums"
DIFF2_STATE = "fedsim.diff2.previous"
DIFF2_STATE_ROUND = "fedsim.diff2.previous_round"

KIND = "kind"
RADIUS = "radius"
ITERATE = "x"
PREVIOUS_ITERATE = "x_prev"
CLIPPED_SUM = "clipped_sum"
GRAD_SUM = "grad_sum"
LOSS_SUM = "loss_sum"
CLIPPED_ROWS = "clipped_rows"
ROWS = "rows"


@dataclass(frozen=True)
class Diff2Request:
    """A worker's part of one DIFF2/DP-GD round: x_{r−1} (flat), ``restart``/``difference``, the radius, clients."""

    scenario: Mapping[str, Any]
    round: int
    x: torch.Tensor
    kind: str
    radius: float
    client_ids: tuple[int, ...]
    x_prev: torch.Tensor | None = None
    """x_{r−2}, sent once when the workers cannot hold it (the first round of a resumed run); else None."""


@dataclass
class Diff2Reply:
    """One worker's reduced reply: Σ_p ClippedMean_p, Σ_p mean_z ∇ℓ(x_{r−1}; z) (unclipped, for ‖∇f‖), Σ_p mean
    loss, how many per-example rows were clipped of how many, and each client's size, over the clients it kept
    (``client_ids``); ``failed``: the clients whose contribution was not finite and was left out (e.g.
    ``faults.nonfinite``)."""

    clipped_sum: torch.Tensor
    grad_sum: torch.Tensor
    loss_sum: float
    clipped_rows: int
    rows: int
    client_ids: list[int]
    num_examples: list[int]
    train_s: float = 0.0
    failed: list[int] = field(default_factory=list)


def encode_diff2_request(
    *,
    scenario: Mapping[str, Any],
    round: int,
    x: torch.Tensor,
    kind: str,
    radius: float,
    client_ids: Sequence[int],
    x_prev: torch.Tensor | None = None,
) -> RecordDict:
    """Server side: one worker's DIFF2 round (``CONFIG`` carries ``ROUND``, as every train message); ``x_prev``:
    x_{r−2} for workers that do not hold it (a resumed run's first round)."""
    config = ConfigRecord(
        {
            SCENARIO_JSON: json.dumps(scenario, sort_keys=True),
            ROUND: int(round),
            KIND: str(kind),
            RADIUS: float(radius),
            CLIENT_IDS: [int(c) for c in client_ids],
        }
    )
    arrays = {ITERATE: x.detach().cpu()}
    if x_prev is not None:
        arrays[PREVIOUS_ITERATE] = x_prev.detach().cpu()
    return RecordDict({DIFF2_X: ArrayRecord(arrays), CONFIG: config})


def decode_diff2_request(content: RecordDict) -> Diff2Request:
    """Worker side: the inverse of :func:`encode_diff2_request`."""
    cfg = content.config_records[CONFIG]
    arrays = content.array_records[DIFF2_X].to_torch_state_dict()
    return Diff2Request(
        scenario=json.loads(str(cfg[SCENARIO_JSON])),
        round=int(cfg[ROUND]),  # type: ignore[arg-type]
        x=arrays[ITERATE],
        x_prev=arrays.get(PREVIOUS_ITERATE),
        kind=str(cfg[KIND]),
        radius=float(cfg[RADIUS]),  # type: ignore[arg-type]
        client_ids=tuple(int(c) for c in cfg[CLIENT_IDS]),  # type: ignore[union-attr]
    )


def encode_diff2_reply(reply: Diff2Reply) -> RecordDict:
    """Worker side: the reduced sums and the diagnostics."""
    stats = MetricRecord(
        {
            LOSS_SUM: float(reply.loss_sum),
            CLIPPED_ROWS: int(reply.clipped_rows),
            ROWS: int(reply.rows),
            CLIENT_IDS: [int(c) for c in reply.client_ids],
            NUM_EXAMPLES: [int(n) for n in reply.num_examples],
            TRAIN_SECONDS: float(reply.train_s),
            FAILED: [int(c) for c in reply.failed],
        }
    )
    sums = ArrayRecord(
        {CLIPPED_SUM: reply.clipped_sum.detach().cpu(), GRAD_SUM: reply.grad_sum.detach().cpu()}
    )
    return RecordDict({DIFF2_SUMS: sums, STATS: stats})


def decode_diff2_reply(content: RecordDict) -> Diff2Reply:
    """Server side: the inverse of :func:`encode_diff2_reply`."""
    stats, sums = content.metric_records[STATS], content.array_records[DIFF2_SUMS].to_torch_state_dict()
    return Diff2Reply(
        clipped_sum=sums[CLIPPED_SUM],
        grad_sum=sums[GRAD_SUM],
        loss_sum=float(stats[LOSS_SUM]),  # type: ignore[arg-type]
        clipped_rows=int(stats[CLIPPED_ROWS]),  # type: ignore[call-overload]
        rows=int(stats[ROWS]),  # type: ignore[call-overload]
        client_ids=[int(c) for c in stats[CLIENT_IDS]],  # type: ignore[union-attr]
        num_examples=[int(n) for n in stats[NUM_EXAMPLES]],  # type: ignore[union-attr]
        train_s=float(stats.get(TRAIN_SECONDS, 0.0)),  # type: ignore[arg-type]
        failed=[int(c) for c in stats.get(FAILED, [])],  # type: ignore[union-attr]
    )


def save_previous_iterate(state: RecordDict, *, round: int, x: torch.Tensor) -> None:
    """Worker side: keep x_{r−1} of ``round`` in the node's ``context.state`` (the next round's x_{r−2})."""
    state[DIFF2_STATE] = ArrayRecord({ITERATE: x.detach().cpu()})
    state[DIFF2_STATE_ROUND] = ConfigRecord({ROUND: int(round)})


def load_previous_iterate(state: RecordDict) -> tuple[int, torch.Tensor] | None:
    """Worker side: (the round that sent it, x) kept by :func:`save_previous_iterate`, or None (a fresh node)."""
    if DIFF2_STATE not in state.array_records or DIFF2_STATE_ROUND not in state.config_records:
        return None
    rnd = int(state.config_records[DIFF2_STATE_ROUND][ROUND])  # type: ignore[arg-type]
    return rnd, state.array_records[DIFF2_STATE].to_torch_state_dict()[ITERATE]
