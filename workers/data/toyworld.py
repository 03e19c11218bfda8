"""toyworld: a deterministic fictional world for multi-hop questions, generated offline.

Runs in ``launch.prepare_data`` (data=toyworld). Every name is invented from syllables, so
no answer can be known without retrieving the world's paragraphs; relations are drawn
uniformly, so no answer can be guessed from the question either. About a third of the
people have a look-alike (a confusable name, different facts) to punish sloppy queries.
Questions of 2-4 hops are written in MuSiQue format (decomposition with ``#k``
references, supporting paragraph indices) and go through the MuSiQue converter; the
split is by the entity a question starts from, so test questions start elsewhere.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.config import ToyWorldConfig
from workers.data.corpus import Passage, make_passage
from workers.data.sources import hash_split

_ONSETS = "b c d f g h j k l m n p r s t v z br dr gr kr pl st tr th sh ch".split()
_VOWELS = "a e i o u ai ei ou ia".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "x"]


@dataclass
class Entity:
    """One thing in the world; ``facts`` maps a relation name to another entity's name."""

    kind: str
    name: str
    facts: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Relation:
    """A functional relation: subject kind -> object kind, with its phrasings."""

    name: str
    subject: str
    object: str
    question: str
    """Decomposition question about ``{x}``."""
    phrase: str
    """Noun phrase for nesting: the object described from ``{x}``."""


RELATIONS: tuple[Relation, ...] = (
    Relation("director", "film", "person", "Who directed {x}?", "the director of {x}"),
    Relation("producer", "film", "company", "Which company produced {x}?", "the company that produced {x}"),
    Relation("birthplace", "person", "city", "Where was {x} born?", "the birthplace of {x}"),
    Relation("alma_mater", "person", "university", "Which university did {x} attend?", "the university {x} attended"),
    Relation("employer", "person", "company", "Which company did {x} work for?", "the employer of {x}"),
    Relation("founder", "company", "person", "Who founded {x}?", "the founder of {x}"),
    Relation("headquarters", "company", "city", "Where is {x} headquartered?", "the city where {x} is headquartered"),
    Relation("location", "university", "city", "In which city is {x}?", "the city of {x}"),
    Relation("country", "city", "country", "Which country is {x} in?", "the country of {x}"),
    Relation("capital", "country", "city", "What is the capital of {x}?", "the capital of {x}"),
    Relation("currency", "country", "currency", "What is the currency of {x}?", "the currency of {x}"),
)
_BY_SUBJECT: dict[str, list[Relation]] = {}
for _rel in RELATIONS:
    _BY_SUBJECT.setdefault(_rel.subject, []).append(_rel)

_QUESTION_OPENERS = ("What is {np}?", "Name {np}.", "Can you tell me {np}?")


class NameMaker:
    """Unique invented names: ``syllables`` syllables each, capitalised."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int) -> str:
        parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables)]
        return ("".join(parts) + self.rng.choice(_CODAS)).capitalize()

    def unique(self, make: Callable[[], str]) -> str:
        for _ in range(1000):
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name
        raise RuntimeError("the name generator ran out of names; lower the world's sizes")


FRAME_WORDS = frozenset(("The", "University", "Group", "Works", "Labs", "Holdings"))
"""Words of generated names that are not invented (``The X``, ``X University``, ``X Labs``)."""


def _paragraph(entity: Entity) -> str:
    f, n = entity.facts, entity.name
    if entity.kind == "country":
        return (f"{n} is a country whose capital is {f['capital']}. The currency of {n} is the "
                f"{f['currency']}.")
    if entity.kind == "city":
        return f"{n} is a city in {f['country']}, with about {entity.extra['population']} residents."
    if entity.kind == "university":
        return f"{n} is a university in the city of {f['location']}, founded in {entity.extra['year']}."
    if entity.kind == "company":
        return (f"{n} is a {entity.extra['industry']} company headquartered in {f['headquarters']}. "
                f"It was founded by {f['founder']}.")
    if entity.kind == "person":
        job = entity.extra["job"]
        article = "an" if job[0] in "aeiou" else "a"
        return (f"{n} is {article} {job} born in {f['birthplace']}. {n} studied at "
                f"{f['alma_mater']} and later worked for {f['employer']}.")
    if entity.kind == "film":
        return (f"{n} is a {entity.extra['year']} {entity.extra['genre']} film directed by "
                f"{f['director']} and produced by {f['producer']}.")
    raise ValueError(f"no paragraph for kind {entity.kind}")


class World:
    """The generated entities, their paragraphs, and question records."""

    def __init__(self, cfg: ToyWorldConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.names = NameMaker(self.rng)
        self.entities: dict[str, Entity] = {}
        self.by_kind: dict[str, list[Entity]] = {}
        self.lookalikes: dict[str, str] = {}
        self._build()
        self.passages: dict[str, Passage] = {
            name: make_passage(name, _paragraph(e)) for name, e in self.entities.items()}

    def _add(self, kind: str, name: str, **extra: Any) -> Entity:
        entity = Entity(kind, name, extra=extra)
        self.entities[name] = entity
        self.by_kind.setdefault(kind, []).append(entity)
        return entity

    def _pick(self, kind: str) -> str:
        return self.rng.choice(self.by_kind[kind]).name

    def _build(self) -> None:
        cfg, rng, nm = self.cfg, self.rng, self.names
        for _ in range(cfg.num_countries):
            self._add("country", nm.unique(lambda: nm.word(rng.choice((2, 3)))))
        for _ in range(cfg.num_cities):
            city = self._add("city", nm.unique(lambda: nm.word(rng.choice((2, 3)))),
                             population=rng.randrange(20, 900) * 1000)
            city.facts["country"] = self._pick("country")
        for country in self.by_kind["country"]:
            in_country = [c.name for c in self.by_kind["city"] if c.facts["country"] == country.name]
            country.facts["capital"] = rng.choice(in_country) if in_country else self._pick("city")
            country.facts["currency"] = nm.unique(lambda: nm.word(2).lower())
        for _ in range(cfg.num_universities):
            uni = self._add("university", nm.unique(lambda: f"{nm.word(3)} University"),
                            year=rng.randrange(1700, 2000))
            uni.facts["location"] = self._pick("city")
        suffixes = ("Group", "Works", "Labs", "Holdings")
        companies = [self._add("company", nm.unique(lambda: f"{nm.word(3)} {rng.choice(suffixes)}"),
                               industry=rng.choice(("shipping", "software", "textile", "mining", "food")))
                     for _ in range(cfg.num_companies)]
        for _ in range(cfg.num_people):
            self._person(nm.unique(lambda: f"{nm.word(2)} {nm.word(3)}"))
        self._lookalikes()
        for company in companies:
            company.facts["headquarters"] = self._pick("city")
            company.facts["founder"] = self._pick("person")
        for _ in range(cfg.num_films):
            film = self._add("film", nm.unique(lambda: f"The {nm.word(3)}"),
                             year=rng.randrange(1950, 2024),
                             genre=rng.choice(("drama", "comedy", "thriller", "documentary")))
            film.facts["director"] = self._pick("person")
            film.facts["producer"] = self._pick("company")

    def _person(self, name: str) -> Entity:
        person = self._add("person", name, job=self.rng.choice(("writer", "engineer", "painter", "lawyer", "chemist")))
        person.facts.update(birthplace=self._pick("city"), alma_mater=self._pick("university"),
                            employer=self._pick("company"))
        return person

    def _lookalikes(self) -> None:
        """Give some people a twin whose surname differs in one syllable."""
        people = list(self.by_kind["person"])
        for person in self.rng.sample(people, int(len(people) * self.cfg.lookalike_fraction)):
            first, last = person.name.split(" ", 1)
            stem = f"{first} {last[:-2]}"

            def variant(stem: str = stem) -> str:
                return stem + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)

            twin = self.names.unique(variant)
            self._person(twin)
            self.lookalikes[person.name] = twin

    def question(self, start: Entity, hops: int) -> dict[str, Any] | None:
        """A MuSiQue-format record following ``hops`` relations from ``start``, or None."""
        chain, node, seen = [], start, {start.name}
        for _ in range(hops):
            options = _BY_SUBJECT.get(node.kind, [])
            if not options:
                return None
            rel = self.rng.choice(options)
            value = node.facts[rel.name]
            if value in seen:
                return None
            chain.append((node, rel, value))
            seen.add(value)
            node = self.entities.get(value) or Entity("currency", value)
        return self._record(start, chain)

    def _record(self, start: Entity, chain: list[tuple[Entity, Relation, str]]) -> dict[str, Any]:
        np_ = start.name
        steps = []
        for i, (subject, rel, value) in enumerate(chain):
            np_ = rel.phrase.format(x=np_)
            x = subject.name if i == 0 else f"#{i}"
            steps.append({"id": i + 1, "question": rel.question.format(x=x), "answer": value,
                          "paragraph_support_idx": i})
        paragraphs = [self.passages[subject.name] for subject, _, _ in chain]
        distractors = [self.passages[self.lookalikes[s.name]] for s, _, _ in chain
                       if s.name in self.lookalikes]
        distractors += [self.passages[self.rng.choice(list(self.passages))] for _ in range(3)]
        paras = [{"idx": i, "title": p.title, "paragraph_text": p.text, "is_supporting": True}
                 for i, p in enumerate(paragraphs)]
        paras += [{"idx": len(paras) + j, "title": p.title, "paragraph_text": p.text,
                   "is_supporting": False} for j, p in enumerate(distractors)
                  if p not in paragraphs]
        question = self.rng.choice(_QUESTION_OPENERS).format(np=np_)
        question = question[0].upper() + question[1:]
        return {"question": question, "answer": chain[-1][2], "answer_aliases": [],
                "answerable": True, "paragraphs": paras, "question_decomposition": steps}


def generate(cfg: ToyWorldConfig) -> tuple[list[dict[str, Any]], list[Passage]]:
    """The world's MuSiQue-format question records (with ``split``) and all its passages."""
    world = World(cfg)
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    starts = [e for e in world.entities.values() if e.kind in ("film", "person", "company", "university")]
    attempts = 0
    while len(records) < cfg.num_questions and attempts < cfg.num_questions * 50:
        attempts += 1
        start = world.rng.choice(starts)
        record = world.question(start, world.rng.choice(cfg.hops))
        if record is None or record["question"] in seen:
            continue
        seen.add(record["question"])
        hops = len(record["question_decomposition"])
        record["id"] = f"toyworld-{hops}hop-{len(records):05d}"
        record["split"] = hash_split(f"{cfg.seed}:{start.name}", cfg.val_fraction, cfg.test_fraction)
        records.append(record)
    if len(records) < cfg.num_questions:
        raise RuntimeError(f"toyworld produced only {len(records)} of {cfg.num_questions} distinct "
                           "questions; enlarge the world or ask for fewer")
    return records, list(world.passages.values())
