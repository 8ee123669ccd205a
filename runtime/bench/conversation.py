"""The talk workload: persona agents in pairs, each answering its partner's last line.

Prompts are built most-shared-first — the village and how to talk (identical for every agent and
round), the persona, the conversation — so a prefix cache computes the shared part once. The
serving side is a callable; ``runtime.bench.talk`` runs this workload on transformers and on the
runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agents.speech import (  # noqa: F401 - the workload's prompt is the talk task's prompt
    MAX_HEARD_CHARS,
    SYSTEM_TEXT,
    clean_utterance,
    conversation_segment,
    persona_segment,
)


@dataclass(frozen=True)
class TalkWorkload:
    """The conversation workload.

    Args:
        agents: number of persona agents (paired up; an odd one out joins the first pair).
        rounds: utterances per agent.
        new_tokens: most tokens per utterance (greedy; stops earlier at the end-of-turn token).
        seed: seed of the generated personas beyond the default cast of twelve.
    """

    agents: int = 16
    rounds: int = 2
    new_tokens: int = 24
    seed: int = 0

    @classmethod
    def quick(cls) -> TalkWorkload:
        """A smoke-test workload: under a minute on SmolLM2 once it is imported."""
        return cls(agents=4, rounds=1, new_tokens=8)

    def __post_init__(self) -> None:
        if self.agents < 2:
            raise ValueError(f"--agents must be at least 2 (agents talk in pairs), got {self.agents}")
        if self.rounds < 1 or self.new_tokens < 1:
            raise ValueError("--rounds and --new-tokens must be at least 1")


@dataclass
class Utterance:
    """What one agent said in one round."""

    ids: list[int]  # the utterance's tokens, stop token excluded
    produced: int  # tokens the model generated for it, stop token included


# A round server maps each agent's prompt segments to its utterance.
ServeRound = Callable[[list[tuple[str, ...]]], list[Utterance]]


# ---- the workload -------------------------------------------------------------------------------
def make_cast(n: int, seed: int = 0) -> list:
    """``n`` village personas: the default cast first, then seeded generated ones."""
    from worlds.village.cast import default_cast, generate_personas

    cast = default_cast()[:n]
    return cast + generate_personas(n - len(cast), seed=seed)


def partners(n: int) -> list[int]:
    """Each agent's partner: 0↔1, 2↔3, ...; with an odd ``n`` the last agent talks to agent 0."""
    return [i ^ 1 if i ^ 1 < n else 0 for i in range(n)]


def converse(
    cast: Sequence,
    w: TalkWorkload,
    serve_round: ServeRound,
    decode: Callable,
    walls: list[float] | None = None,
) -> list[list[Utterance]]:
    """Run the conversation: ``w.rounds`` rounds, each one ``serve_round`` call for all agents.

    Args:
        cast: the personas.
        w: the workload.
        serve_round: answers every agent's prompt segments of a round.
        decode: token ids -> text, for feeding each utterance to the partner's next prompt.
        walls: if given, each round's wall seconds are appended to it.

    Returns:
        utterances per round, per agent.
    """
    pair = partners(len(cast))
    system = SYSTEM_TEXT
    personas = [persona_segment(p) for p in cast]
    heard: list[str | None] = [None] * len(cast)
    rounds = []
    for _ in range(w.rounds):
        t0 = time.perf_counter()
        prompts = [
            (system, personas[i], conversation_segment(cast[pair[i]], heard[pair[i]]))
            for i in range(len(cast))
        ]
        said = serve_round(prompts)
        rounds.append(said)
        # heard[j] is what agent j said last; agent i answers heard[pair[i]]
        heard = [clean_utterance(decode(u.ids)) for u in said]
        if walls is not None:
            walls.append(time.perf_counter() - t0)
    return rounds


def converse_prompt_lengths(cast: Sequence, tok) -> dict[str, int]:
    """Token lengths of the round-1 prompts and of the part every agent shares (for the header)."""
    pair = partners(len(cast))
    lengths = [
        len(tok.encode_prompt((SYSTEM_TEXT, persona_segment(p), conversation_segment(cast[pair[i]], None))))
        for i, p in enumerate(cast)
    ]
    return {"min": min(lengths), "max": max(lengths), "shared": len(tok.encode_prompt((SYSTEM_TEXT,)))}


def agreement(a: list[list[Utterance]], b: list[list[Utterance]]) -> float:
    """Share of utterances (agent × round) with identical tokens in both transcripts."""
    pairs = [(x.ids, y.ids) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / len(pairs) if pairs else 0.0


def sample_lines(cast: Sequence, rounds: list[list[Utterance]], decode: Callable, n: int = 8) -> list[dict]:
    """The first pair's exchange and a few more lines, as text, for people reading the JSON."""
    pair = partners(len(cast))
    out = []
    for r, said in enumerate(rounds, 1):
        for i, u in enumerate(said):
            out.append(
                {
                    "round": r,
                    "agent": cast[i].name,
                    "partner": cast[pair[i]].name,
                    "text": decode(u.ids).strip(),
                }
            )
    out.sort(key=lambda s: (s["agent"] not in (cast[0].name, cast[1].name), s["round"]))
    return out[:n]
