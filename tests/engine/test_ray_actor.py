"""fedsim's light worker actor keeps Flower's actor contract, and its module stays light to import.

The contract is checked against Flower's own ``ClientAppActor`` run the same way (its class, outside Ray): the same
reply and Context for a message, the same exception types and text for a failing ClientApp and for a load error."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError
from flwr.server.superlink.fleet.vce.backend import raybackend
from flwr.simulation.ray_transport.ray_actor import ClientAppActor

from fedsim.engine.ray_actor import WorkerActor, light_actors
from tests.fresh_python import python


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def _message() -> Message:
    return Message(content=RecordDict({"c": ConfigRecord({"x": 2})}), dst_node_id=7, message_type="query")


def _app(fail: Exception | None = None) -> ClientApp:
    app = ClientApp()

    @app.query()
    def answer(msg: Message, context: Context) -> Message:
        if fail is not None:
            raise fail
        context.state["seen"] = ConfigRecord({"x": msg.content["c"]["x"]})
        return Message(content=RecordDict({"c": ConfigRecord({"y": 2 * msg.content["c"]["x"]})}), reply_to=msg)

    return app


def _both(client_app_fn):
    """What Flower's actor and fedsim's do with the same job: (result or exception) for each."""
    out = []
    for actor_class in (ClientAppActor, WorkerActor):
        actor = actor_class.__ray_actor_class__()
        try:
            out.append(actor.run(client_app_fn, _message(), "3", _context()))
        except Exception as exc:
            out.append(exc)
    return out


def test_a_message_gives_flowers_reply_and_context():
    flower, ours = _both(_app)
    assert ours[0] == flower[0] == "3"
    assert ours[1].content["c"]["y"] == flower[1].content["c"]["y"] == 4
    assert ours[2].state["seen"]["x"] == flower[2].state["seen"]["x"] == 2


@pytest.mark.parametrize(
    "fn",
    [
        lambda: _app(fail=ValueError("bad shard")),  # the ClientApp fails: ClientAppException with its text
        lambda: (_ for _ in ()).throw(LoadClientAppError("no app")),  # loading fails: passed on as it is
        lambda: (_ for _ in ()).throw(RuntimeError("no app either")),
    ],
)
def test_a_failure_gives_flowers_exception(fn):
    flower, ours = _both(fn)
    assert isinstance(flower, Exception) and type(ours) is type(flower)
    assert str(ours) == str(flower)
    assert type(ours) in (ClientAppException, LoadClientAppError)


def test_light_actors_replaces_flowers_actor_class_in_the_block_only():
    original = raybackend.ClientAppActor
    with light_actors():
        assert raybackend.ClientAppActor is WorkerActor
    assert raybackend.ClientAppActor is original


def test_light_actors_leaves_an_actor_of_another_shape_alone(monkeypatch):
    class Other:
        def run(self, client_app_fn, message, context):  # another Flower's contract
            raise AssertionError

    other = type("ActorClass(Other)", (), {"__ray_actor_class__": Other})
    monkeypatch.setattr(raybackend, "ClientAppActor", other)
    with light_actors():
        assert raybackend.ClientAppActor is other


def test_a_worker_process_imports_neither_flowers_simulation_nor_its_superlink():
    """What a Ray worker imports before its first message: the actor class's module and the ClientApp's."""
    out = python(
        """
        import sys
        import fedsim.engine.ray_actor, fedsim.engine.worker
        print(sorted(m for m in ("flwr.simulation", "sqlalchemy", "alembic", "fastapi") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"
