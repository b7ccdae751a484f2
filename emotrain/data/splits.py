"""Carve labelled train / val / test splits from one labelled AvaMERG JSON.

The official ``test.json`` carries no labels, so evaluation splits are carved by
conversation. Assignment hashes ``(seed, id)`` instead of shuffling a list: a
conversation's split then does not depend on which other conversations are present, so
adding data or dropping a broken record never moves the rest between splits.

Speaker-independent splits (``speaker_independent``) keep every avatar id in one split.
Hashing each avatar on its own (what this module once did) drops every conversation whose
two avatars hash apart, which on a corpus with few avatars is most of them, and can leave
val or test empty. Instead, splits are cut from the *avatar graph*: a node per avatar id (a
conversation without any avatar id is a node of its own, ``conversation<ID>``), an edge per
pair of avatars weighted by the number of conversations between them (a conversation with one
avatar, or speaker == listener, is a self-loop and is always kept).

All three steps minimise one cost: ``dropped + BALANCE_WEIGHT * sum_s |kept_s - f_s * kept|``
(``f_s`` the requested fractions, train = 1 - val - test), plus a penalty larger than any other
cost for each requested split (fraction > 0) left without a conversation. The fractions come
first: with equal weights the cheapest split of a dense graph is a val and test of one avatar
pair each (a val of one conversation), which is useless; at weight 2 the splits reach their
shares and the price is paid in dropped conversations, which the pack reports and counts
against ``--max-skip-frac``.

1. *Connected components.* Whole components are assigned, largest first, each to the
   requested split furthest below its target share of conversations (equal sizes ordered by
   the hash of ``(seed, smallest node key)``). This drops nothing, and on a graph that falls
   apart into many components it is already near the fractions.
2. *Growing a split that is still short* (one component too large for any one split). The
   first avatars moved into a small split drop more than they gain, and on a graph without
   self-loops one avatar alone keeps nothing, so single-avatar moves never start it. The split
   is grown from each other split in turn: the cheapest avatar or avatar pair first, then
   always the adjacent avatar that loses fewest conversations net, up to its share; the
   cheapest prefix of that growth is kept (on a dense graph that may be a single pair).
3. *Local search.* Deterministic best-improvement moves of single avatars (in hash order of
   ``(seed, key)``) until a sweep improves nothing (at most ``MAX_SWEEPS``). A move touches
   only the avatar's incident edges, so a sweep is O(edges).

On a dense graph (few avatars, all pairs talking, as in ``emotrain synth``) *any*
avatar-disjoint split keeps only about ``sum_s p_s**2`` of the conversations (``p_s`` the
splits' avatar shares), so drops cannot be avoided; the result is then the best this search
found, not a proven optimum, and :attr:`SplitPlan.note` says so. Everything is a function of
the conversations and the seed, not of their order.

Whatever is dropped is returned with a reason per conversation; the pack lists it, counts
it against ``--max-skip-frac`` and fails when a requested split stays empty.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field

from emotrain.names import TEST, TRAIN, VAL
from emotrain.data.avamerg import Conversation

SPLITS = (TRAIN, VAL, TEST)  # the order of a recipe's fractions
BALANCE_WEIGHT = 2.0  # one conversation of imbalance costs as much as two dropped ones (see above)
MAX_SWEEPS = 100  # local-search passes over all avatars; each applied move strictly lowers the cost
_EPS = 1e-9  # a move must improve the cost by more than this (float fractions), so the search terminates


@dataclass(frozen=True)
class SplitRecipe:
    val_frac: float = 0.1
    test_frac: float = 0.1
    seed: int = 0
    speaker_independent: bool = False

    def validate(self) -> None:
        for name in ("val_frac", "test_frac"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.val_frac + self.test_frac >= 1.0:
            raise ValueError("val_frac + test_frac must leave some training data")

    def fractions(self) -> tuple[float, float, float]:
        """Target shares in ``SPLITS`` order."""
        return (1.0 - self.val_frac - self.test_frac, self.val_frac, self.test_frac)

    def to_dict(self) -> dict:
        if self.speaker_independent:
            method = (
                "speaker-independent: avatar graph (node = avatar id, edge = conversations between two avatars); "
                "whole connected components to the split furthest below its share, a split still short grown "
                "greedily out of another, then a local search over single-avatar moves, all minimising "
                "dropped + 2 * sum |kept_s - f_s*kept|; a conversation whose avatars end in different splits is "
                "dropped (emotrain/data/splits.py)"
            )
        else:
            method = "sha256(seed:conversation_id) uniform per conversation"
        return {
            "val_frac": self.val_frac,
            "test_frac": self.test_frac,
            "seed": self.seed,
            "speaker_independent": self.speaker_independent,
            "method": method,
        }


@dataclass
class SplitPlan:
    """What :func:`plan_splits` decided: the splits, what was dropped and why, and how it was found."""

    splits: dict[str, list[Conversation]]  # input order kept
    dropped: list[Conversation] = field(default_factory=list)  # input order kept
    reasons: dict[str, str] = field(default_factory=dict)  # dropped conversation id -> why
    empty: list[str] = field(default_factory=list)  # requested splits (fraction > 0) left without a conversation
    graph: str = ""  # speaker-independent only: "N avatar node(s) in K connected component(s)"
    note: str = ""  # speaker-independent only: one line on what was dropped and how the split was found


def _uniform(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _split_of(u: float, recipe: SplitRecipe) -> str:
    if u < recipe.test_frac:
        return "test"
    if u < recipe.test_frac + recipe.val_frac:
        return "val"
    return "train"


def _node_keys(conv: Conversation) -> list[str]:
    avatars = {a for a in (conv.avatar_id("speaker"), conv.avatar_id("listener")) if a is not None}
    return [f"avatar{a}" for a in sorted(avatars)] or [f"conversation{conv.conversation_id}"]


class _AvatarGraph:
    """Nodes (avatar keys), self-loop counts, weighted adjacency, and each conversation's two ends."""

    def __init__(self, conversations: list[Conversation]) -> None:
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        index = self.index
        self.ends: list[tuple[int, int]] = []
        for conv in conversations:
            ids = []
            for key in _node_keys(conv):
                if key not in index:
                    index[key] = len(self.keys)
                    self.keys.append(key)
                ids.append(index[key])
            self.ends.append((ids[0], ids[-1]))
        self.loops = [0] * len(self.keys)
        weights: dict[tuple[int, int], int] = {}
        for u, v in self.ends:
            if u == v:
                self.loops[u] += 1
            else:
                pair = (min(u, v), max(u, v))
                weights[pair] = weights.get(pair, 0) + 1
        self.edges = sorted(weights.items())  # ((u, v), conversations), u < v
        self.adj: list[list[tuple[int, int]]] = [[] for _ in self.keys]
        for (u, v), w in self.edges:
            self.adj[u].append((v, w))
            self.adj[v].append((u, w))

    def components(self) -> list[list[int]]:
        seen = [False] * len(self.keys)
        out = []
        for start in range(len(self.keys)):
            if seen[start]:
                continue
            seen[start], stack, members = True, [start], []
            while stack:
                node = stack.pop()
                members.append(node)
                for other, _ in self.adj[node]:
                    if not seen[other]:
                        seen[other] = True
                        stack.append(other)
            out.append(members)
        return out

    def kept(self, part: list[int]) -> list[int]:
        """Conversations kept per split (both ends in it) under the node assignment ``part``."""
        kept = [0] * len(SPLITS)
        for u, v in self.ends:
            if part[u] == part[v]:
                kept[part[u]] += 1
        return kept


class _Cost:
    """dropped + BALANCE_WEIGHT * sum_s |kept_s - f_s * kept| + a penalty per requested split left empty.

    The penalty exceeds the largest possible rest (dropped <= N, imbalance <= 2N), so no
    trade of drops or balance ever empties a requested split.
    """

    def __init__(self, fractions: tuple[float, ...], total: int, requested: list[int]) -> None:
        self.fractions, self.total, self.requested = fractions, total, requested
        self.penalty = (1 + 2 * BALANCE_WEIGHT) * total + 1

    def __call__(self, kept: list[int]) -> float:
        k = sum(kept)
        cost = self.total - k + BALANCE_WEIGHT * sum(abs(kept[s] - f * k) for s, f in enumerate(self.fractions))
        return cost + self.penalty * sum(1 for s in self.requested if kept[s] == 0)


def _assign_components(graph: _AvatarGraph, recipe: SplitRecipe, requested: list[int]) -> list[int]:
    """Whole components, largest first, each to the requested split furthest below its target."""
    fractions, total = recipe.fractions(), len(graph.ends)
    comps = graph.components()
    comp_of = [0] * len(graph.keys)
    for c, members in enumerate(comps):
        for node in members:
            comp_of[node] = c
    size = [0] * len(comps)
    for u, _ in graph.ends:
        size[comp_of[u]] += 1
    smallest = [min(graph.keys[n] for n in members) for members in comps]
    order = sorted(range(len(comps)), key=lambda c: (-size[c], _uniform(recipe.seed, smallest[c]), smallest[c]))
    part = [0] * len(graph.keys)
    counts = [0] * len(SPLITS)
    for c in order:
        s = max(requested, key=lambda s: (fractions[s] * total - counts[s], -s))
        counts[s] += size[c]
        for node in comps[c]:
            part[node] = s
    return part


class _Moves:
    """The assignment plus, per node, its conversation weight into each split: O(1) move costs, O(degree) moves."""

    def __init__(self, graph: _AvatarGraph, part: list[int]) -> None:
        self.graph, self.part = graph, part
        self.kept = graph.kept(part)
        self.to = [[0] * len(SPLITS) for _ in graph.keys]  # self-loops aside
        for (u, v), w in graph.edges:
            self.to[u][part[v]] += w
            self.to[v][part[u]] += w

    def kept_after(self, nodes: tuple[int, ...], dest: int) -> list[int]:
        """Kept per split if ``nodes`` (one node, or the two ends of an edge) moved to ``dest``."""
        new = list(self.kept)
        inside = 0  # the edge between the two nodes, if any, counted once
        if len(nodes) == 2:
            inside = next((w for v, w in self.graph.adj[nodes[0]] if v == nodes[1]), 0)
        for node in nodes:
            src = self.part[node]
            to = list(self.to[node])
            for other in nodes:
                if other != node:
                    to[self.part[other]] -= inside
            new[src] -= self.graph.loops[node] + to[src]
            new[dest] += self.graph.loops[node] + to[dest]
        if len(nodes) == 2:
            if self.part[nodes[0]] == self.part[nodes[1]]:
                new[self.part[nodes[0]]] -= inside
            new[dest] += inside
        return new

    def move(self, node: int, dest: int) -> None:
        src = self.part[node]
        if src == dest:
            return
        self.kept[src] -= self.graph.loops[node] + self.to[node][src]
        self.kept[dest] += self.graph.loops[node] + self.to[node][dest]
        self.part[node] = dest
        for other, w in self.graph.adj[node]:
            self.to[other][src] -= w
            self.to[other][dest] += w


def _best_seed(moves: _Moves, cost: _Cost, seed: int, s: int, donor: int) -> tuple[int, ...] | None:
    """The donor avatar, or the pair of donor avatars on one edge, whose move into ``s`` costs least."""
    graph, part = moves.graph, moves.part
    candidates: list[tuple[int, ...]] = [(n,) for n in range(len(graph.keys)) if part[n] == donor]
    candidates += [(u, v) for (u, v), _ in graph.edges if part[u] == donor and part[v] == donor]
    best, best_rank = None, None
    for nodes in candidates:
        name = "|".join(graph.keys[n] for n in nodes)
        rank = (round(cost(moves.kept_after(nodes, s)), 9), _uniform(seed, name), name)
        if best_rank is None or rank < best_rank:
            best, best_rank = nodes, rank
    return best


def _grow(graph: _AvatarGraph, part: list[int], cost: _Cost, seed: int) -> None:
    """Grow each requested split still below its target out of another split, the best of each donor.

    A component too large for one split cannot be balanced by single-avatar moves alone: the
    first avatars moved into a small split drop more than they gain (on a graph without
    self-loops one avatar alone keeps nothing), so a greedy search never starts. Instead the
    region is grown greedily (best seed, then always the donor avatar adjacent to the region
    that drops fewest conversations net) until the split reaches its share, and the prefix of
    that growth with the lowest cost is kept, which on a dense graph may be just one pair.
    """
    fractions = cost.fractions
    for s in sorted(cost.requested, key=lambda s: (-fractions[s], s)):
        kept = graph.kept(part)
        if kept[s] >= fractions[s] * sum(kept):
            continue
        best: tuple[float, list[int]] | None = None
        for donor in cost.requested:
            if donor == s:
                continue
            trial = list(part)
            _grow_from(graph, trial, cost, seed, s, donor)
            trial_cost = cost(graph.kept(trial))
            if best is None or trial_cost < best[0] - _EPS:
                best = (trial_cost, trial)
        if best is not None:
            part[:] = best[1]


def _grow_from(graph: _AvatarGraph, part: list[int], cost: _Cost, seed: int, s: int, donor: int) -> None:
    """Move donor avatars into ``s`` one by one (see :func:`_grow`), keeping the cheapest prefix."""
    fractions = cost.fractions
    moves = _Moves(graph, part)
    order: dict[int, tuple[float, str]] = {n: (_uniform(seed, k), k) for n, k in enumerate(graph.keys)}
    heap: list[tuple[int, float, str, int]] = []  # (-net kept gain, tie-break, node): the frontier

    def push(node: int) -> None:
        if part[node] == donor:
            gain = moves.to[node][s] - moves.to[node][donor]
            heapq.heappush(heap, (-gain, *order[node], node))

    for node in range(len(graph.keys)):
        if part[node] == donor and moves.to[node][s]:
            push(node)
    best_cost, history, best_len = cost(moves.kept), [], 0
    for _ in range(len(graph.keys)):
        if moves.kept[s] >= fractions[s] * sum(moves.kept):
            break
        step: tuple[int, ...] | None = None
        while heap:  # lazy: an entry is current only if the node is still a donor with that gain
            neg_gain, _, _, node = heapq.heappop(heap)
            if part[node] == donor and -neg_gain == moves.to[node][s] - moves.to[node][donor]:
                step = (node,)
                break
        if step is None:  # nothing adjacent: start a new region
            step = _best_seed(moves, cost, seed, s, donor)
            if step is None:
                break
        for node in step:
            moves.move(node, s)
            history.append(node)
        for node in step:
            for other, _ in graph.adj[node]:
                push(other)
        current = cost(moves.kept)
        if current < best_cost - _EPS:
            best_cost, best_len = current, len(history)
    for node in reversed(history[best_len:]):
        moves.move(node, donor)


def _local_search(graph: _AvatarGraph, part: list[int], cost: _Cost, seed: int) -> int:
    """Best-improvement single-avatar moves in hash order until a sweep moves nothing; returns moves made."""
    kept = graph.kept(part)
    current = cost(kept)
    order = sorted(range(len(graph.keys)), key=lambda n: (_uniform(seed, graph.keys[n]), graph.keys[n]))
    moves = 0
    for _ in range(MAX_SWEEPS):
        moved = False
        for node in order:
            s0 = part[node]
            to = [0] * len(SPLITS)
            for other, w in graph.adj[node]:
                to[part[other]] += w
            best, best_kept, best_s = current, kept, s0
            for s1 in cost.requested:
                if s1 == s0:
                    continue
                new = list(kept)
                new[s0] -= graph.loops[node] + to[s0]
                new[s1] += graph.loops[node] + to[s1]
                c = cost(new)
                if c < best - _EPS:
                    best, best_kept, best_s = c, new, s1
            if best_s != s0:
                part[node], kept, current = best_s, best_kept, best
                moved, moves = True, moves + 1
        if not moved:
            break
    return moves


def _speaker_independent(conversations: list[Conversation], recipe: SplitRecipe) -> SplitPlan:
    graph = _AvatarGraph(conversations)
    fractions = recipe.fractions()
    requested = [s for s, f in enumerate(fractions) if f > 0]
    cost = _Cost(fractions, len(conversations), requested)
    part = _assign_components(graph, recipe, requested)
    _grow(graph, part, cost, recipe.seed)
    _local_search(graph, part, cost, recipe.seed)

    plan = SplitPlan({name: [] for name in SPLITS})
    for conv, (u, v) in zip(conversations, graph.ends):
        if part[u] == part[v]:
            plan.splits[SPLITS[part[u]]].append(conv)
            continue
        plan.dropped.append(conv)  # two distinct avatars: a conversation with one is a self-loop
        ends = [f"{role} avatar {conv.avatar_id(role)} in {SPLITS[part[graph.index[f'avatar{conv.avatar_id(role)}']]]}"
                for role in ("speaker", "listener")]
        plan.reasons[conv.conversation_id] = f"speaker-independent: {', '.join(ends)}"
    plan.empty = [SPLITS[s] for s in requested if not plan.splits[SPLITS[s]]]
    plan.graph = f"{len(graph.keys)} avatar node(s) in {len(graph.components())} connected component(s)"
    if plan.dropped:
        plan.note = (f"{plan.graph}: no avatar-disjoint split found keeps every conversation at these fractions; "
                     "this is the best a local search found (not proven optimal)")
    else:
        plan.note = f"{plan.graph}: nothing dropped"
    return plan


def plan_splits(conversations: list[Conversation], recipe: SplitRecipe) -> SplitPlan:
    """Assign every conversation to a split, or drop it (speaker-independent only), with reasons.

    Without ``speaker_independent`` each conversation is hashed on its own (see the module
    docstring for why); nothing is dropped. With it, every avatar id ends in exactly one split
    and a conversation whose two avatars end in different splits is dropped.
    """
    recipe.validate()
    if recipe.speaker_independent:
        return _speaker_independent(conversations, recipe)
    plan = SplitPlan({name: [] for name in SPLITS})
    for conv in conversations:
        plan.splits[_split_of(_uniform(recipe.seed, conv.conversation_id), recipe)].append(conv)
    fractions = dict(zip(SPLITS, recipe.fractions()))
    plan.empty = [name for name in SPLITS if fractions[name] > 0 and not plan.splits[name]]
    return plan


def assign_splits(
    conversations: list[Conversation], recipe: SplitRecipe
) -> tuple[dict[str, list[Conversation]], list[Conversation]]:
    """Conversations per split (input order kept) and those a speaker-independent split drops."""
    plan = plan_splits(conversations, recipe)
    return plan.splits, plan.dropped
