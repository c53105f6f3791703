"""A generated, labelled retrieval test collection (no external data; every word is made here).

Fictional product manuals: each of ``products`` devices (an invented brand, a device type and a
model code such as ``KX-4127``) gets a Markdown manual with one ``##`` section per support topic,
and a set of generic buying-guide documents discusses the same topics with no product at all
(distractors that look topical to a dense model). Each section is one chunk at the default chunk
size, so a judged passage is ``(document_id, section heading)``.

Queries come in three kinds, so neither retriever wins everything on its own:

* ``code``: the model code plus topic words, often inflected ("KX-4127 resetting"): exact tokens
  favour BM25, and stemming matters.
* ``paraphrase``: brand and device type plus a rewording of the topic that shares few words with
  the passage ("my Orvane router keeps getting hot"): favours the dense model.
* ``mixed``: the code plus a paraphrase.

Generation is deterministic for a seed, so the collection is the same on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

BRANDS = (
    "Orvane", "Keltrix", "Brisa", "Zentara", "Movalt", "Quenor", "Tavrel", "Lunaris", "Dexmo",
    "Fyrell", "Caspen", "Ilvex", "Prowen", "Saldor", "Virel",
)  # fmt: skip
DEVICES = (
    "router", "thermostat", "label printer", "espresso machine", "e-bike", "camera drone",
    "projector", "smart lock", "air purifier", "network storage drive", "dashcam", "heat pump",
)  # fmt: skip


@dataclass(frozen=True)
class Topic:
    heading: str
    # Passage sentences; {p} is the product phrase, {c} the code, {n}/{m} random numbers.
    passages: tuple[str, ...]
    keyword_queries: tuple[str, ...]
    paraphrases: tuple[str, ...]


TOPICS = (
    Topic(
        "Factory reset",
        (
            "To reset the {p} to factory settings, hold the recessed reset button for {n} seconds "
            "until the status light blinks amber. All saved profiles are erased.",
            "A factory reset of the {c} restores default settings: press and hold the reset "
            "button for {n} seconds; the {p} restarts with its original configuration.",
        ),
        ("resetting", "factory reset", "reset button"),
        ("wipe everything and start over", "restore it to how it came out of the box"),
    ),
    Topic(
        "Firmware updates",
        (
            "Firmware for the {p} is updated over the air; the {c} checks for a new release every "
            "{n} hours and installs it at night. Updating takes about {m} minutes.",
            "Install firmware updates on the {c} from the companion app. The {p} must stay "
            "powered while the update is written, which takes roughly {m} minutes.",
        ),
        ("firmware updating", "firmware update", "updates firmware"),
        ("bring its software up to date", "get the newest software version onto it"),
    ),
    Topic(
        "Overheating",
        (
            "If the {p} overheats, it throttles at {n} degrees Celsius and shuts down at {m}. "
            "Keep the vents of the {c} clear and away from direct sunlight.",
            "The {c} protects itself against overheating: above {n} degrees Celsius the {p} "
            "reduces power. Clean the air vents when the thermal warning appears.",
        ),
        ("overheating", "overheats temperature", "thermal shutdown"),
        ("keeps getting too hot", "feels very warm and switches itself off"),
    ),
    Topic(
        "Warranty",
        (
            "The {p} carries a limited warranty of {n} months from the date of purchase. The "
            "warranty of the {c} covers manufacturing defects, not accidental damage.",
            "Warranty claims for the {c} are accepted for {n} months. Keep the receipt of the "
            "{p}; damage from drops or liquids is excluded from the warranty.",
        ),
        ("warranty", "warranty claims", "warranty months"),
        ("what the guarantee covers if it breaks", "how long am I protected against defects"),
    ),
    Topic(
        "Battery replacement",
        (
            "The rechargeable battery of the {p} lasts about {n} charge cycles. Replacing the "
            "battery of the {c} requires removing {m} screws on the back panel.",
            "Battery replacement on the {c}: order the original pack, unscrew the {m} screws and "
            "swap it. A healthy battery in the {p} holds {n} percent after two years.",
        ),
        ("battery replacement", "replacing battery", "batteries"),
        ("swap the power cell", "the cell no longer holds a charge, how do I change it"),
    ),
    Topic(
        "Password recovery",
        (
            "Forgot the administrator password of the {p}? Use the recovery code printed on the "
            "label of the {c}; a new password must have at least {n} characters.",
            "Password recovery for the {c} works through the companion app. After {n} failed "
            "attempts the {p} locks sign-in for {m} minutes.",
        ),
        ("password recovery", "forgotten passwords", "recover password"),
        (
            "I can't log in anymore because I lost my credentials",
            "regain access after losing the admin login",
        ),
    ),
    Topic(
        "Cleaning and maintenance",
        (
            "Clean the {p} every {n} weeks with a dry, lint-free cloth. Never spray liquid "
            "directly onto the {c}; descale or dust the interior every {m} months.",
            "Maintenance of the {c}: wipe the housing, inspect the seals and replace the filter "
            "every {m} months. Cleaning the {p} regularly keeps performance stable.",
        ),
        ("cleaning maintenance", "cleaning", "maintained filter"),
        ("how do I keep it tidy and dust free", "routine care so it lasts longer"),
    ),
    Topic(
        "Wi-Fi connection problems",
        (
            "If the {p} drops its Wi-Fi connection, move it within {n} metres of the access "
            "point. The {c} supports 2.4 GHz networks only.",
            "Wi-Fi troubleshooting for the {c}: forget the network, restart the {p} and rejoin. "
            "Connection problems often come from channels above {m}.",
        ),
        ("wifi connection", "wi-fi disconnects", "wireless connection problems"),
        ("it keeps losing the internet", "cannot get online over the wireless network"),
    ),
    Topic(
        "Power consumption",
        (
            "In normal operation the {p} draws about {n} watts; in standby the {c} uses less "
            "than {m} watts.",
            "Power consumption of the {c} peaks at {n} watts. Enable eco mode to cut the energy "
            "use of the {p} by about {m} percent.",
        ),
        ("power consumption watts", "energy consumption", "consumes power"),
        ("how much electricity does it use", "what will it add to my energy bill"),
    ),
    Topic(
        "Error codes",
        (
            "Error E{n} on the {c} means a sensor fault; power-cycle the {p}. Error E{m} "
            "indicates a blocked fan and needs service.",
            "The display of the {p} shows error codes. On the {c}, E{n} is a communication "
            "error and E{m} a failed self-test.",
        ),
        ("error codes", "error code meaning", "errors displayed"),
        (
            "strange message with a letter and number on the screen",
            "what the fault indicator on the display is telling me",
        ),
    ),
    Topic(
        "Noise",
        (
            "The {p} runs at {n} decibels in quiet mode. A rattling noise from the {c} usually "
            "means the mounting feet are loose.",
            "If the {c} is noisy, check that the fan is free of dust. Normal operating noise of "
            "the {p} is below {n} decibels.",
        ),
        ("noise decibels", "noisy fan", "rattling noise"),
        ("it makes a loud humming sound", "why is it so loud at night"),
    ),
    Topic(
        "Mounting and installation",
        (
            "Mount the {p} on a wall with the supplied bracket and {n} anchors. The {c} needs "
            "{m} centimetres of clearance on each side.",
            "Installation of the {c}: choose a level surface, fix the bracket and connect the "
            "cable. The {p} weighs {n} kilograms, so use wall plugs rated for it.",
        ),
        ("mounting bracket", "installation mounting", "installing"),
        ("how to put it up on the wall", "setting it up in place for the first time"),
    ),
    Topic(
        "Data privacy",
        (
            "The {p} stores usage data locally for {n} days. The {c} sends anonymised "
            "diagnostics only when the user opts in.",
            "Privacy settings of the {c} let you delete all recorded data. The {p} encrypts "
            "stored data and keeps logs for at most {n} days.",
        ),
        ("privacy data", "data privacy settings", "stored data deletion"),
        (
            "does it spy on me or share what it records",
            "who can see the information it collects about me",
        ),
    ),
    Topic(
        "Returns and refunds",
        (
            "You may return the {p} within {n} days for a full refund. Returned units of the "
            "{c} must include all accessories and the original packaging.",
            "Refunds for the {c} are issued within {m} days of receiving the return. The {p} "
            "can be returned for {n} days after delivery.",
        ),
        ("return refund", "returns policy", "refunds returned"),
        ("send it back and get my money back", "I changed my mind after buying it"),
    ),
    Topic(
        "Charging",
        (
            "Charge the {p} with the supplied {n} watt adapter; a full charge of the {c} takes "
            "about {m} hours.",
            "Charging the {c}: the indicator turns green when full. Fast charging brings the {p} "
            "to 80 percent in {m} minutes.",
        ),
        ("charging time", "charger adapter", "charges"),
        ("how long until it is full again", "filling it back up with the plug"),
    ),
    Topic(
        "Accessories",
        (
            "Accessories for the {p} include a carrying case, a spare filter and a {n} metre "
            "cable. Only original accessories keep the {c} within its certification.",
            "Optional accessories for the {c}: a remote control and a stand. The {p} works with "
            "third-party accessories rated for {n} volts.",
        ),
        ("accessories", "accessory case", "optional accessories"),
        ("extra parts and add-ons I can buy for it", "what else can I get to go with it"),
    ),
    Topic(
        "Child safety",
        (
            "The {p} has a child lock: hold the lock key for {n} seconds. Keep the {c} out of "
            "reach of children under {m} years.",
            "Child safety on the {c}: enable the lock in settings so the {p} ignores button "
            "presses. Not suitable for children under {m}.",
        ),
        ("child lock", "child safety lock", "children"),
        ("stop my kids from playing with it", "make it safe around toddlers"),
    ),
    Topic(
        "Operating temperature",
        (
            "Operate the {p} between {n} and {m} degrees Celsius. Below freezing the {c} "
            "shows a cold-start warning.",
            "The {c} is rated for ambient temperatures from {n} to {m} degrees Celsius. Store "
            "the {p} indoors in winter.",
        ),
        ("operating temperature range", "ambient temperature rating", "temperatures"),
        ("can I use it outside in the winter cold", "how cold or warm may the room be"),
    ),
    Topic(
        "Bluetooth pairing",
        (
            "Pair the {p} over Bluetooth: hold the pairing button for {n} seconds and pick the "
            "{c} in your phone's list. Up to {m} phones can be remembered.",
            "Bluetooth pairing of the {c} uses the code 0000. If pairing fails, remove the {p} "
            "from the phone and retry within {n} seconds.",
        ),
        ("bluetooth pairing", "pairs bluetooth", "paired phones"),
        ("connect it to my phone wirelessly", "link my mobile to it"),
    ),
    Topic(
        "Spare parts",
        (
            "Spare parts for the {p} are available for {n} years after the model is "
            "discontinued. Order parts for the {c} by their part number.",
            "The {c} spare parts catalogue lists {m} items. Service centres keep parts for the "
            "{p} in stock for at least {n} years.",
        ),
        ("spare parts", "parts catalogue", "replacement parts ordering"),
        (
            "where can I get a broken component fixed or swapped",
            "how long will they keep making pieces for repairs",
        ),
    ),
)

_GUIDE_LINES = (
    "Most households overlook {h}; reviewers rate it as one of the things that matter most.",
    "Before buying any gadget, read what the manufacturer says about {h}.",
    "{H} differs a lot between brands, and cheap models often cut corners here.",
    "Our buying guide compares {h} across twenty popular devices from this year.",
)


@dataclass(frozen=True)
class Product:
    brand: str
    device: str
    code: str

    @property
    def document_id(self) -> str:
        return f"manual-{self.code.lower()}"

    @property
    def phrase(self) -> str:
        return f"{self.brand} {self.device}"


@dataclass(frozen=True)
class Query:
    query_id: str
    text: str
    kind: str
    # Relevant passage keys ("document_id#heading") and their grades.
    relevant: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Collection:
    # document_id -> (title, Markdown text)
    documents: dict[str, tuple[str, str]]
    queries: list[Query]

    @property
    def passage_count(self) -> int:
        return sum(text.count("\n## ") for _, text in self.documents.values())


def passage_key(document_id: str, section: str) -> str:
    """Judgement key of a passage: its document and the heading path's last element."""
    return f"{document_id}#{section.split(' > ')[-1]}"


def generate(
    products: int = 150, guides: int = 20, queries: int = 150, seed: int = 7
) -> Collection:
    rng = random.Random(seed)
    pairs = [(b, d) for b in BRANDS for d in DEVICES]
    rng.shuffle(pairs)
    codes: set[str] = set()
    catalogue: list[Product] = []
    for brand, device in pairs[:products]:
        code = ""
        while not code or code in codes:
            letters = rng.choice("BCDFGHKLMNPRSTVXZ") + rng.choice("ABEKMRSTX")
            code = f"{letters}-{rng.randint(1000, 9999)}"
        codes.add(code)
        catalogue.append(Product(brand, device, code))
    documents: dict[str, tuple[str, str]] = {}
    for product in catalogue:
        sections = []
        for topic in TOPICS:
            template = rng.choice(topic.passages)
            text = template.format(
                p=product.phrase, c=product.code, n=rng.randint(2, 60), m=rng.randint(2, 90)
            )
            sections.append(f"## {topic.heading}\n\n{text}\n")
        title = f"{product.phrase} {product.code} manual"
        documents[product.document_id] = (title, f"# {title}\n\n" + "\n".join(sections))
    for g in range(guides):
        sections = []
        for topic in TOPICS:
            lines = rng.sample(_GUIDE_LINES, 2)
            body = " ".join(line.format(h=topic.heading.lower(), H=topic.heading) for line in lines)
            sections.append(f"## {topic.heading}\n\n{body}\n")
        title = f"Buying guide {g + 1}"
        documents[f"guide-{g + 1:02d}"] = (title, f"# {title}\n\n" + "\n".join(sections))
    judged: list[Query] = []
    targets = [(p, t) for p in catalogue for t in TOPICS]
    rng.shuffle(targets)
    kinds = ("code", "paraphrase", "mixed")
    for i, (product, topic) in enumerate(targets[:queries]):
        kind = kinds[i % 3]
        if kind == "code":
            text = f"{product.code} {rng.choice(topic.keyword_queries)}"
        elif kind == "paraphrase":
            text = f"my {product.phrase}: {rng.choice(topic.paraphrases)}"
        else:
            text = f"{product.code} {rng.choice(topic.paraphrases)}"
        key = passage_key(product.document_id, topic.heading)
        judged.append(Query(f"q{i + 1:03d}", text, kind, {key: 1}))
    return Collection(documents, judged)


if __name__ == "__main__":
    collection = generate()
    print(f"{len(collection.documents)} documents, {collection.passage_count} passages")
    for query in collection.queries[:9]:
        print(query.kind, "|", query.text, "->", query.relevant)
