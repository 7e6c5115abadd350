"""The default grain extractor: offline, pure-Python rules over the built-in vocabularies.

Conventions (what :class:`LexiconExtractor` emits, and what the hand-labelled gold set follows)
-------------------------------------------------------------------------------------------------
Text is split into word tokens (letters/digits; hyphens and punctuation separate tokens, but a
phrase never spans a comma, full stop, semicolon, colon or parenthesis). Matching is
case-insensitive and longest-match-first across all vocabularies, so ``"fire hydrant"``,
``"hot dog"``, ``"teddy bear"``, ``"cell phone"`` are single entities (also when written
``"Fire-Hydrant"`` or in the plural ``"hot dogs"``). Every grain's ``text`` is the span *as written*
in the input (original case and hyphens).

* ``entity`` — a concrete thing: person, animal, object, vehicle, food, furniture, clothing, body
  part (:data:`~mrbench.grains.vocab.ENTITY_NOUNS`). Text: the noun (or compound noun) as written,
  plural kept (``"dogs"``); key ``"entity:<singular lemma>"`` (``"entity:dog"``, ``"entity:person"``
  for ``"people"``). After a determiner or adjective, an unknown word that heads a noun phrase is
  also taken as an entity (``"a pier"``). Collective / framing nouns followed by *of*
  (``"a group of"``, ``"a picture of"``, ``"a slice of"``) are not grains; containers
  (``"a plate of food"``) are.
* ``attribute`` — an adjective or count: colour, size, material, shape/pattern, age, condition,
  and counts (number words, digits, ``several``/``many``/``multiple``/``few``). Text: the word as
  written (``"two"``, ``"2"``, ``"brown"``); key ``"attribute:<lowercase>"``, with number words
  written as digits (``"two"`` → ``"attribute:2"``). A word that is both a colour/material and a noun
  (``orange``, ``glass``, ``baby``) is an attribute when an adjective or noun follows it, else an entity.
* ``action_or_state`` — a verb form (``"standing"``, ``"rides"``, ``"curled up"``) or a state
  (``"open"``, ``"closed"``, ``"parked"``, ``"asleep"``, ``"covered"``). Text as written; key
  ``"action_or_state:<lowercase>"``. Unknown words ending in *-ing* (not known nouns such as
  *building*) are guessed as actions. The direct object of a verb is an entity, not a relation.
* ``relation`` — a spatial / relational preposition (:data:`~mrbench.grains.vocab.RELATION_PREPOSITIONS`,
  incl. ``with`` and ``in`` as in "a man in a red shirt") followed by a noun phrase whose head is an
  entity. Text: from the preposition to the head noun of its (first) object, inclusive
  (``"next to a bench"``, ``"on a wooden table"``); key ``"relation:<preposition>|<head lemma>"``
  (``"relation:next to|bench"``). The object's own grains (entity, attributes) are emitted as well.
  When the object is a scene (``"on the beach"``, ``"in a kitchen"``) only the scene grain is emitted.
* ``scene`` — a place or setting, incl. time of day and weather (``beach``, ``kitchen``, ``street``,
  ``field``, ``snow``, ``night``). Text: the noun as written; key ``"scene:<singular lemma>"``. A scene
  word is never an entity, also when it modifies a noun (``"beach umbrella"`` → scene + entity).

Negation: ``without``, ``no``, ``none`` negate the noun phrase that follows them (plus further noun
phrases joined by *or* / *nor*); ``not`` / ``never`` / ``…n't`` negate the next word and, when that is
a verb or adjective, the noun phrase after it. **Negated spans yield no grains at all** (no entity,
attribute or relation): ``"a man without a hat"`` gives only ``entity:man``; ``"a street with no
cars"`` gives only ``scene:street``. Edit instructions (CIRR-style) negate what they take away:
an imperative removal verb (base form at the start of a clause, after an optional ``please`` …, or
after *and* / *but* in a clause that an edit verb starts, :data:`~mrbench.grains.vocab.EDIT_VERBS`;
:data:`~mrbench.grains.vocab.REMOVAL_VERBS`) negates its object noun phrases (joined by *and* / *or*,
unless the next one is the subject of a new clause): ``"remove the kite and add a dog"`` and
``"remove the kite and the dog is sitting"`` keep the dog only. An imperative substitution
``V X <linker> Y`` (:data:`~mrbench.grains.vocab.SUBSTITUTION_VERBS`) whose ``Y`` is a noun phrase
negates ``X`` and the linker, so the linker is no relation: ``"replace the cat with a dog"`` gives
only ``entity:dog``; ``"change the shirt to blue"`` and ``"change the color of the dog to black"``
are left as they are. ``instead of`` / ``rather than`` negate the phrase that follows (a noun
phrase, else its determiners, adjectives and counts, or one word): ``"two dogs instead of one"``
gives ``attribute:2``, ``entity:dog``. A removed or contrasted object's relation goes with it
(``"remove the man on the bench"`` gives ``entity:bench``). A possessor is never negated, only what
it owns: ``"remove the dog's collar"`` gives ``entity:dog``. Verbs in other forms, or after *and* in
a description, negate nothing (``"a man removing a tire"``, ``"two men stand on a ladder and remove
the sign"``). Known limit: a caption that starts with a noun spelled like an edit verb reads as an
instruction (``"Delete key on a keyboard"`` loses ``key``).

Deduplication: within one text a grain is emitted once per ``(type, key)``; the first occurrence
wins. Grains are returned in order of appearance (relations at their preposition).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mrbench.data.schema import (
    ACTION_OR_STATE,
    ATTRIBUTE,
    ENTITY,
    RELATION,
    SCENE,
    Grain,
)
from mrbench.grains import vocab as V

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)?")
_BOUNDARY = re.compile(r"[,.;:!?()\[\]\"]")

_ADJECTIVES: frozenset[str] = (
    V.COLORS | V.SIZES | V.MATERIALS | V.SHAPES_PATTERNS | V.OTHER_ADJECTIVES | V.COUNT_WORDS
)
_NOUN_TABLE: dict[tuple[str, ...], str] = {
    **{tuple(w.split()): ENTITY for w in V.ENTITY_NOUNS},
    **{tuple(w.replace("-", " ").split()): ENTITY for w in V.ENTITY_NOUNS if "-" in w},
    **{tuple(w.split()): SCENE for w in V.SCENE_NOUNS},
}
_ADJ_TABLE: frozenset[tuple[str, ...]] = frozenset(tuple(w.split()) for w in _ADJECTIVES)
_ACT_TABLE: frozenset[tuple[str, ...]] = frozenset(tuple(w.split()) for w in V.ACTIONS_STATES)
_PREP_TABLE: frozenset[tuple[str, ...]] = frozenset(tuple(w.split()) for w in V.RELATION_PREPOSITIONS)
_COLL_TABLE: frozenset[tuple[str, ...]] = frozenset(
    tuple(w.replace("-", " ").split()) for w in V.COLLECTIVE_NOUNS
)
_REMOVAL_TABLE: frozenset[tuple[str, ...]] = frozenset(tuple(w.split()) for w in V.REMOVAL_VERBS)
_CONTRAST_TABLE: frozenset[tuple[str, ...]] = frozenset(tuple(w.split()) for w in V.CONTRAST_MARKERS)
_MAXLEN = 6
_SINGLE_PREPS: frozenset[str] = frozenset(p for p in V.RELATION_PREPOSITIONS if " " not in p)
_PREP_WORDS: frozenset[str] = frozenset(w for p in V.RELATION_PREPOSITIONS for w in p.split())


@dataclass(frozen=True)
class _Tok:
    low: str
    start: int
    end: int
    boundary_before: bool
    possessive: bool = False  # written with "'s" (stripped from ``low``)


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    prev_end = 0
    for m in _TOKEN.finditer(text):
        low = m.group(0).lower().replace("\u2019", "'")
        poss = low.endswith("'s")
        if poss:
            low = low[:-2]
        gap = text[prev_end:m.start()]
        toks.append(_Tok(low, m.start(), m.end(), bool(_BOUNDARY.search(gap)) or not toks, poss))
        prev_end = m.end()
    return toks


def singular_candidates(word: str) -> list[str]:
    """Possible singular forms of ``word`` (lowercase), most likely first; ``word`` itself is last."""
    return list(_singular_candidates(word))


@functools.lru_cache(maxsize=1 << 16)
def _singular_candidates(word: str) -> tuple[str, ...]:
    """:func:`singular_candidates`, kept per word (the parser asks again and again)."""
    w = word.lower()
    out: list[str] = []
    if w in V.IRREGULAR_PLURALS:
        out.append(V.IRREGULAR_PLURALS[w])
    if len(w) > 3 and w.endswith("ies"):
        out.append(w[:-3] + "y")
    if len(w) > 3 and w.endswith("ves"):
        out += [w[:-3] + "f", w[:-3] + "fe"]
    if len(w) > 3 and w.endswith(("ches", "shes", "xes", "sses", "zes")):
        out.append(w[:-2])
    if len(w) > 2 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        out.append(w[:-1])
    if len(w) > 3 and w.endswith("es"):
        out.append(w[:-2])
    out.append(w)
    return tuple(dict.fromkeys(out))


def singularize(word: str) -> str:
    """Best-guess singular of a (lowercase) noun, checked against the built-in vocabularies."""
    cands = singular_candidates(word)
    for c in cands:
        if (c,) in _NOUN_TABLE:
            return c
    return cands[0]


class LexiconExtractor:
    """Rule-based grain extractor over :mod:`mrbench.grains.vocab` (see the module docstring for
    what counts as each grain type, the text spans, negation and deduplication)."""

    name: str = "lexicon"

    def extract(self, texts: Sequence[str]) -> list[list[Grain]]:
        """Return one list of grains per text, in order of appearance; ``""`` gives ``[]``."""
        if isinstance(texts, str):
            raise TypeError("extract() takes a sequence of texts, not a single string")
        return [self.extract_one(t) for t in texts]

    def extract_one(self, text: str) -> list[Grain]:
        """Grains of one text (see :meth:`extract`)."""
        toks = _tokenize(text or "")
        if not toks:
            return []
        return _Parser(text, toks).run()


class _Parser:
    def __init__(self, text: str, toks: list[_Tok]) -> None:
        self.text = text
        self.t = toks
        self.n = n = len(toks)
        self.negated = [False] * n
        self.low = [x.low for x in toks]
        # reach[i]: end of the span from i that crosses no boundary (the first later token with a
        # boundary before it, else n); a span [i, j) is usable iff j <= reach[i]
        self.reach = reach = [n] * n
        for i in range(n - 2, -1, -1):
            reach[i] = i + 1 if toks[i + 1].boundary_before else reach[i + 1]
        # the parse asks for the same positions many times: answers kept per position (and table)
        self._nouns: dict[int, tuple[int, str, str] | None] = {}
        self._matches: dict[tuple[int, int], int] = {}

    # ---------------------------------------------------------------- matching helpers
    def _match(self, i: int, table: frozenset[tuple[str, ...]]) -> int:
        """Length of the longest entry of ``table`` starting at ``i`` (0 if none)."""
        key = (i, id(table))
        got = self._matches.get(key)
        if got is None:
            got = 0
            if i < self.n:
                low = self.low
                for L in range(min(_MAXLEN, self.reach[i] - i), 0, -1):
                    if tuple(low[i:i + L]) in table:
                        got = L
                        break
            self._matches[key] = got
        return got

    def _noun(self, i: int) -> tuple[int, str, str] | None:
        """Longest noun at ``i``: (length, lemma, ENTITY|SCENE); the last word may be plural."""
        if i >= self.n:
            return None
        if i in self._nouns:
            return self._nouns[i]
        found = None
        for L in range(min(_MAXLEN, self.reach[i] - i), 0, -1):
            words = self.low[i:i + L]
            for last in _singular_candidates(words[-1]):
                key = tuple(words[:-1] + [last])
                if key in _NOUN_TABLE:
                    found = L, " ".join(key), _NOUN_TABLE[key]
                    break
            if found is not None:
                break
        self._nouns[i] = found
        return found

    def _adj(self, i: int) -> int:
        if i >= self.n:
            return 0
        if self.t[i].low.isdigit():
            return 1
        return self._match(i, _ADJ_TABLE)

    def _starts_np_word(self, i: int) -> bool:
        """Is token ``i`` (no boundary before it) an adjective or a noun?"""
        if i >= self.n or self.t[i].boundary_before:
            return False
        return bool(self._noun(i)) or self._adj(i) > 0

    def _is_adj_here(self, i: int) -> int:
        """Attribute length at ``i`` after resolving adjective/noun ambiguity (0 if not an attribute)."""
        a = self._adj(i)
        if not a:
            return 0
        nn = self._noun(i)
        if nn is None or nn[0] < a:
            return a
        if nn[0] > a:
            return 0
        return a if self._starts_np_word(i + a) else 0

    def _unknown_noun_ok(self, i: int) -> bool:
        if i >= self.n:
            return False
        w = self.t[i].low
        return (
            w.isalpha() and len(w) >= 3 and w not in V.FUNCTION_WORDS and w not in V.NEGATORS
            and w not in V.DETERMINERS and w not in V.INTENSIFIERS and w not in _PREP_WORDS
            and not w.endswith("ly")
            and not w.endswith("ing") and (w,) not in _ACT_TABLE and (w,) not in _ADJ_TABLE
        )

    def _np(self, i: int, allow_unknown: bool) -> tuple[int, int, str, str] | None:
        """Parse a noun phrase at ``i``: (head_start, head_end, head_lemma, kind) or None."""
        j = i
        saw_mod = False
        while j < self.n and (j == i or not self.t[j].boundary_before):
            w = self.t[j].low
            if w in V.DETERMINERS or w in V.INTENSIFIERS and not self._noun(j):
                j += 1
                saw_mod = True
                continue
            a = self._is_adj_here(j)
            if a:
                j += a
                saw_mod = True
                continue
            c = self._match(j, _COLL_TABLE)
            if c and w not in V.CONTAINER_NOUNS and j + c < self.n and self.t[j + c].low == "of":
                j += c + 1  # "on a pile of clothes": the head is after "of"
                saw_mod = True
                continue
            act = self._match(j, _ACT_TABLE)
            if act and not self._noun(j) and self._starts_np_word(j + act):
                j += act  # "a parked car"
                saw_mod = True
                continue
            break
        if j >= self.n or (j > i and self.t[j].boundary_before):
            return None
        nn = self._noun(j)
        if nn is not None:
            start, end, lemma, kind = j, j + nn[0], nn[1], nn[2]
            # noun-noun compounds: the last noun is the head ("dog bed", "pizza box")
            while end < self.n and not self.t[end].boundary_before:
                nxt = self._noun(end)
                if nxt is None or (end + nxt[0] < self.n and self.t[end + nxt[0]].low == "of"):
                    break
                start, end, lemma, kind = end, end + nxt[0], nxt[1], nxt[2]
            return start, end, lemma, kind
        if (allow_unknown or saw_mod) and self._unknown_noun_ok(j):
            if j + 1 < self.n and self.t[j + 1].low == "of":
                return None
            if j + 1 < self.n and not self.t[j + 1].boundary_before and self._noun(j + 1):
                return self._np(j + 1, allow_unknown=False)  # "home plate": unknown modifier
            return j, j + 1, singularize(self.t[j].low), ENTITY
        return None

    # ---------------------------------------------------------------- negation
    def _mark(self, i: int, j: int) -> None:
        for k in range(i, min(j, self.n)):
            self.negated[k] = True

    def _negate_np(self, i: int) -> int:
        end = i
        while True:
            np_ = self._np(end, allow_unknown=True)
            if np_ is None:
                return end
            # a possessor keeps its grains: "remove the dog's (red) collar" negates the collar only
            h = np_[1]
            if (self.t[h - 1].possessive and h < self.n and not self.t[h].boundary_before
                    and self._np(h, allow_unknown=True) is not None):
                end = h
                continue
            first = max([k + 1 for k in range(end, np_[0]) if self.t[k].possessive], default=end)
            self._mark(first, np_[1])
            end = np_[1]
            if end < self.n and self.t[end].low in ("or", "nor") and not self.t[end].boundary_before:
                self._mark(end, end + 1)
                end += 1
                continue
            return end

    def _clause_initial(self, i: int) -> bool:
        """Does token ``i`` start a clause (text start or after punctuation), possibly after
        :data:`~mrbench.grains.vocab.IMPERATIVE_LEADS`, or follow *and* / *but* in a clause that an
        edit verb starts (:data:`~mrbench.grains.vocab.EDIT_VERBS`: "make the dog brown and remove
        the cat"; "two men stand on a ladder and remove the sign" is a description)?"""
        k = i
        while not self.t[k].boundary_before:
            prev = self.low[k - 1]
            if prev in ("and", "but"):
                c = k - 1
                while not self.t[c].boundary_before:
                    c -= 1
                while c < k - 1 and self.low[c] in V.IMPERATIVE_LEADS:
                    c += 1
                return self.low[c] in V.EDIT_VERBS
            if prev not in V.IMPERATIVE_LEADS:
                return False
            k -= 1
        return True

    def _clause_follows(self, j: int) -> bool:
        """Is the noun phrase ending at ``j`` the subject of a new clause: within the next few words
        of its clause (before *and* / *or* / *but*), a verb or a :data:`~mrbench.grains.vocab.CLAUSE_CUES`
        word ("... and the man on the left stays")?"""
        for k in range(j, min(self.n, j + 6)):
            if (k > j and self.t[k].boundary_before) or self.low[k] in ("and", "or", "nor", "but"):
                return False
            if self.low[k] in V.CLAUSE_CUES or self._match(k, _ACT_TABLE) > 0:
                return True
        return False

    def _drop_relation_after(self, end: int) -> None:
        """A relation right after a negated object was that object's ("remove the man on the bench":
        the bench stays, the relation goes): negate its preposition only."""
        p = self._match(end, _PREP_TABLE)
        if p and not self.t[end].boundary_before and self._np(end + p, allow_unknown=True) is not None:
            self._mark(end, end + p)

    def _np_start(self, i: int) -> bool:
        """Can a noun phrase start at ``i`` (a determiner, count, adjective or known noun), within
        the clause?"""
        return (i < self.n and not self.t[i].boundary_before
                and (self.low[i] in V.DETERMINERS or self._adj(i) > 0 or self._noun(i) is not None))

    def _negate_objects(self, i: int) -> None:
        """Negate the phrases from ``i`` joined by *and* / *or* / *nor* (a removal's objects; see
        :meth:`_negate_phrase`)."""
        end = self._negate_phrase(i, any_word=False)
        while (end > i and end + 1 < self.n and self.low[end] in ("and", "or", "nor")
               and not self.t[end].boundary_before and self._np_start(end + 1)):
            np_ = self._np(end + 1, allow_unknown=True)
            if np_ is not None and self._clause_follows(np_[1]):
                break  # "remove the kite and the dog is sitting": a new clause, not a second object
            self._mark(end, end + 1)
            i, end = end + 1, self._negate_phrase(end + 1, any_word=False)
        if end > i:
            self._drop_relation_after(end)

    def _negate_phrase(self, j: int, any_word: bool = True) -> int:
        """Negate the phrase at ``j``: a noun phrase, else its determiners, adjectives and counts
        (``"a blue one"``, ``"the concrete"``), else (with ``any_word``) one word: an action, an
        adjective or any word. Returns the end of what was negated (``j`` if nothing)."""
        if j >= self.n or self.t[j].boundary_before:
            return j
        end = self._negate_np(j)
        if end > j:
            return end
        k = j
        while k < self.n and (k == j or not self.t[k].boundary_before):
            w = self.low[k]
            step = 1 if w in V.DETERMINERS or w in ("one", "ones") else self._adj(k)
            if not step:
                break
            k += step
        only_dets = all(w in V.DETERMINERS for w in self.low[j:k])
        if (k == j and any_word) or (k > j and only_dets and k < self.n and not self.t[k].boundary_before):
            k += max(self._match(k, _ACT_TABLE), 1)  # "the rest": a determiner's word is its head
        self._mark(j, k)
        return k

    def _mark_edits(self) -> None:
        """Negations of edit instructions and contrasts (see the module docstring)."""
        low = self.low
        for i in range(self.n):
            c = self._match(i, _CONTRAST_TABLE)
            if c:
                self._mark(i, i + c)
                end = self._negate_phrase(i + c)
                if end > i + c:
                    self._drop_relation_after(end)
                continue
            r = self._match(i, _REMOVAL_TABLE)
            if r and self._clause_initial(i) and self._np_start(i + r):
                self._mark(i, i + r)
                self._negate_objects(i + r)
                continue
            linkers = V.SUBSTITUTION_VERBS.get(low[i])
            if linkers and self._clause_initial(i):
                np_ = self._np(i + 1, allow_unknown=True)
                end = np_[1] if np_ is not None else 0
                # only when a noun phrase replaces X: "change the shirt to blue" keeps the shirt
                if (np_ is not None and end < self.n and low[end] in linkers
                        and not self.t[end].boundary_before and i + 1 < self.n and not self.t[i + 1].boundary_before
                        and end + 1 < self.n and not self.t[end + 1].boundary_before
                        and self._np(end + 1, allow_unknown=True) is not None):
                    self._mark(i, end + 1)

    def _mark_negations(self) -> None:
        self._mark_edits()
        for i, tok in enumerate(self.t):
            w = tok.low
            if w in ("without", "no", "none", "nobody", "nothing"):
                self._mark(i, i + 1)
                self._negate_np(i + 1)
            elif w in ("not", "never") or w.endswith("n't"):
                self._mark(i, i + 1)
                j = i + 1
                if j >= self.n:
                    continue
                if self.t[j].low in V.DETERMINERS:
                    self._negate_np(j)
                    continue
                L = max(self._match(j, _ACT_TABLE), self._adj(j), 1)
                self._mark(j, j + L)
                if self._np(j + L, allow_unknown=False) is not None:
                    self._negate_np(j + L)

    # ---------------------------------------------------------------- main pass
    def run(self) -> list[Grain]:
        self._mark_negations()
        out: list[Grain] = []
        seen: set[tuple[str, str]] = set()

        def emit(i: int, j: int, typ: str, key: str) -> None:
            if (typ, key) in seen:
                return
            seen.add((typ, key))
            out.append(Grain(text=self.text[self.t[i].start:self.t[j - 1].end], type=typ, key=key))

        i = 0
        while i < self.n:
            if self.negated[i]:
                i += 1
                continue
            w = self.t[i].low
            # collective / framing noun + "of": no grain (containers are entities)
            c = self._match(i, _COLL_TABLE)
            if c and i + c < self.n and self.t[i + c].low == "of" and w not in V.CONTAINER_NOUNS:
                i += c + 1
                continue
            p = self._match(i, _PREP_TABLE)
            nn = self._noun(i)
            a = self._is_adj_here(i)
            act = self._match(i, _ACT_TABLE)
            nlen = nn[0] if nn else 0
            if p and p >= max(nlen, a, act):
                np_ = self._np(i + p, allow_unknown=True)
                if np_ is not None and np_[3] == ENTITY and not any(self.negated[i:np_[1]]):
                    prep = " ".join(x.low for x in self.t[i:i + p])
                    emit(i, np_[1], RELATION, f"relation:{prep}|{np_[2]}")
                i += p
                continue
            if a and a >= nlen and a >= act:
                if w in V.NUMBER_WORDS and (i + 1 >= self.n or self.t[i + 1].low == "of"
                                            or self.t[i + 1].boundary_before):
                    i += 1
                    continue
                words = " ".join(x.low for x in self.t[i:i + a])
                emit(i, i + a, ATTRIBUTE, f"attribute:{V.NUMBER_WORDS.get(words, words)}")
                i += a
                continue
            if act and act > nlen and act >= a:
                emit(i, i + act, ACTION_OR_STATE, f"action_or_state:{' '.join(x.low for x in self.t[i:i + act])}")
                i += act
                continue
            if nn and nlen >= a:
                if act == nlen and i > 0 and self._noun(i - 1) and not self.t[i].boundary_before:
                    # "a man skis", "a woman painting": a verb after its subject noun
                    emit(i, i + act, ACTION_OR_STATE, f"action_or_state:{w}")
                    i += act
                    continue
                emit(i, i + nlen, nn[2], f"{nn[2]}:{nn[1]}")
                i += nlen
                continue
            if (len(w) >= 5 and w.endswith("ing") and w not in V.NOUN_ING_WORDS
                    and not (i > 0 and self.t[i - 1].low in V.DETERMINERS)):
                emit(i, i + 1, ACTION_OR_STATE, f"action_or_state:{w}")
                i += 1
                continue
            prev = self.t[i - 1].low if i > 0 else ""
            if (i > 0 and not self.t[i].boundary_before and self._unknown_noun_ok(i)
                    and (prev in V.DETERMINERS or prev in _SINGLE_PREPS or self._adj(i - 1))
                    and not self._starts_np_word(i + 1)
                    and not (i + 1 < self.n and self.t[i + 1].low == "of")):
                emit(i, i + 1, ENTITY, f"entity:{singularize(w)}")
            i += 1
        return out
