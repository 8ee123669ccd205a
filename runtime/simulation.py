"""The simulation loop: observations → requests → scheduler → actions → ``world.step``.

Each tick every live agent's mind builds its request (the model brain) or the scripted expert
decides (the expert brain); all of a tick's requests go to the scheduler together, which batches
them onto model workers. The loop keeps the books: a JSONL event log, per-tick metrics, a progress
bar on long headless runs and a summary at the end.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.types import Request, Result

log = logging.getLogger(__name__)

Serve = Callable[[list[Request]], list[Result]]


@dataclass
class TickMetrics:
    """What one tick cost and produced."""

    tick: int
    agents: int
    decisions: int
    requests: int
    fallbacks: int
    refused: int
    prompt_tokens: int
    cached_tokens: int
    generated_tokens: int
    wall_s: float
    serve_s: float
    think_s: float  # building requests and parsing results
    step_s: float  # world.step
    world_score: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)


@dataclass
class Summary:
    """A run at a glance."""

    world: str
    brain: str
    agents: int
    ticks: int
    seed: int
    final_tick: int
    world_score: float
    state_hash: str
    decisions: int
    fallbacks: int
    refused: int
    prompt_tokens: int
    cached_tokens: int
    generated_tokens: int
    wall_s: float
    decisions_per_s: float
    prefix_hit_ratio: float | None
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Simulation:
    """Runs a world with a brain, serving model requests through ``serve``.

    Args:
        world: a reset world.
        brain: :class:`agents.mind.ModelBrain` or :class:`agents.mind.ExpertBrain`.
        serve: ``requests -> results`` (``Scheduler.generate``); needed by the model brain.
        event_log: path of a JSONL log (one line per agent decision, one per tick).
        world_name: for the summary.
    """

    def __init__(
        self,
        world,
        brain,
        serve: Serve | None = None,
        event_log: str | Path | None = None,
        world_name: str = "world",
    ):
        self.world = world
        self.brain = brain
        self.serve = serve
        self.world_name = world_name
        self.observations = world.observations()
        self.metrics: list[TickMetrics] = []
        self._log = open(event_log, "w", encoding="utf-8") if event_log else None  # noqa: SIM115 - closed in close()
        self._started = time.perf_counter()

    @property
    def done(self) -> bool:
        return not self.world.agents

    def step(self) -> TickMetrics:
        """One tick for every live agent."""
        t0 = time.perf_counter()
        requests = self.brain.requests(self.observations)
        t1 = time.perf_counter()
        if requests and self.serve is None:
            raise RuntimeError("the model brain needs a scheduler: pass serve=scheduler.generate")
        results = self.serve(requests) if requests else []
        t2 = time.perf_counter()
        before = dict(self.brain.stats)
        actions = self.brain.actions(results)
        more = self.brain.followups(actions)  # e.g. the lines of agents who decided to talk
        if more:
            t_more = time.perf_counter()
            spoken = self.serve(more)
            t2 += time.perf_counter() - t_more  # served time, counted with the decisions'
            actions = self.brain.revise(actions, spoken)
            results = [*results, *spoken]
        t3 = time.perf_counter()
        tick = self.world.tick
        self.observations, _, _, _, infos = self.world.step(actions)
        t4 = time.perf_counter()
        refused = sum(1 for i in infos.values() if i.get("refused"))
        world_score = next(iter(infos.values()))["world_score"] if infos else 0.0
        m = TickMetrics(
            tick=tick,
            agents=len(actions),
            decisions=self.brain.stats["decisions"] - before["decisions"],
            requests=len(requests) + len(more),
            fallbacks=self.brain.stats["fallbacks"] - before["fallbacks"],
            refused=refused,
            prompt_tokens=sum(r.prompt_tokens for r in results),
            cached_tokens=sum(r.cached_tokens for r in results),
            generated_tokens=sum(r.generated_tokens for r in results),
            wall_s=t4 - t0,
            serve_s=t2 - t1,
            think_s=(t1 - t0) + (t3 - t2),
            step_s=t4 - t3,
            world_score=float(world_score),
            latencies_ms=[r.latency_s * 1000 for r in results],
        )
        self.metrics.append(m)
        if self._log:
            self._write_events(tick, actions, infos, m)
        return m

    def _write_events(self, tick: int, actions: dict, infos: dict, m: TickMetrics) -> None:
        for agent, action in actions.items():
            d = self.brain.last_decision.get(agent)
            info = infos.get(agent, {})
            event = {
                "type": "decision",
                "tick": tick,
                "agent": agent,
                "action": action.model_dump(mode="json"),
                "source": d.source if d else None,
                "reason": d.reason if d else None,
                "refused": info.get("refused"),
                "score": info.get("score"),
            }
            if d is not None and d.speech is not None:
                event["speech"] = d.speech  # the talk model's line as written (the action's is fitted)
            self._log.write(json.dumps(event) + "\n")
        tick_line = {"type": "tick", **{k: v for k, v in asdict(m).items() if k != "latencies_ms"}}
        self._log.write(json.dumps(tick_line) + "\n")
        self._log.flush()

    def run(
        self, ticks: int, progress: bool = True, on_tick: Callable[[TickMetrics], None] | None = None
    ) -> Summary:
        """Run ``ticks`` ticks (fewer if the world ends), with a progress bar."""
        from tqdm import tqdm

        bar = tqdm(
            total=ticks,
            desc=f"{self.world_name} ({len(self.world.agents)} agents)",
            unit="tick",
            disable=not progress,
            leave=False,
        )
        try:
            for _ in range(ticks):
                if self.done:
                    break
                m = self.step()
                bar.update(1)
                bar.set_postfix(
                    score=f"{m.world_score:.3f}", dec_s=f"{m.decisions / max(m.wall_s, 1e-9):.0f}"
                )
                if on_tick:
                    on_tick(m)
        finally:
            bar.close()
        return self.summary()

    def summary(self) -> Summary:
        ms = self.metrics
        prompt = sum(m.prompt_tokens for m in ms)
        wall = sum(m.wall_s for m in ms)
        decisions = sum(m.decisions for m in ms)
        return Summary(
            world=self.world_name,
            brain=type(self.brain).__name__,
            agents=len(self.world.possible_agents),
            ticks=len(ms),
            seed=int(self.world.seed),
            final_tick=int(self.world.tick),
            world_score=float(self.world.world_score())
            if self.world.agents
            else (ms[-1].world_score if ms else 0.0),
            state_hash=self.world.state_hash(),
            decisions=decisions,
            fallbacks=sum(m.fallbacks for m in ms),
            refused=sum(m.refused for m in ms),
            prompt_tokens=prompt,
            cached_tokens=sum(m.cached_tokens for m in ms),
            generated_tokens=sum(m.generated_tokens for m in ms),
            wall_s=wall,
            decisions_per_s=decisions / wall if wall else 0.0,
            prefix_hit_ratio=(sum(m.cached_tokens for m in ms) / prompt) if prompt else None,
            model=getattr(self.brain, "model", None),
        )

    def inspect(self, agent: str) -> dict[str, str]:
        """What the inspector shows for ``agent``: persona, needs, recent memory, last prompt and decision."""
        persona = self.world.persona(agent)
        view = next((a for a in self.world.view().agents if a.name == agent), None)
        traits = ", ".join(f"{k} {v:.2f}" for k, v in persona.traits.items())
        out = {
            "persona": f"{persona.name}, {persona.role}\ntraits: {traits}\ngoals: {'; '.join(persona.goals)}\n{persona.backstory}"
        }
        if view is not None:
            needs = ", ".join(f"{k} {v:.2f}" for k, v in view.needs.items())
            inv = ", ".join(f"{k} {n}" for k, n in view.inventory.items()) or "nothing"
            out["state"] = f"at {view.x},{view.y}; {needs}; coins {view.coins}; carries {inv}"
        mem = self.world.memory(agent).recent(6)
        out["memory"] = "\n".join(f"t{e.tick}: {e.text}" for e in mem) or "none"
        prompt = self.brain.last_prompt.get(agent)
        out["last prompt"] = prompt[-1] if prompt else "—"  # the agent-specific part; the rest is shared
        d = self.brain.last_decision.get(agent)
        out["last decision"] = (
            f"[{d.source}] {d.text}" + (f"\n(fallback: {d.reason})" if d and d.reason else "") if d else "—"
        )
        return out

    def close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None
