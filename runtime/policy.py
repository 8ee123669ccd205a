"""Routing policy: which replica of a model serves which requests.

Requests are sorted by their prompt segments and dealt round-robin over the live replicas. The
order is stable from one call to the next while the same agents ask (a persona's prompt keeps its
place among the others; an agent leaving shifts the ones after it), so an agent's requests keep
going to the same replica and hit the KV its radix cache holds for
that agent's persona and memory. Dealing, rather than cutting the order into contiguous chunks,
gives every replica the same mix of prompt families: contiguous chunks put whole roles on one
replica, and roles differ in prompt and answer length, so one replica finished a 1,000-agent tick
up to a second before the other (engine time 1.6 vs 2.0 s) and then sat idle. The shared head of
every family (world rules, a role's text) is then cached by each replica once, which costs one
prefill per replica. Results never depend on the routing (sampling is seeded per request), only
speed does.
"""

from __future__ import annotations

from runtime.types import Request


def split_for_replicas(requests: list[Request], replicas: int) -> list[list[Request]]:
    """Split ``requests`` into at most ``replicas`` non-empty lists whose sizes differ by one at most."""
    if replicas <= 0:
        raise ValueError("no replica to route to")
    if replicas == 1 or len(requests) <= 1:
        return [list(requests)] if requests else []
    order = sorted(requests, key=lambda r: r.segments)
    n = min(replicas, len(order))
    return [order[i::n] for i in range(n)]
