"""Training examples varied at random each time they are drawn: villagers renamed, lists reordered.

A village prompt names agents everywhere: the persona's own name, the partners in its memories, the
agents within reach, the offers waiting; the expert's action names one of them (``to``,
``offer_from``), chosen by a rule over an ordered list (talk to the first agent within reach; a
producer offers its lot to the first merchant within reach, a merchant to the first producer whose
lot it can pay for, an innkeeper to the first guest; the first good offer is accepted). Trained on
the dataset as rolled out, a small model learns the names it sees most — the twelve default
villagers fill most partner slots in training — and rarely sees the same agents in another order,
so on a held-out persona, whose partners are all new names, it points at the wrong agent: more
than half of the shipped student's errors on unseen personas were a trade or a talk with the wrong
partner.

- :class:`NameShuffler` rewrites an example with every villager's name replaced, consistently in the
  prompt and the target: first names through a random permutation of all first names the village
  uses, numbers (``Osric-194``) through random numbers that no held-out persona carries. A bare first
  name (``Backstory: Lenz grew up…`` for ``Lenz-484``) follows its numbered name's first name. The
  decision, and the expert's label, stay the same; only which tokens name whom changes.
  ``TrainConfig.rename`` is the share of drawn examples rewritten.
- :func:`reorder` shuffles the agents within reach and the offers waiting, and asks the scripted
  expert again (the persona is read back from its prompt segment): a new, correctly labelled
  decision whose answer moves with the order. Only examples whose label the expert reproduces from
  the prompt alone are varied. ``TrainConfig.reorder`` is the share of drawn examples reordered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

NUMBER_RANGE = (13, 2000)
"""Numbers a renamed villager may carry (those of held-out personas excluded); the dataset's own
blocks span 13–540, so most renamed numbers are as long as the ones met at run time."""


def village_first_names() -> list[str]:
    """Every first name the village's casts use: the default villagers' and the generated ones'."""
    from worlds.village.cast import _FIRST, default_cast

    return sorted({p.name for p in default_cast()} | set(_FIRST))


class NameShuffler:
    """Rewrites examples with their villagers renamed (see the module docstring).

    Args:
        first_names: the first names to find and to draw from.
        exclude_numbers: numbers never drawn (the held-out personas').
        numbers: the half-open range numbers are drawn from.
    """

    def __init__(
        self,
        first_names: Sequence[str],
        exclude_numbers: Iterable[int] = (),
        numbers: tuple[int, int] = NUMBER_RANGE,
    ):
        self.first_names = list(first_names)
        if len(set(self.first_names)) != len(self.first_names):
            raise ValueError("first names must be distinct")
        alternation = "|".join(sorted(map(re.escape, self.first_names), key=len, reverse=True))
        self._pattern = re.compile(rf"\b({alternation})(?:-(\d+))?\b")
        excluded = set(exclude_numbers)
        self._numbers = np.array([k for k in range(*numbers) if k not in excluded], np.int64)
        if len(self._numbers) == 0:
            raise ValueError(f"no number left to draw in {numbers} once {len(excluded)} are excluded")

    def names_in(self, texts: Iterable[str]) -> tuple[set[str], set[int]]:
        """The first names and the numbers that name villagers in ``texts``."""
        firsts: set[str] = set()
        numbers: set[int] = set()
        for text in texts:
            for m in self._pattern.finditer(text):
                firsts.add(m.group(1))
                if m.group(2) is not None:
                    numbers.add(int(m.group(2)))
        return firsts, numbers

    def rename(self, ex: Any, rng: np.random.Generator) -> Any:
        """``ex`` (an :class:`exports.dataset.ActExample`) with its villagers renamed."""
        texts = [*ex.prompt, ex.target]
        firsts, numbers = self.names_in(texts)
        if not firsts:
            return ex
        pool = rng.permutation(len(self.first_names))
        first_map = {f: self.first_names[int(pool[i])] for i, f in enumerate(sorted(firsts))}
        picks = rng.choice(len(self._numbers), size=len(numbers), replace=False)
        number_map = {k: int(self._numbers[int(p)]) for k, p in zip(sorted(numbers), picks)}

        def sub(m: re.Match) -> str:
            first = first_map[m.group(1)]
            return first if m.group(2) is None else f"{first}-{number_map[int(m.group(2))]}"

        prompt = tuple(self._pattern.sub(sub, s) for s in ex.prompt)
        target = self._pattern.sub(sub, ex.target)
        return replace(ex, prompt=prompt, target=target)


def heldout_numbers(shuffler: NameShuffler, examples: Iterable[Any]) -> set[int]:
    """Every villager number in ``examples`` (to keep them out of the renamed training examples)."""
    out: set[int] = set()
    for ex in examples:
        out |= shuffler.names_in([*ex.prompt, ex.target])[1]
    return out


def make_shuffler(data: Any) -> NameShuffler:
    """A shuffler for a village dataset: its held-out personas' numbers are never drawn."""
    probe = NameShuffler(village_first_names())
    return NameShuffler(village_first_names(), heldout_numbers(probe, data["heldout_persona"]))


def persona_of(prompt: Sequence[str]) -> Any | None:
    """The village persona a prompt was written for (name, role and traits: what the expert reads),
    or ``None`` when no segment reads ``You are NAME, a ROLE.`` with a ``Traits:`` line."""
    from worlds.village.cast import VillagePersona

    for seg in prompt:
        m = re.match(r"You are (\S+), an? (\w+)\.\n", seg)
        t = re.search(r"^Traits: (.*)\.$", seg, re.M)
        if m and t:
            traits = {k: float(v) for k, v in re.findall(r"(\w+) (\d+(?:\.\d+)?)", t.group(1))}
            return VillagePersona(name=m.group(1), role=m.group(2), traits=traits)
    return None


def reorder(ex: Any, rng: np.random.Generator) -> Any:
    """``ex`` with the agents within reach and the offers waiting in a random order, labelled anew by
    the scripted expert; ``ex`` itself when there is nothing to reorder or the expert does not give
    ``ex``'s own label from its prompt."""
    from agents.actions import action_json
    from agents.prompt import ACTION_CUE, observation_of
    from worlds.village.expert import expert_action
    from worlds.village.observation import VillageObs

    try:
        text = observation_of(ex.prompt)
        obs = VillageObs.from_text(text)
    except ValueError:
        return ex
    if len(obs.near) < 2 and len(obs.offers) < 2:
        return ex
    persona = persona_of(ex.prompt)
    if (
        persona is None
        or obs.to_text() != text.strip()
        or action_json(expert_action(persona, obs)) != ex.target
    ):
        return ex
    new = replace(
        obs,
        near=tuple(obs.near[int(i)] for i in rng.permutation(len(obs.near))),
        offers=tuple(obs.offers[int(i)] for i in rng.permutation(len(obs.offers))),
    )
    prompt = (*ex.prompt[:-1], "Now:\n" + new.to_text() + "\n" + ACTION_CUE)
    return replace(ex, prompt=prompt, target=action_json(expert_action(persona, new)))


def augmented_batch(
    enc: Any,
    idx: Sequence[int],
    tok: Any,
    eos_id: int,
    rng: np.random.Generator,
    *,
    shuffler: NameShuffler | None = None,
    rename: float = 0.0,
    reorder_share: float = 0.0,
) -> Any:
    """The training batch ``idx`` of ``enc`` (an :class:`exports.dataset.Encoded`) as a new
    ``Encoded`` of ``len(idx)`` examples, each reordered with probability ``reorder_share`` and
    renamed (by ``shuffler``) with probability ``rename``, and re-tokenized when changed. An
    example whose new prompt would not start with the shared prefix is kept as it was."""
    from exports.dataset import Encoded, encode_example

    P = len(enc.prefix)
    suffix, n_prompt, examples = [], [], []
    for i in idx:
        ex = new = enc.examples[i]
        if reorder_share and rng.random() < reorder_share:
            new = reorder(new, rng)
        if shuffler is not None and rename and rng.random() < rename:
            new = shuffler.rename(new, rng)
        if new is not ex:
            prompt, target = encode_example(tok, new, eos_id)
            if prompt[:P] == enc.prefix and len(prompt) > P:
                suffix.append(prompt[P:] + target)
                n_prompt.append(len(prompt) - P)
                examples.append(new)
                continue
        suffix.append(enc.suffix[i])
        n_prompt.append(enc.n_prompt[i])
        examples.append(ex)
    return Encoded(prefix=enc.prefix, suffix=suffix, n_prompt=n_prompt, examples=examples)
