"""What the rate limiter costs: the first page with the limiter counting every request (at a limit the load
never reaches) against the same page with it off, interleaved so that the machine's drift hits both alike."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

ROUNDS = 3
TARGET_COST = 0.05  # at most 5% of the throughput
PATH = "/users?page_size=20"


@dataclass(frozen=True)
class LimiterCost:
    on_rps: float  # median over the rounds
    off_rps: float

    @property
    def cost(self) -> float:
        return 1 - self.on_rps / self.off_rps

    def line(self) -> str:
        return (
            f"rate limiter: first page {self.on_rps:,.0f} req/s with it counting, {self.off_rps:,.0f} without "
            f"(medians of {ROUNDS} interleaved rounds): {100 * self.cost:.1f}% of the throughput"
        )

    def check(self) -> tuple[str, bool]:
        return f"rate limiter costs <= {100 * TARGET_COST:.0f}% ({100 * self.cost:.1f}%)", self.cost <= TARGET_COST


def limiter_cost(
    url: str, *, start: Callable, port: Callable[[], int], load: Callable[[str, float], dict], seconds: float
) -> LimiterCost:
    """Two API processes over the database at `url`, one with the limiter off; each loaded in turn."""
    ports = {"on": port(), "off": port()}
    servers = {"on": start(url, ports["on"]), "off": start(url, ports["off"], read_limit="")}
    rps: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for _ in range(ROUNDS):
            for which in ("on", "off"):
                target = f"http://127.0.0.1:{ports[which]}{PATH}"
                load(target, 1.0)  # warm
                rps[which].append(load(target, seconds)["rps"])
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(timeout=30)
    return LimiterCost(statistics.median(rps["on"]), statistics.median(rps["off"]))
