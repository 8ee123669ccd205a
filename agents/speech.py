"""The ``talk`` task: the prompt a talk model answers, and speech in a running world.

A persona binds ``talk`` to a model (``Persona.models["talk"]``, ``village-talk`` for the village
cast). The prompt is a chat turn built most shared first — the village and how to talk (the same
for everyone), the speaker's persona, then the partner's last line (or an opening cue) — exactly the
prompt ``murmurate bench talk`` serves and the talk student was distilled on
(``exports.talk``), so a prefix cache computes the shared part once.

In a world, speech is a second step of a tick (:class:`agents.mind.ModelBrain` with
``speech=True``): the ``act`` model decides *to* talk and to whom; the speaker's ``talk`` model then
writes the line, which the world checks like any other argument (``World.with_utterance``).
"""

from __future__ import annotations

from typing import Any

from runtime.types import Request, SamplingParams

MAX_HEARD_CHARS = 300  # a partner's line longer than this is cut: prompts stay bounded

# Identical for every agent and round: the radix cache computes its KV once for the whole run.
SYSTEM_TEXT = """\
<|im_start|>system
You live in a small village beside a river. Farmers grow wheat in the fields to the south, fishers \
work the river and the pond, woodcutters fell trees in the northern forest, and the cook and the \
innkeeper run the tavern on the square, where everyone eats and rests. Merchants buy and sell at \
the market stalls: wheat, fish, wood and meals change hands for coins. Days are short, and after \
dark the river banks are slippery and dangerous.

How to talk: you are one villager speaking to another. Answer in one or two short sentences, in \
your own voice, as your character would. Stay in the village; talk about work, food, trade, the \
weather and your neighbours. Never mention being an AI, never use lists, and never speak for the \
other villager.

"""


def persona_segment(persona) -> str:
    """The persona's text, closing the system turn (stable across rounds: cached after round 1)."""
    return persona.describe() + "<|im_end|>\n"


def conversation_segment(partner, heard: str | None) -> str:
    """The user turn: an opening cue in round 1, else the partner's last line; then the assistant cue."""
    who = f"{partner.name}, a {partner.role}"
    if heard is None:
        turn = (
            f"You meet {who}, on the village square. Open the conversation with one line about the village."
        )
    else:
        turn = f'{who}, says to you: "{heard}"\nAnswer {partner.name}.'
    return f"<|im_start|>user\n{turn}<|im_end|>\n<|im_start|>assistant\n"


def clean_utterance(text: str) -> str:
    """A generated line made safe to quote in another agent's prompt.

    Chat markup in it (``<|...|>``) would let one agent's output end or open turns in its partner's
    prompt, so it is defanged; whitespace is collapsed and the length bounded.
    """
    text = " ".join(text.replace("<|", "<").replace("|>", ">").split())
    return text[:MAX_HEARD_CHARS] or "..."


def speech_request(
    speaker: Any,
    partner: Any,
    heard: str | None,
    *,
    model: str,
    max_tokens: int = 32,
    tag: str | None = None,
    no_repeat_ngram_size: int = 3,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> Request:
    """A request for ``speaker``'s line to ``partner``, who last said ``heard`` (None: an opening).

    Greedy by default (sampled with ``temperature`` > 0, drawn from ``seed``), at most
    ``max_tokens`` tokens, stopping at the model's end-of-turn token; no 3-gram is repeated
    (``no_repeat_ngram_size``; small talk models decoded greedily repeat themselves, see
    ``docs/models.md``).
    """
    heard = None if heard is None else clean_utterance(heard)
    sampling = SamplingParams(
        max_tokens=max_tokens,
        no_repeat_ngram_size=no_repeat_ngram_size,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    return Request(
        model=model,
        prompt=(SYSTEM_TEXT, persona_segment(speaker), conversation_segment(partner, heard)),
        sampling=sampling,
        tag=tag,
    )
