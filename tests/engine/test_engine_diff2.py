"""DIFF2-GD and DP-GD through the engine (in-process Grid, the real ClientApp, one persistent Context per node).

Oracles: the Ray-free core (``strategies.diff2.run_diff2`` / ``run_dp_gd``) fed per-example gradients computed one
example at a time with plain autograd (not the workers' vmap), with the same noise generator; full-batch gradient
descent with autograd on the mean of the clients' mean squared losses (no noise, no clipping).
"""

from __future__ import annotations

import math

import pytest
import torch
from local_grid import LocalGrid, MemoryRecorder

from clients.diff2_client import flat_spec, flatten, unflatten
from fedsim.engine.preflight import check_before_run
from fedsim.engine.server import Engine
from fedsim.engine.setup import build_data, build_initial_model, noise_generator
from fedsim.errors import ConfigError, EngineError
from fedsim.scenario import parse_scenario
from strategies.diff2 import Diff2Config, run_diff2, run_dp_gd

BASE = {
    "name": "d2",
    "seed": 3,
    "rounds": 7,
    "data": {"dataset": "diabetes", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 5},
    "model": {"name": "mlp", "args": {"hidden": [6], "activation": "softplus"}},
    "strategy": {"name": "diff2", "clients_per_round": 5},
}
ARGS = {"lr": 0.3, "restart_every": 3, "clip1": 0.8, "clip2": 2.0, "noise_ratio": 2.0}


class KeepParams(MemoryRecorder):
    def save_checkpoint(self, *, round, params, strategy_state, final=False, resume=None):
        super().save_checkpoint(round=round, params=params, strategy_state=strategy_state, final=final)
        self.params = {k: v.clone() for k, v in params.items()}


def scenario(args, privacy=None, **over):
    return parse_scenario(
        {
            **BASE,
            **over,
            "strategy": {**BASE["strategy"], **over.get("strategy", {}), "args": args},
            "privacy": privacy,
        }
    )


def run_engine(sc, nodes=(11, 22, 33), **kw):
    rec = KeepParams()
    grid = LocalGrid(list(nodes), **kw.pop("grid", {}))
    Engine(sc, rec, expected_workers=len(nodes), **kw).run(grid)
    return rec, grid


def core_clients(sc):
    """Per-example gradients of every client, one example at a time with autograd (an oracle for the vmap), in
    float32 as on the workers: the noise is drawn in the iterate's dtype, so the same generator gives the same
    noise only in the same dtype."""
    data = build_data(sc)
    model = build_initial_model(sc, data)
    spec = flat_spec(model)

    def client(cid):
        a, y = data.client_data(cid)

        def fn(x):
            rows = []
            for i in range(len(a)):
                p = {k: v.detach().clone().requires_grad_(True) for k, v in unflatten(x, spec).items()}
                out = torch.func.functional_call(model, p, (a[i : i + 1],)).reshape(())
                g = torch.autograd.grad((out - y[i]) ** 2, [p[n] for n in spec.names])
                rows.append(torch.cat([t.reshape(-1) for t in g]))
            return torch.stack(rows)

        return fn

    x0 = flatten(build_initial_model(sc, data).state_dict(), spec)
    return x0, [client(c) for c in range(sc.population.clients)], spec, data


def as_flat(params, spec):
    return flatten(params, spec)


def test_engine_equals_the_core_with_the_same_noise_and_keeps_x_prev_on_the_workers():
    privacy = {"level": "sample", "noise_multiplier": 0.7, "insecure_seed": True, "accountants": ["rdp"]}
    sc = scenario(ARGS, privacy)
    rec, grid = run_engine(sc)
    assert sorted(grid.sent) == [
        (r, n) for r in range(1, 8) for n in (11, 22, 33)
    ]  # one message/worker/round
    x0, clients, spec, data = core_clients(sc)
    cfg = Diff2Config(0.3, 3, 0.8, 2.0, noise_multiplier1=0.7, noise_multiplier2=1.4)
    trace = run_diff2(cfg, x0, clients, 7, generator=noise_generator(sc))
    torch.testing.assert_close(as_flat(rec.params, spec), trace.iterates[-1], rtol=1e-5, atol=1e-6)
    assert [r["kind"] for r in rec.rows] == [i.kind for i in trace.rounds]
    for row, info in zip(rec.rows, trace.rounds, strict=True):
        assert row["radius"] == pytest.approx(info.radius, rel=1e-5)
        assert row["noise_std"] == pytest.approx(info.noise_std, rel=1e-5) and row["noise_std"] > 0
        assert row["epsilon_rdp"] > 0
    # the test loss is the MSE of x_r on the central test set
    model = build_initial_model(sc, data)
    out = torch.func.functional_call(model, unflatten(trace.iterates[-1], spec), (data.test_x,))
    assert rec.rows[-1]["test_loss"] == pytest.approx(
        float(((out.reshape(-1) - data.test_y) ** 2).mean()), rel=1e-5
    )


def test_dp_gd_through_the_engine_equals_the_core_and_diff2_with_t_1():
    privacy = {"level": "sample", "noise_multiplier": 0.5, "insecure_seed": True, "accountants": ["rdp"]}
    dp = scenario({"lr": 0.3, "clip": 0.8}, privacy, strategy={"name": "dp_gd"})
    rec, _ = run_engine(dp, nodes=(11, 22))
    x0, clients, spec, _ = core_clients(dp)
    trace = run_dp_gd(x0, clients, 7, lr=0.3, clip=0.8, noise_multiplier=0.5, generator=noise_generator(dp))
    torch.testing.assert_close(as_flat(rec.params, spec), trace.iterates[-1], rtol=1e-5, atol=1e-6)
    t1 = scenario({"lr": 0.3, "restart_every": 1, "clip1": 0.8, "clip2": 5.0, "noise_ratio": 3.0}, privacy)
    rec_t1, _ = run_engine(t1, nodes=(11, 22))
    assert all(r["kind"] == "restart" for r in rec_t1.rows)
    for k in rec.params:
        torch.testing.assert_close(rec_t1.params[k], rec.params[k], rtol=0, atol=0)


def test_without_noise_or_clipping_the_engine_is_full_batch_gradient_descent():
    sc = scenario({"lr": 0.4, "restart_every": 4, "clip1": math.inf, "clip2": math.inf})
    rec, _ = run_engine(sc, nodes=(11, 22))
    data = build_data(sc)
    model = build_initial_model(sc, data).double()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.state_dict().items()}
    grad_norms = []
    for _ in range(7):  # f = mean over clients of each client's mean squared loss
        losses = []
        for c in range(5):
            a, y = data.client_data(c)
            out = torch.func.functional_call(model, params, (a.double(),)).reshape(-1)
            losses.append(((out - y.double()) ** 2).mean())
        grads = torch.autograd.grad(sum(losses) / 5, list(params.values()))
        grad_norms.append(float(torch.sqrt(sum((g**2).sum() for g in grads))))
        params = {
            k: (v - 0.4 * g).detach().requires_grad_(True)
            for (k, v), g in zip(params.items(), grads, strict=True)
        }
    for k, v in params.items():
        # the engine runs in float32, the oracle in float64: rounding grows over the 7 steps (~3e-4 relative
        # from the registry's initial weights)
        torch.testing.assert_close(rec.params[k].double(), v.detach(), rtol=1e-3, atol=2e-4)
    assert [r["grad_norm"] for r in rec.rows] == pytest.approx(grad_norms, rel=1e-4)
    assert all(r["noise_std"] == 0 and r["clip_fraction"] == 0 for r in rec.rows)


def test_a_node_that_lost_its_state_stops_the_run_in_a_difference_round():
    sc = scenario(ARGS)
    grid = LocalGrid([11, 22])
    rec = MemoryRecorder()
    forget = lambda row: grid.forget_state(22) if row["round"] == 1 else None  # noqa: E731
    with pytest.raises(EngineError) as err:
        Engine(sc, rec, expected_workers=2, on_round=forget).run(grid)
    msg = str(err.value)
    assert "\n" not in msg and "worker 22 failed in round 2" in msg and "no previous iterate" in msg
    assert len(rec.rows) == 1  # round 1 (restart) ran; round 2 needs x_0 on node 22


def test_a_failed_worker_stops_the_run():
    sc = scenario(ARGS)
    with pytest.raises(EngineError, match="worker 22 failed in round 3 of diff2, which needs every client"):
        run_engine(sc, nodes=(11, 22), grid={"fail": lambda rnd, node: rnd == 3 and node == 22})
    with pytest.raises(EngineError, match="workers \\[11\\] did not answer round 1"):
        run_engine(
            parse_scenario({**sc.model_dump(), "engine": {"round_timeout_s": 0.2}}),
            nodes=(11, 22),
            grid={"drop": lambda rnd, node: node == 11},
        )


def test_a_zero_step_gives_a_zero_radius_no_noise_and_no_nan():
    # η so small that x_1 == x_0 in float32: round 2's radius C2·‖x_1 − x_0‖ is exactly 0
    privacy = {"level": "sample", "noise_multiplier": 2.0, "insecure_seed": True, "accountants": ["rdp"]}
    sc = scenario({**ARGS, "lr": 1e-30}, {**privacy, "release_diagnostics": True})
    rec, _ = run_engine(sc, nodes=(11, 22))
    diff = [r for r in rec.rows if r["kind"] == "difference"]
    assert diff and all(r["radius"] == 0.0 and r["noise_std"] == 0.0 for r in diff)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["test_loss"]) for r in rec.rows)
    assert all(torch.isfinite(v).all() for v in rec.params.values())


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"strategy": {"clients_per_round": 4}}, "strategy.clients_per_round"),
        ({"data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}}}, "data.dataset"),
        ({"strategy": {"args": {**ARGS, "restart_every": 0}}}, "strategy.args.restart_every"),
        ({"strategy": {"args": {**ARGS, "clip2": 0.0}}}, "strategy.args.clip2"),
        ({"strategy": {"args": {**ARGS, "bogus": 1}}}, "strategy.args.bogus"),
        ({"strategy": {"name": "dp_gd", "args": {"lr": 0.1, "clip": -1.0}}}, "strategy.args.clip"),
        ({"strategy": {"name": "fedavg", "clients_per_round": 5, "args": {}}}, "strategy.name"),
        ({"population": {"clients": 5, "devices": {"failure": 0.1}}}, "faults.crash"),
        (
            {"data": {"dataset": "regression", "args": {"n": 500}, "partitioner": "dirichlet"}},
            "data.partitioner",
        ),
    ],
)
def test_bad_settings_are_one_line_config_errors_naming_the_field(change, field):
    raw = {**BASE, "strategy": {**BASE["strategy"], "args": ARGS}}
    for key, value in change.items():
        raw[key] = {**raw[key], **value}
    with pytest.raises(ConfigError) as err:
        check_before_run(parse_scenario(raw))
    assert err.value.field == field and "\n" not in str(err.value)
