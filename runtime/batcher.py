"""Continuous batching over one engine: requests join and leave the running batch between steps.

One :meth:`Batcher.step` reads like its description:

1. **admit** waiting requests while the batch has room (rows, prefill tokens per step);
2. **match** each against the radix cache, first computing once any prefix several of them share;
3. **prefill** their uncached tails in one ragged pass, insert the prompts' KV into the cache,
   sample each one's first token;
4. **decode** one step for every running row (a row may feed several tokens when the grammar forces
   them), sample, and retire rows that are done (their KV dropped once enough of a cohort is).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from runtime.choices import ChoiceTracker, restrict
from runtime.constrained import ConstraintCompiler, ConstraintError
from runtime.engine import BatchKV, OrtEngine
from runtime.kv_cache import RadixCache, TreeNode, common_prefix_length
from runtime.passcost import PassCostModel, group_by_tail, group_rows
from runtime.sampling import NgramBlocker, request_rng, sample_tokens
from runtime.tokenizer import Tokenizer
from runtime.types import BatcherStats, Request, Result

log = logging.getLogger(__name__)


@dataclass
class Sequence:
    """A request in flight."""

    req: Request | None  # None for an internal shared-prefix pass
    prompt: list[int]
    arrival: float = 0.0
    rng: np.random.Generator | None = None
    blocker: NgramBlocker | None = None  # no_repeat_ngram_size: n-grams of prompt + output so far
    prefix_kv: list[np.ndarray] | None = None  # cached prefix KV segments, (L, 2, H, n, D), until prefill
    matcher: object | None = None
    choices: ChoiceTracker | None = None  # the constraint's string choices, if any
    out: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # tokens to feed on the next pass
    pos: int = 0  # tokens already in the KV
    cached: int = 0
    forced: int = 0
    node: TreeNode | None = None  # locked radix node
    need: int | None = None  # uncached prompt tokens, estimated at admission
    min_logprob: float | None = None
    finish: str | None = None
    text: str | None = None
    error: str | None = None

    @property
    def max_tokens(self) -> int:
        return self.req.sampling.max_tokens


class Batcher:
    """Continuous batching with a shared radix prefix cache.

    Args:
        engine: the model's engine.
        tokenizer: the model's tokenizer.
        cache: the radix cache (``None`` disables prefix caching).
        max_batch_size: most rows decoding together.
        max_prefill_tokens: most prompt tokens admitted in one step, cached ones included (each new
            token attends to them all, and the attention scores of a pass grow with rows × new ×
            cached tokens; counting only uncached tokens made passes so large that a cold batch of
            64 village prompts decided 25% slower). At least one request is always admitted.
        share_prefixes: compute a prefix shared by several newly admitted requests once.
        min_shared_tokens: shortest shared prefix worth a pass of its own.
        prefill_grouping: how admitted rows are split into prefill passes: ``"cost"`` (least total
            cost under a model of pass cost fitted to this batcher's own passes) or ``"padding"``
            (by tail length alone); see :meth:`_prefill_groups`.
    """

    def __init__(
        self,
        engine: OrtEngine,
        tokenizer: Tokenizer,
        cache: RadixCache | None = None,
        max_batch_size: int = 64,
        max_prefill_tokens: int = 8192,
        share_prefixes: bool = True,
        min_shared_tokens: int = 16,
        prefill_grouping: str = "cost",
    ):
        if prefill_grouping not in ("cost", "padding"):
            raise ValueError(f"prefill_grouping must be 'cost' or 'padding', not {prefill_grouping!r}")
        self.engine = engine
        self.tok = tokenizer
        self.cache = cache
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.share_prefixes = share_prefixes and cache is not None
        self.min_shared_tokens = min_shared_tokens
        self.prefill_grouping = prefill_grouping
        self.worker_id: str | None = None  # written into every result (``Result.worker``)
        self.pass_cost = PassCostModel()
        self.context = engine.info.max_position_embeddings
        self.compiler = ConstraintCompiler(
            tokenizer.to_json(),
            engine.info.vocab_size,
            tokenizer.eos_token_ids,
            threads=engine.threads or None,  # the engine's thread budget (0: all cores)
        )
        self.eos = set(tokenizer.eos_token_ids)
        self.waiting: list[Sequence] = []
        # Rows decoding, in cohorts: each prefill group keeps its own KV batch, so admitting rows
        # never copies the KV of rows already running (a cohort's batch is copied only when some of
        # its rows finish). Small cohorts are merged (see ``_merge_small_cohorts``).
        self.cohorts: list[tuple[list[Sequence], BatchKV]] = []
        self.admit_window = 4 * max_batch_size
        self.max_cohorts = 4
        self.min_cohort_rows = 32
        # Rows finishing in decode stay in their cohort, fed nothing, until they are this share of it
        # (each pass copies the cohort's KV anyway; dropping rows one by one copied all survivors).
        self.compact_dead_share = 0.25
        self.stats = BatcherStats()
        self._done: list[Result] = []

    # ---- public API ----------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        """Queue a request. Problems (oversized prompt, bad constraint) become error results."""
        greedy = req.sampling.temperature == 0.0  # greedy picks draw no random numbers
        seq = Sequence(req, [], time.perf_counter(), None if greedy else request_rng(req.sampling))
        try:
            seq.prompt = self.tok.encode_prompt(req.segments)
            if len(seq.prompt) >= self.context:
                raise ValueError(
                    f"prompt of {len(seq.prompt)} tokens does not fit the model's context of {self.context}"
                )
            if req.sampling.no_repeat_ngram_size:
                seq.blocker = NgramBlocker(req.sampling.no_repeat_ngram_size, seq.prompt)
            if req.constraint is not None:
                seq.matcher = self.compiler.matcher(req.constraint)
                seq.choices = self.compiler.choice_tracker(req.constraint)
        except (ValueError, ConstraintError) as e:
            seq.error, seq.finish = str(e), "error"
            self._done.append(self._result(seq))
            return
        self.waiting.append(seq)

    def add_many(self, requests: list[Request]) -> None:
        """Queue ``requests`` (their new prompt segments tokenized in one batched call)."""
        t0 = time.perf_counter()
        self.tok.prefetch(r.segments for r in requests)
        for r in requests:
            self.add(r)
        self.stats.add_s += time.perf_counter() - t0

    def fail_all(self, error: str) -> list[Result]:
        """End every waiting and running request with ``error`` and start over with an empty
        prefix cache (after a failed step, KV in flight cannot be trusted)."""
        seqs, out = self.running + self.waiting, []
        self.cohorts, self.waiting = [], []
        for s in seqs:
            s.finish, s.error = "error", error
            out.append(self._result(s))
        if self.cache is not None:
            self.cache.reset()
        return out

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.cohorts or self._done)

    @property
    def running(self) -> list[Sequence]:
        """Every row decoding now (finished rows waiting in a cohort to be dropped are not)."""
        return [s for seqs, _ in self.cohorts for s in seqs if s.finish is None]

    def step(self) -> list[Result]:
        """One scheduling iteration; returns the requests that finished in it."""
        t0 = time.perf_counter()
        admitted = self._admit()
        if admitted:
            self._prefill(admitted)
        if self.cohorts:
            self._decode()
        done, self._done = self._done, []
        self.stats.step_s += time.perf_counter() - t0
        return done

    def run(self, requests: list[Request]) -> list[Result]:
        """Serve ``requests`` to completion; results in the same order."""
        self.add_many(requests)
        by_id: dict[str, Result] = {}
        while self.has_work:
            for res in self.step():
                by_id[res.id] = res
        return [by_id[r.id] for r in requests]

    # ---- admission and prefix matching -------------------------------------------------------
    def _admit(self) -> list[Sequence]:
        room = self.max_batch_size - len(self.running)
        if not self.waiting or room <= 0:
            return []
        admitted, budget, taken = [], self.max_prefill_tokens, set()
        for i in self._admission_order():
            seq = self.waiting[i]
            if admitted and (len(seq.prompt) > budget or room == 0):
                break
            admitted.append(seq)
            taken.add(i)
            budget -= len(seq.prompt)
            room -= 1
        self.waiting = [s for i, s in enumerate(self.waiting) if i not in taken]
        if admitted and self.share_prefixes:
            self._prefill_shared([s.prompt for s in admitted])
        for seq in admitted:
            self._match(seq)
        return admitted

    def _admission_order(self) -> list[int]:
        """Indices into ``waiting``: the oldest request first, then those of the next
        ``admit_window`` whose uncached tails are closest to its length.

        A prefill pass pads every row to its longest tail, and a tick's requests mix short tails
        (a new observation) with long ones (a changed memory): admitting alike tails together keeps
        the padding small. Each request's tail length is estimated once, when first considered.
        """
        window = self.waiting[: self.admit_window]
        for s in window:
            if s.need is None:
                cached = self.cache.cached_length(s.prompt) if self.cache is not None else 0
                s.need = len(s.prompt) - cached
        head = window[0].need
        return sorted(range(len(window)), key=lambda i: (i > 0, abs(window[i].need - head), i))

    def _match(self, seq: Sequence) -> list[np.ndarray] | None:
        if self.cache is None:
            return None
        m = self.cache.match_prefix(seq.prompt)
        self.cache.lock(m.node)
        seq.node = m.node
        # The matched nodes' KV, not concatenated: the prefill copies each straight into its batch.
        segments = [n.value for n in m.path]
        length = m.length
        if length == len(seq.prompt):  # fully cached: recompute the last token to get its logits
            length -= 1
            last = segments.pop()
            if last.shape[3] > 1:
                segments.append(last[:, :, :, :-1])
        seq.cached = length
        seq.prefix_kv = segments or None
        return seq.prefix_kv

    def _prefill_shared(self, prompts: list[list[int]], depth: int = 0) -> None:
        """Compute once, and cache, each prefix that two or more of ``prompts`` share beyond the cache."""
        if depth > 3 or len(prompts) < 2:
            return
        order = sorted(prompts)
        lcp = [common_prefix_length(a, b) for a, b in zip(order, order[1:])]
        candidates: dict[tuple[int, ...], None] = {}
        for i, p in enumerate(order):
            shared = max(lcp[i - 1] if i else 0, lcp[i] if i < len(lcp) else 0)
            if shared >= self.min_shared_tokens:
                candidates[tuple(p[:shared])] = None
        todo = [list(c) for c in candidates if self._uncached(c) >= self.min_shared_tokens]
        if not todo:
            return
        self._prefill_shared(todo, depth + 1)  # their own common parts first
        todo = [c for c in todo if self._uncached(c) >= self.min_shared_tokens]  # still worth a pass?
        if not todo:
            return
        seqs = []
        for toks in todo:
            s = Sequence(None, toks)
            self._match(s)
            seqs.append(s)
        self._forward_prefill(seqs, sample=False)
        for s in seqs:
            self.stats.shared_prefill_tokens += len(s.prompt) - s.cached
            self.cache.unlock(s.node)

    def _uncached(self, tokens: list[int]) -> int:
        return len(tokens) - self.cache.match_prefix(tokens, count_hit=False).length

    # ---- prefill ------------------------------------------------------------------------------
    def _prefill(self, admitted: list[Sequence]) -> None:
        for seq in admitted:
            if seq.matcher is not None:  # the constrained output may start with forced tokens
                ff = seq.matcher.compute_ff_tokens()
                if ff:
                    seq.matcher.consume_tokens(ff)
                    self._emit(seq, ff)
                    seq.forced += len(ff)
            seq.pending = seq.prompt[seq.cached :] + seq.out
            self.stats.requests += 1
            self.stats.prompt_tokens += len(seq.prompt)
            self.stats.cached_tokens += seq.cached
        for group in self._prefill_groups(admitted):
            t0 = time.perf_counter()
            shape = len(group), max(len(s.pending) for s in group), max(s.cached for s in group)
            logits, kv = self._forward_prefill(group, sample=True)
            alive = self._sample_rows(group, logits)
            self.pass_cost.observe(*shape, time.perf_counter() - t0)
            if alive:
                self.cohorts.append(([group[i] for i in alive], kv.select(alive, self._spare(kv))))
        self._merge_small_cohorts()

    def _prefill_groups(self, admitted: list[Sequence]) -> list[list[Sequence]]:
        """Split the rows admitted together into prefill passes.

        ``"cost"``: the split :func:`runtime.passcost.group_rows` predicts cheapest, padding to both
        the longest new tail and the longest cached prefix counted. ``"padding"``: rows sorted by
        tail length, a pass closed when its padded tails would exceed twice its real tokens (cached
        prefixes not counted; the rule before the cost model, kept for comparison).
        """
        if self.prefill_grouping == "cost":
            groups = group_rows([(s.cached, len(s.pending)) for s in admitted], self.pass_cost)
        else:
            groups = group_by_tail([len(s.pending) for s in admitted])
        return [[admitted[i] for i in g] for g in groups]

    def _merge_small_cohorts(self) -> None:
        """Cohorts under ``min_cohort_rows`` rows decode as one batch (a decode pass has a fixed cost;
        copying small batches is cheap), and never more than ``max_cohorts`` batches in all."""
        self.cohorts.sort(key=lambda c: len(c[0]))
        n = sum(1 for seqs, _ in self.cohorts if len(seqs) < self.min_cohort_rows)
        n = max(n, len(self.cohorts) - self.max_cohorts + 1)
        if n < 2:
            return
        live = [[b for b, s in enumerate(seqs) if s.finish is None] for seqs, _ in self.cohorts[:n]]
        merge = [([seqs[b] for b in rows], kv.select(rows)) for (seqs, kv), rows in zip(self.cohorts, live)]
        spare = self._spare(max(kv.width for _, kv in merge))
        merged = ([s for seqs, _ in merge for s in seqs], BatchKV.concat([kv for _, kv in merge], spare))
        self.cohorts = [*self.cohorts[n:], merged]

    def _forward_prefill(self, seqs: list[Sequence], sample: bool) -> tuple[np.ndarray, BatchKV]:
        if not sample:
            for s in seqs:
                s.pending = s.prompt[s.cached :]
        past = BatchKV.from_prefixes(self.engine.info, [s.prefix_kv for s in seqs], self.engine.kv_dtype)
        for s in seqs:
            s.prefix_kv = None  # the batch holds its own copy now
            s.pos = s.cached
        logits, kv = self._forward(seqs, past)
        self.stats.prefill_passes += 1
        if self.cache is not None:
            for b, s in enumerate(seqs):
                n = len(s.prompt)
                node = self.cache.insert(s.prompt, kv.row_tokens(b, s.cached, n), offset=s.cached, lock=True)
                self.cache.unlock(s.node)
                s.node = node
        return logits, kv

    # ---- decode -------------------------------------------------------------------------------
    def _decode(self) -> None:
        cohorts = []
        for seqs, kv in self.cohorts:
            logits, kv = self._forward(seqs, kv, append=True)
            self.stats.decode_passes += 1
            alive = self._sample_rows(seqs, logits)
            if not alive:
                continue
            if len(seqs) - len(alive) >= self.compact_dead_share * len(seqs):
                seqs, kv = [seqs[i] for i in alive], kv.select(alive, self._spare(kv))
            cohorts.append((seqs, kv))
        self.cohorts = cohorts

    def _spare(self, kv: BatchKV | int) -> int:
        return self.engine.spare_columns(kv if isinstance(kv, int) else kv.width)

    def _forward(self, seqs: list[Sequence], past: BatchKV, append=False) -> tuple[np.ndarray, BatchKV]:
        """Feed each row its pending tokens (right-aligned) in one pass (``append``: a decode pass,
        :meth:`OrtEngine.forward_append`)."""
        T = max(len(s.pending) for s in seqs if s.finish is None)
        B = len(seqs)
        ids = np.zeros((B, T), np.int64)
        pos = np.zeros((B, T), np.int64)
        mask = np.zeros((B, T), np.int64)
        for b, s in enumerate(seqs):
            if s.finish is not None:  # a finished row kept in its cohort: fed nothing, its output unread
                continue
            n = len(s.pending)
            ids[b, T - n :] = s.pending
            pos[b, T - n :] = np.arange(s.pos, s.pos + n)
            mask[b, T - n :] = 1
            s.pos += n
            s.pending = []
        t0 = time.perf_counter()  # wall clocks only: reading thread CPU time is a system call
        forward = self.engine.forward_append if append else self.engine.forward
        logits, kv = forward(ids, pos, mask, past)
        self.stats.engine_s += (dt := time.perf_counter() - t0)
        self.stats.decode_engine_s += dt if append else 0.0
        return logits, kv

    # ---- sampling and finishing ---------------------------------------------------------------
    def _sample_rows(self, seqs: list[Sequence], logits: np.ndarray) -> list[int]:
        """Sample a token for each running row; returns the indices of rows still running."""
        live = [b for b, s in enumerate(seqs) if s.finish is None]
        if len(live) < len(seqs):  # finished rows kept in the cohort are not sampled
            return [live[i] for i in self._sample_rows([seqs[b] for b in live], logits[live])]
        constrained = [(s.matcher, b) for b, s in enumerate(seqs) if s.matcher is not None]
        if constrained:
            bitmask = self.compiler.allocate_bitmask(len(seqs))
            self.compiler.fill_masks(constrained, bitmask)
            rows = np.array([b for _, b in constrained])
            sub = logits[rows]
            self.compiler.apply(sub, bitmask[rows])
            logits[rows] = sub
            for b, s in enumerate(seqs):
                if s.choices is not None and (allowed := s.choices.allowed(s.out)) is not None:
                    restrict(logits[b], allowed)
        for b, s in enumerate(seqs):
            if s.blocker is not None and (banned := s.blocker.banned()):
                row = logits[b].copy()
                row[list(banned)] = -np.inf
                if np.isfinite(row).any():  # never ban the last possible token
                    logits[b] = row
        alive = []
        picks = sample_tokens(logits, [s.req.sampling for s in seqs], [s.rng for s in seqs])
        for b, (s, (tok, logp)) in enumerate(zip(seqs, picks)):
            s.min_logprob = logp if s.min_logprob is None else min(s.min_logprob, logp)
            self._accept(s, tok)
            if s.finish is None:
                alive.append(b)
            else:
                self._finish(s)
        return alive

    def _accept(self, s: Sequence, tok: int) -> None:
        if s.matcher is not None:
            if not s.matcher.consume_token(tok):
                s.finish, s.error = "error", f"constraint rejected token {tok}: {s.matcher.get_error()}"
                return
            if s.matcher.is_stopped():
                if tok not in self.eos:
                    self._emit(s, [tok])
                s.finish = "stop"
                return
            self._emit(s, [tok])
            s.pending = [tok]
            ff = s.matcher.compute_ff_tokens()
            if ff:
                s.matcher.consume_tokens(ff)
                self._emit(s, ff)
                s.pending.extend(ff)
                s.forced += len(ff)
                if s.matcher.is_stopped():
                    s.finish = "stop"
                    return
        else:
            if tok in self.eos and not s.req.sampling.ignore_eos:
                s.finish = "eos"
                return
            self._emit(s, [tok])
            s.pending = [tok]
        if s.req.sampling.stop:
            text = self.tok.decode(s.out)
            hits = [i for i in (text.find(x) for x in s.req.sampling.stop) if i >= 0]
            if hits:
                s.text, s.finish = text[: min(hits)], "stop"
                return
        if len(s.out) >= s.max_tokens:
            s.finish = "length"
            if s.matcher is not None:  # an unfinished constrained output would not parse
                s.finish, s.error = "error", f"constrained output incomplete after max_tokens={s.max_tokens}"
        elif s.pos + len(s.pending) >= self.context:
            s.finish = "length"

    @staticmethod
    def _emit(s: Sequence, tokens: list[int]) -> None:
        s.out.extend(tokens)
        if s.blocker is not None:
            for t in tokens:
                s.blocker.push(t)

    def _finish(self, s: Sequence) -> None:
        if self.cache is not None and s.node is not None:
            self.cache.unlock(s.node)
            s.node = None
        self.stats.generated_tokens += len(s.out)
        self.stats.forced_tokens += s.forced
        self._done.append(self._result(s))

    def _result(self, s: Sequence) -> Result:
        text = s.text if s.text is not None else ("" if s.error else self.tok.decode(s.out))
        return Result(
            id=s.req.id,
            model=s.req.model,
            text=text,
            token_ids=list(s.out),
            finish_reason=s.finish or "error",  # type: ignore[arg-type]
            prompt_tokens=len(s.prompt),
            cached_tokens=s.cached,
            generated_tokens=len(s.out),
            forced_tokens=s.forced,
            latency_s=time.perf_counter() - s.arrival,
            min_logprob=s.min_logprob,
            worker=self.worker_id,
            error=s.error,
            tag=s.req.tag,
        )
