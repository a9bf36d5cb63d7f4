"""The benchmark workload: 64 documents of 200-800 tokens behind one ~300-token instruction.

Deterministic (seeded), so every run and every method sees the same inputs.
"""

from __future__ import annotations

import random

INSTRUCTION = """You are reading internal reports from a regional logistics company. Each report
below was written by a site manager at the end of a quarter. Your task is to write a short,
factual summary of the report for the executive team. The executive team reads dozens of these
summaries every quarter, so the summary must be brief and must only contain facts stated in
the report. Do not speculate and do not add recommendations of your own. Mention the site, the
most important numbers (volumes, costs, incidents, staffing), any problem the manager reports,
and any decision that was taken or requested. Use plain language, short sentences and no
marketing words. If the report mentions dates, keep them. If the report mentions people, keep
their names and roles. If something in the report is unclear, say that it is unclear instead of
guessing. Write the summary as a markdown bullet list with at most six bullets, each bullet a
single sentence. Start each bullet with a dash and a space. After the list, write one line that
starts with "Overall:" and gives a one-sentence assessment of the quarter in neutral words.
Here is an example of the expected style of a bullet: "- Parcel volume rose 12% to 48,000 while
overtime costs stayed flat." Keep the numbers exactly as they appear in the report, including
units and currencies. Now read the report carefully and write the summary.

### Report

"""

SUFFIX = "\n\n### Summary\n\n-"

_SITES = [
    "Aberdeen",
    "Bremen",
    "Cork",
    "Dortmund",
    "Eindhoven",
    "Faro",
    "Graz",
    "Hull",
    "Innsbruck",
    "Jena",
    "Kassel",
    "Lille",
    "Malmo",
    "Nantes",
    "Oulu",
    "Porto",
]
_PEOPLE = [
    "Anna Weber",
    "Luis Ortega",
    "Mia Jensen",
    "Tom Okafor",
    "Sara Lind",
    "Piotr Nowak",
    "Chloe Martin",
    "Ravi Shah",
    "Eva Novak",
    "Jon Berg",
]
_TOPICS = [
    "Parcel volume reached {n},{m:03d} units, {p}% {dir} than the previous quarter.",
    "Overtime costs were {c},{m:03d} euros, mostly in the weeks before the holidays.",
    "The site recorded {k} safety incidents, {k2} of them minor cuts in the sorting area.",
    "Staffing stood at {s} full-time employees and {t} temporary workers.",
    "{person}, the {role}, reported that the conveyor in hall {h} failed {k} times.",
    "Fuel costs rose by {p}% because the new routes to the coast are longer.",
    "A customer audit on {day} March found {k} minor issues with the labelling process.",
    "The new scanner system went live on {day} February after a delay of {k} weeks.",
    "Two trucks were out of service for {k} days while waiting for spare parts.",
    "Returns processing took {k} days on average, against a target of {k2} days.",
    "{person} asked for approval to hire {k} more pickers for the summer peak.",
    "Energy use in the cold store fell by {p}% after the doors were replaced.",
    "The team completed {k} training sessions on the new handling rules.",
    "Late deliveries made up {p}% of all deliveries, mostly on Mondays.",
]
_ROLES = ["shift lead", "site manager", "maintenance lead", "safety officer", "planner"]


def _sentence(rng: random.Random) -> str:
    return rng.choice(_TOPICS).format(
        n=rng.randint(10, 99),
        m=rng.randint(0, 999),
        p=rng.randint(2, 30),
        dir=rng.choice(["higher", "lower"]),
        c=rng.randint(5, 90),
        k=rng.randint(2, 9),
        k2=rng.randint(1, 4),
        s=rng.randint(20, 300),
        t=rng.randint(2, 60),
        person=rng.choice(_PEOPLE),
        role=rng.choice(_ROLES),
        h=rng.randint(1, 6),
        day=rng.randint(1, 28),
    )


def documents(count: int = 64, seed: int = 7) -> list[str]:
    """`count` reports whose lengths spread over about 200-800 tokens."""
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        site = _SITES[i % len(_SITES)]
        # about 19 tokens a sentence: 10-41 sentences is 200-800 tokens
        n_sentences = 10 + (i * 37) % 32
        paragraphs: list[str] = []
        sentences = [_sentence(rng) for _ in range(n_sentences)]
        for start in range(0, len(sentences), 4):
            paragraphs.append(" ".join(sentences[start : start + 4]))
        docs.append(
            f"Quarterly report, site {site}, Q{1 + i % 4} 2026.\n\n" + "\n\n".join(paragraphs)
        )
    return docs


def prompt(document: str) -> str:
    """The full prompt for one document."""
    return INSTRUCTION + document + SUFFIX


# The second workload: held-out incident reports, longer (about 500-1,100 tokens), behind
# another instruction, with short answers (at most SHORT_MAX_TOKENS). Another seed and
# other sentences, so a change tuned on the summaries shows.
INCIDENT_INSTRUCTION = """The texts below are incident reports filed by the operations staff
of a water utility. Each report describes one incident: what happened, where, when, who
responded, what was damaged, what it cost and what was done. Read the report and answer in
one or two short sentences: name the site, the date and the main cause of the incident, and
give the cost if the report states one. Copy names, dates and figures exactly as written.
Do not add anything that is not in the report.

### Incident report

"""

INCIDENT_SUFFIX = "\n\n### Answer\n\n"
SHORT_MAX_TOKENS = 48

_PLANTS = ["Northgate", "Riverside", "Ashford", "Kelby", "Marston", "Oakhill", "Pellow", "Quarry"]
_STAFF = ["Hana Sato", "Omar Haddad", "Lena Fischer", "Ben Carter", "Ines Duarte", "Karl Roth"]
_EVENTS = [
    "At {h}:{m:02d} on {day} {month}, pump {k} at the {plant} station tripped on overcurrent.",
    "{person}, the duty engineer, isolated the main between valves V{k} and V{k2}.",
    "The pressure in zone {k} dropped to {p}.{k2} bar for {k3} minutes.",
    "A contractor's excavator struck a {d} mm main on {street} Road.",
    "About {n},{m:03d} litres of treated water were lost before the repair.",
    "Repair costs were estimated at {c},{m:03d} pounds, excluding overtime.",
    "Customers in {k} streets were supplied from tankers for {k3} hours.",
    "The telemetry alarm at the {plant} reservoir did not fire, and the cause is unknown.",
    "Chlorine residual at the outlet fell to 0.{k}{k2} mg/l and was restored within {k3} hours.",
    "{person} notified the regulator at {h}:{m:02d} as the permit requires.",
    "Root cause: corrosion of a {d} mm cast iron pipe laid in {year}.",
    "The standby generator at {plant} failed to start, and a spare unit was brought in.",
    "{k} staff worked overnight, and {person} led the clean-up on {day} {month}.",
]
_MONTHS = ["January", "February", "March", "April", "May", "June", "September", "October"]
_STREETS = ["Mill", "Station", "Church", "Bridge", "Harbour", "Forest"]


def _event(rng: random.Random) -> str:
    return rng.choice(_EVENTS).format(
        h=rng.randint(0, 23),
        m=rng.randint(0, 59),
        day=rng.randint(1, 28),
        month=rng.choice(_MONTHS),
        k=rng.randint(2, 9),
        k2=rng.randint(1, 9),
        k3=rng.randint(2, 30),
        p=rng.randint(0, 3),
        plant=rng.choice(_PLANTS),
        person=rng.choice(_STAFF),
        d=rng.choice([100, 150, 225, 300, 450]),
        street=rng.choice(_STREETS),
        n=rng.randint(10, 900),
        c=rng.randint(2, 80),
        year=rng.randint(1920, 1975),
    )


def incident_documents(count: int = 32, seed: int = 2027) -> list[str]:
    """`count` incident reports of about 500-1,100 tokens (the second workload)."""
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        n_sentences = 24 + (i * 29) % 30  # about 20 tokens a sentence
        sentences = [_event(rng) for _ in range(n_sentences)]
        paragraphs = [" ".join(sentences[s : s + 5]) for s in range(0, len(sentences), 5)]
        plant = _PLANTS[i % len(_PLANTS)]
        docs.append(f"Incident {1000 + i}, {plant} network.\n\n" + "\n\n".join(paragraphs))
    return docs


def incident_prompt(document: str) -> str:
    """The full prompt for one incident report (the second workload)."""
    return INCIDENT_INSTRUCTION + document + INCIDENT_SUFFIX
