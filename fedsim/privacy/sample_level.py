"""Sample-level DP (DP-SGD on every client) in accounting terms: each client's Poisson batches and the worst client.

Why this module exists: with ``privacy.level: sample`` every client runs DP-SGD on its own data, and what one
example's owner is guaranteed depends on the size of the client that holds the example. The trainers (Opacus on
the sequential path, ``torch.func`` on the vectorised one) and the accountant must agree on each client's local
schedule, so it is defined once here, with Opacus' conventions (``PrivacyEngine.make_private`` +
``DPDataLoader``): a client with n examples and batch size B takes ``s = ⌈n/B⌉`` steps per epoch, includes each
example in a step independently with rate ``q = 1/s``, and divides the noised sum by ``int(n·q)``.

The guarantee of a run is the worst over clients. Clients are grouped by ``s`` (same q and number of steps, hence
the same ε); each accountant reports the group that is worst by its own ε (the groups can rank differently under
RDP and PLD/PRV), and the table of every group's ε is an RDP one (cheap). Each client is assumed to take part in every round (no amplification by client sampling is claimed).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from fedsim.privacy.accounting import Mechanism, epsilon


@dataclass(frozen=True)
class LocalSchedule:
    """One client's DP-SGD batches for ``examples`` examples at batch size ``batch_size`` (Opacus' conventions)."""

    examples: int
    batch_size: int

    @property
    def steps_per_epoch(self) -> int:
        """``⌈n/B⌉``: ``len(DataLoader)``, which Opacus keeps as the number of Poisson batches per epoch."""
        return math.ceil(self.examples / self.batch_size)

    @property
    def sample_rate(self) -> float:
        """``q = 1/⌈n/B⌉`` (``DPDataLoader``'s ``1 / len(data_loader)``; B/n when B divides n)."""
        return 1.0 / self.steps_per_epoch

    @property
    def expected_batch_size(self) -> int:
        """``int(n · q)``: the divisor of the noised sum (``PrivacyEngine.make_private``'s ``expected_batch_size``)."""
        return max(1, int(self.examples * self.sample_rate))


@dataclass(frozen=True)
class ClientGroup:
    """Clients with the same number of steps per epoch (so the same q and the same ε)."""

    steps_per_epoch: int
    clients: int
    min_examples: int
    max_examples: int

    @property
    def sample_rate(self) -> float:
        return 1.0 / self.steps_per_epoch

    def mechanism(self, noise_multiplier: float, *, epochs: int, rounds: int) -> Mechanism:
        """The group's per-step mechanism composed over every local step of every round."""
        return Mechanism(
            noise_multiplier=noise_multiplier,
            sample_rate=self.sample_rate,
            steps=rounds * epochs * self.steps_per_epoch,
            sampling="poisson",
            population=self.min_examples,
        )


def client_groups(sizes: Sequence[int], batch_size: int) -> list[ClientGroup]:
    """Clients with data grouped by steps per epoch, fewest steps (least amplification) first."""
    steps = [LocalSchedule(int(n), batch_size).steps_per_epoch for n in sizes if n > 0]
    out = []
    for s, count in sorted(Counter(steps).items()):
        members = [int(n) for n in sizes if n > 0 and LocalSchedule(int(n), batch_size).steps_per_epoch == s]
        out.append(ClientGroup(s, count, min(members), max(members)))
    return out


def group_epsilons(
    groups: Sequence[ClientGroup], noise_multiplier: float, delta: float, *, epochs: int, rounds: int
) -> list[float]:
    """Every group's ε by the RDP accountant (milliseconds each)."""
    with warnings.catch_warnings():  # probes: opacus warns when the best order is at the grid's end
        warnings.filterwarnings("ignore", "Optimal order is the", UserWarning)
        return [
            epsilon("rdp", g.mechanism(noise_multiplier, epochs=epochs, rounds=rounds), delta) for g in groups
        ]


def worst_group(
    groups: Sequence[ClientGroup], noise_multiplier: float, delta: float, *, epochs: int, rounds: int
) -> ClientGroup:
    """The group whose clients' examples are least protected (largest RDP ε)."""
    if not groups:
        raise ValueError("no client has training data")
    eps = group_epsilons(groups, noise_multiplier, delta, epochs=epochs, rounds=rounds)
    return groups[max(range(len(groups)), key=eps.__getitem__)]


def worst_group_by(
    accountant: str,
    groups: Sequence[ClientGroup],
    noise_multiplier: float,
    delta: float,
    *,
    epochs: int,
    rounds: int,
) -> ClientGroup:
    """The least protected group by ``accountant`` itself: RDP's worst group need not be PLD's or PRV's (fewer,
    larger-q steps against more, smaller-q ones rank differently under the tighter accountants)."""
    if not groups:
        raise ValueError("no client has training data")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Optimal order is the", UserWarning)
        eps = [
            epsilon(accountant, g.mechanism(noise_multiplier, epochs=epochs, rounds=rounds), delta)
            for g in groups
        ]
    return groups[max(range(len(groups)), key=eps.__getitem__)]
