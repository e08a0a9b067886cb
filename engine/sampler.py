"""Token sampling for a batch of rows, vectorised over the batch and the vocabulary.

Order (vLLM v1): raw logprobs -> allowed_token_ids -> banned tokens (min_tokens, bad words) ->
logit_bias -> penalties -> greedy rows take the argmax -> temperature -> min-p -> top-k -> top-p ->
draw. A row draws by inverse CDF: one uniform number from its request's own generator (a seeded
request) or the engine's, and the first token whose running probability total passes it, so a seeded
request's tokens do not depend on which other requests share the batch. One number a row, where the
exponential race (argmax of p / E, E ~ Exp(1)) draws one per vocabulary entry: on the CPU those took
57 ms a step for 60 rows of 49,152. Top-k and top-p look at each row's likeliest TOP_CANDIDATES tokens
(torch.topk) instead of sorting its vocabulary (113 ms for those rows), and at more of them only for a
row whose nucleus reaches past them (sample_top_k_top_p); a row that filters nothing draws from its
whole softmax.

Logprobs follow vLLM's default `logprobs_mode="raw_logprobs"`: they are the log_softmax of the
logits as the model produced them (after a structured-output mask, applied before the sampler),
before penalties, bias, temperature and the top-k/top-p/min-p filters. They are computed only for
the rows that asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.ops import greedy_argmax

# Tokens a row's top-k / top-p filter considers before falling back to its whole vocabulary: a language
# model's nucleus nearly always lies among its few hundred likeliest tokens.
TOP_CANDIDATES = 256
# How many times more candidates each next round of sample_top_k_top_p looks at.
CANDIDATES_GROWTH = 16
# Columns per chunk of draw()'s first level.
DRAW_CHUNK = 256


@dataclass
class Penalties:
    """Presence/frequency/repetition penalties for the rows that use any of them."""

    # [P] int64: the rows of the batch these settings belong to.
    rows: torch.Tensor
    # [P, Lp] int64: each row's prompt token ids, padded with vocab_size.
    prompt_tokens: torch.Tensor
    # [P, Lo] int64: each row's output token ids so far, padded with vocab_size.
    output_tokens: torch.Tensor
    # [P] float32 each.
    presence: torch.Tensor
    frequency: torch.Tensor
    repetition: torch.Tensor


@dataclass
class SparseLogits:
    """(row, token) pairs of a [N, V] tensor, with a value each (logit_bias, allowed tokens)."""

    # [M] int64 each.
    rows: torch.Tensor
    tokens: torch.Tensor
    # [M] float32; unused for allowed tokens.
    values: torch.Tensor


@dataclass
class SamplingBatch:
    """Per-row sampling settings, built by the runner for the rows whose logits were computed."""

    # [N] float32: 0 marks a greedy row.
    temperature: torch.Tensor
    # [N] float32 in (0, 1].
    top_p: torch.Tensor
    # [N] int64: 0 = off.
    top_k: torch.Tensor
    # [N] float32 in [0, 1].
    min_p: torch.Tensor
    # One entry per row: the request's own generator, or None for the shared one.
    generators: list[torch.Generator | None]
    # (row, token) pairs forced to -inf (EOS/stop ids before min_tokens, bad words), two [M] int64 tensors.
    suppressed_rows: torch.Tensor
    suppressed_tokens: torch.Tensor
    # Fast paths: every row greedy, or some; the largest top_k of a sampled row (0: none uses top-k); some
    # sampled row uses top-p / min-p.
    all_greedy: bool
    any_greedy: bool
    max_top_k: int
    need_top_p: bool
    need_min_p: bool
    # Rows restricted to allowed_token_ids: [R] int64 rows, plus the (row, token) pairs they allow.
    restricted_rows: torch.Tensor | None = None
    allowed: SparseLogits | None = None
    # logit_bias entries of every row.
    logit_bias: SparseLogits | None = None
    penalties: Penalties | None = None
    # [L] int64: rows that want logprobs, and the most top logprobs any of them wants.
    logprob_rows: torch.Tensor | None = None
    num_logprobs: int = 0


@dataclass
class SamplerOutput:
    """One sampled token per row, plus raw logprobs for the rows that asked."""

    # [N] int64.
    token_ids: torch.Tensor
    # [L, 1 + num_logprobs] int64 / float32, rows in SamplingBatch.logprob_rows order: column 0 is
    # the sampled token, then the most likely tokens in order. None when no row asked.
    logprob_token_ids: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None


class Sampler:
    """Chooses one token per row of a [N, V] float32 logits tensor."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """`logits` may be modified in place."""
        raw_logprobs = None
        if batch.logprob_rows is not None:
            raw_logprobs = logits[batch.logprob_rows].log_softmax(dim=-1)
        logits = apply_constraints(logits, batch)
        tokens = self._sample(logits, batch)
        if raw_logprobs is None or batch.logprob_rows is None:
            return SamplerOutput(tokens)
        token_ids, values = gather_logprobs(raw_logprobs, tokens[batch.logprob_rows], batch.num_logprobs)
        return SamplerOutput(tokens, token_ids, values)

    def _sample(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        if batch.all_greedy:
            return greedy_argmax(logits)
        greedy = greedy_argmax(logits) if batch.any_greedy else None
        is_greedy = batch.temperature == 0
        temperature = torch.where(is_greedy, torch.ones_like(batch.temperature), batch.temperature)
        logits = logits / temperature.unsqueeze(1)
        if batch.need_min_p:
            logits = apply_min_p(logits, batch.min_p)
        top_k = batch.top_k if batch.max_top_k else None
        top_p = batch.top_p if batch.need_top_p else None
        uniform = self._uniform(batch.generators, logits.device)
        sampled = sample_top_k_top_p(logits, top_k, top_p, batch.max_top_k, uniform)
        return sampled if greedy is None else torch.where(is_greedy, greedy, sampled)

    def _uniform(self, generators: list[torch.Generator | None], device: torch.device) -> torch.Tensor:
        """[N] float64 uniform numbers in [0, 1): a seeded row's from its own generator."""
        uniform = torch.rand(len(generators), generator=self._generator, device=device, dtype=torch.float64)
        for row, generator in enumerate(generators):
            if generator is not None:
                uniform[row : row + 1] = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
        return uniform


def draw(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Per row of [N, C] non-negative weights, the column where the running total first exceeds `uniform`
    times the row's total (inverse CDF). In two levels: the chunk of DRAW_CHUNK columns where it happens,
    then the column inside it. Running totals are float64 (a float32 total near 1 cannot add a token of
    probability 1e-8), and a float64 cumsum of a whole vocabulary is slow on the CPU (7 ms for 60 rows of
    49,152; both levels together take under 1)."""
    rows, width = weights.shape
    whole = width - width % DRAW_CHUNK
    totals = weights[:, :whole].unflatten(1, (-1, DRAW_CHUNK)).sum(dim=-1)
    if whole < width:
        totals = torch.cat([totals, weights[:, whole:].sum(dim=-1, keepdim=True)], dim=1)
    running = totals.cumsum(dim=-1, dtype=torch.float64)
    target = (uniform * running[:, -1]).unsqueeze(1)
    chunk = torch.searchsorted(running, target, right=True).clamp(max=totals.shape[1] - 1)
    chunk_total = totals.gather(1, chunk)
    # How far into its chunk the target lies, as a fraction of the chunk's total.
    fraction = ((target - (running.gather(1, chunk) - chunk_total)) / chunk_total).clamp(0.0, 1.0)
    columns = chunk * DRAW_CHUNK + torch.arange(DRAW_CHUNK, device=weights.device)
    inside = weights.gather(1, columns.clamp(max=width - 1)).masked_fill(columns >= width, 0.0)
    inner = inside.cumsum(dim=-1, dtype=torch.float64)
    column = torch.searchsorted(inner, fraction * inner[:, -1:], right=True)
    # A fraction rounded up to 1 would pass the chunk's last token of any weight: stop there.
    last = (inner < inner[:, -1:]).sum(dim=-1, keepdim=True)
    return (chunk * DRAW_CHUNK + torch.minimum(column, last)).squeeze(1)


def sample_top_k_top_p(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    max_top_k: int,
    uniform: torch.Tensor,
) -> torch.Tensor:
    """Draws each row's token after the top-k and top-p filters. A filtering row draws among its likeliest
    tokens, most likely first, once its filtered distribution is known to lie among them: TOP_CANDIDATES (or
    max_top_k) of them first, CANDIDATES_GROWTH times as many for the rows whose nucleus (or top-k ties)
    reached past those, at last the whole vocabulary. The draw is the same whichever round takes the row,
    so a seeded row's token does not depend on its neighbours' settings. A row that filters nothing draws
    from its whole softmax."""
    rows, vocab = logits.shape
    sampled = torch.empty(rows, dtype=torch.int64, device=logits.device)
    filters = torch.zeros(rows, dtype=torch.bool, device=logits.device)
    if top_k is not None:
        filters |= top_k > 0
    if top_p is not None:
        filters |= top_p < 1.0
    if not bool(filters.all()):
        plain = (~filters).nonzero().squeeze(1)
        sampled[plain] = draw(_rows(logits, plain).softmax(dim=-1), uniform[plain])
    pending = filters.nonzero().squeeze(1)
    count = max(TOP_CANDIDATES, max_top_k)
    while pending.numel() > 0:
        count = min(count, vocab)
        part = _rows(logits, pending)
        ids, probs, covered = filtered_candidates(
            part, None if top_k is None else top_k[pending], None if top_p is None else top_p[pending], count
        )
        if count == vocab:
            covered = torch.ones_like(covered)
        tokens = ids.gather(1, draw(probs, uniform[pending]).unsqueeze(1)).squeeze(1)
        sampled[pending[covered]] = tokens[covered]
        pending = pending[~covered]
        count *= CANDIDATES_GROWTH
    return sampled


def _rows(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """logits[rows], without the copy when `rows` is every row."""
    return logits if rows.numel() == logits.shape[0] else logits[rows]


def filtered_candidates(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None, count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's `count` likeliest token ids, most likely first; their weights after vLLM's filters (top-k
    keeps every token at least as likely as the k-th, top-p then the smallest nucleus reaching top_p of
    what top-k kept; proportional to the filtered distribution, zero where filtered out); and whether the
    row's filtered distribution lies among them (not when the nucleus or the k-th token's ties reach the
    last candidate)."""
    values, ids = logits.topk(count, dim=-1)
    # Probabilities under the whole row's softmax; a top-k row renormalises over the tokens it keeps.
    probs = (values - logits.logsumexp(dim=-1, keepdim=True)).exp()
    # Past a last candidate of probability 0 (-inf, a masked token, or underflow), no token counts.
    rest_is_zero = probs[:, -1] == 0
    uses_top_k = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    covered = torch.ones_like(uses_top_k)
    if top_k is not None:
        uses_top_k = top_k > 0
        k = torch.where(uses_top_k, top_k, torch.full_like(top_k, count)).clamp(max=count)
        kth = values.gather(1, (k - 1).unsqueeze(1))
        probs = probs.masked_fill(values < kth, 0.0)
        probs = torch.where(uses_top_k.unsqueeze(1), probs / probs.sum(dim=-1, keepdim=True), probs)
        # Top-k keeps every tie with the k-th token, and one may lie past the last candidate.
        covered &= ~uses_top_k | (values[:, -1] < kth.squeeze(1)) | rest_is_zero
    if top_p is not None:
        # Kept: the tokens before which less than top_p of the probability lies (the likeliest always).
        running = probs.cumsum(dim=-1)
        probs = probs.masked_fill(running - probs >= top_p.unsqueeze(1), 0.0)
        # Before the first token past the candidates lies their total: at least top_p, and it is not kept.
        # (A top-k row's nucleus lies among the tokens top-k kept.)
        covered &= (top_p == 1.0) | uses_top_k | (running[:, -1] >= top_p) | rest_is_zero
    return ids, probs, covered


def apply_constraints(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Allowed tokens, banned tokens, logit_bias and penalties, in vLLM's order (in place)."""
    if batch.restricted_rows is not None and batch.allowed is not None:
        blocked = torch.zeros_like(logits, dtype=torch.bool)
        blocked[batch.restricted_rows] = True
        blocked[batch.allowed.rows, batch.allowed.tokens] = False
        logits.masked_fill_(blocked, float("-inf"))
    if batch.suppressed_rows.numel():
        logits[batch.suppressed_rows, batch.suppressed_tokens] = float("-inf")
    if batch.logit_bias is not None:
        bias = batch.logit_bias
        logits.index_put_((bias.rows, bias.tokens), bias.values, accumulate=True)
    if batch.penalties is not None:
        logits = apply_penalties(logits, batch.penalties)
    return logits


def apply_penalties(logits: torch.Tensor, penalties: Penalties) -> torch.Tensor:
    """vLLM's penalties on the rows `penalties.rows` of [N, V] logits, in place: repetition over prompt +
    output tokens, then frequency (times the output count) and presence (once per output token)
    subtracted. Only the tokens a row has seen change, so only they are visited: each row's prompt and
    output ids sorted, and each distinct id taken once with its output count (dense [P, V] count tables
    took 22 ms a step for 60 rows of 49,152)."""
    vocab = logits.shape[1]
    tokens = torch.cat([penalties.prompt_tokens, penalties.output_tokens], dim=1)
    from_output = torch.zeros_like(tokens, dtype=torch.bool)
    from_output[:, penalties.prompt_tokens.shape[1] :] = True
    tokens, order = tokens.sort(dim=1)
    from_output = from_output.gather(1, order)
    # Runs of one id in a sorted row: `group` numbers them, `first` marks where each starts.
    first = torch.ones_like(tokens, dtype=torch.bool)
    first[:, 1:] = tokens[:, 1:] != tokens[:, :-1]
    group = first.cumsum(dim=1) - 1
    counts = torch.zeros(tokens.shape, dtype=logits.dtype, device=logits.device)
    counts.scatter_add_(1, group, from_output.to(logits.dtype))
    # Padding (id `vocab`) sorts last and is left out.
    row, position = (first & (tokens < vocab)).nonzero(as_tuple=True)
    token = tokens[row, position]
    count = counts[row, group[row, position]]
    batch_row = penalties.rows[row]
    value = logits[batch_row, token]
    repetition = penalties.repetition[row]
    value = torch.where(value > 0, value / repetition, value * repetition)
    value = value - penalties.frequency[row] * count - penalties.presence[row] * (count > 0).to(logits.dtype)
    logits[batch_row, token] = value
    return logits


def gather_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, num_top: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, V] logprobs -> ([M, 1 + num_top] ids, same-shape values): the chosen token, then the top ones."""
    top_values, top_ids = logprobs.topk(num_top, dim=-1)
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))
    return torch.cat([token_ids.unsqueeze(1), top_ids], dim=1), torch.cat([chosen, top_values], dim=1)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Mask tokens whose probability is below min_p times the row's highest probability."""
    probs = logits.softmax(dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
    return logits.masked_fill(probs < threshold, float("-inf"))
