"""Routing policy: which replica of a model serves which requests.

Requests are sorted by their prompt segments and cut into contiguous, equal chunks, one per live
replica: neighbours in that order share the longest prefixes, so each replica's radix cache sees
whole families of related prompts, and the load stays even. Results never depend on the routing
(sampling is seeded per request), only speed does.
"""

from __future__ import annotations

from runtime.types import Request


def split_for_replicas(requests: list[Request], replicas: int) -> list[list[Request]]:
    """Split ``requests`` into at most ``replicas`` non-empty chunks of near-equal size."""
    if replicas <= 0:
        raise ValueError("no replica to route to")
    if replicas == 1 or len(requests) <= 1:
        return [list(requests)] if requests else []
    order = sorted(requests, key=lambda r: r.segments)
    n = min(replicas, len(order))
    size, extra = divmod(len(order), n)
    chunks, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        chunks.append(order[start:end])
        start = end
    return chunks
