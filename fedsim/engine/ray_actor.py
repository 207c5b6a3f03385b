"""The Ray actor a worker runs in, light to import: Flower's contract without Flower's simulation package.

Flower's Ray backend creates its actor pool from ``flwr.simulation.ray_transport.ray_actor.ClientAppActor``, and a
Ray actor process imports its class's module before it runs anything. Importing that module runs
``flwr.simulation``'s package init, which loads Flower's whole SuperLink (SQLAlchemy, Alembic, FastAPI): CPU time in
each worker process on the start-up's critical path, where the workers also import torch at the same time
(``python -X importtime -c "import flwr.simulation.ray_transport.ray_actor"`` shows how much).

:class:`WorkerActor` keeps Flower's actor contract (``run(client_app_fn, message, cid, context)`` returns ``(cid,
reply, context)``; an exception from the ClientApp becomes a ``ClientAppException``, a load error passes as it is;
``terminate`` ends the actor) and imports Ray, ``flwr.app`` and ``flwr.clientapp`` only. :func:`light_actors` makes
Flower's backend create its pool from it for the block's duration."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from flwr.app import Context, Message
from flwr.clientapp.client_app import ClientApp, ClientAppException, LoadClientAppError


@ray.remote
class WorkerActor:
    """A Ray actor that runs a ClientApp's messages, with the interface of Flower's ``ClientAppActor``."""

    def __init__(self, on_actor_init_fn: Callable[[], None] | None = None) -> None:
        if on_actor_init_fn:
            on_actor_init_fn()

    def run(
        self, client_app_fn: Callable[[], ClientApp], message: Message, cid: str, context: Context
    ) -> tuple[str, Message, Context]:
        """Run ``message`` through the ClientApp; return the node's id, the reply and the updated Context."""
        try:
            app = client_app_fn()
            reply = app(message=message, context=context)
        except LoadClientAppError:
            raise
        except Exception as exc:
            raise ClientAppException(str(exc)) from exc
        return cid, reply, context

    def terminate(self) -> None:
        """End this actor (its process exits)."""
        ray.actor.exit_actor()


@contextmanager
def light_actors() -> Iterator[None]:
    """Within the block Flower's Ray backend creates its actor pool from :class:`WorkerActor`.

    With another Flower than the locked one (no ``ClientAppActor`` in its Ray backend, or an actor whose ``run``
    has other parameters) nothing is replaced."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    original: Any = getattr(raybackend, "ClientAppActor", None)
    run = getattr(getattr(original, "__ray_actor_class__", None), "run", None)
    if run is None or list(inspect.signature(run).parameters)[:5] != ["self", "client_app_fn", "message", "cid", "context"]:
        yield
        return
    raybackend.ClientAppActor = WorkerActor  # type: ignore[attr-defined]
    try:
        yield
    finally:
        raybackend.ClientAppActor = original  # type: ignore[attr-defined]
