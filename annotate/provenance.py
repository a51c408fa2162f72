"""Where a store's judgments came from, under which licence, and which annotator ids a release publishes as given.

A vote's origin is read from what the store keeps of it:

- session `import:<format>:<file name>` (annotate.importers): imported. HH-RLHF (`hh`) is Anthropic/hh-rlhf, MIT at
  its source; any other imported file's licence is unknown, since nothing in a TRL file says.
- annotator `judge:<model>` (annotate.judge_votes): an AI judge's vote (`python rlhf/train.py judge`).
- anything else: collected with prefkit's labeling app (or its JSON API).

The licence of a release is `--license` when given. Otherwise it is the source's, when every standing vote was
imported from sources under one known licence; otherwise it is unknown, and the card says "unknown: set --license"
(prefkit cannot know the terms of judgments its users collected, nor of a file it was handed). A real push refuses an
unknown licence (annotate.hub).

Annotator ids: imported votes keep the ids they came with (the source's own attribution, e.g. `hh-rlhf`, not anyone's
login). App annotators (login ids may be names or e-mails) and judges (a judge's model may be a local path with a
user's name in it) become pseudonyms unless `--keep-annotator-ids`. A name used by an app annotator and on imported
votes alike is pseudonymised on both: kept on the imported ones, it would name the login.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from annotate.judge_votes import is_judge

if TYPE_CHECKING:
    import pyarrow as pa

IMPORT = "import:"
UNKNOWN_LICENSE = "unknown: set --license"


@dataclass(frozen=True)
class Source:
    """A public data set an importer reads, as the card names it."""

    name: str
    hub_id: str
    license: str  # the Hub's licence identifier


# importer format -> the data set it reads; only a format tied to one data set has a licence to inherit
KNOWN_SOURCES = {"hh": Source("HH-RLHF", "Anthropic/hh-rlhf", "mit")}
FORMAT_NAMES = {"hh": "HH-RLHF", "trl": "TRL preference"}


@dataclass
class Origin:
    """One place the judgments came from: an imported data set or file, the labeling app, or AI judges."""

    kind: str  # "import", "app" or "judge"
    label: str  # how the card names it
    license: str | None  # the licence at the source; None: unknown (or the publisher's own to set)
    votes: int = 0
    annotators: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)  # imported file names, as the session recorded them


def origin_key(session: str | None, annotator: str) -> tuple[str, str]:
    """(grouping key, imported file name or '') of one vote. HH files group together (one data set, one licence);
    other imports group per file (each file its own unknown)."""
    s = session or ""
    if s.startswith(IMPORT):
        fmt, _, name = s[len(IMPORT) :].partition(":")
        return (f"{IMPORT}{fmt}" if fmt in KNOWN_SOURCES else s), name
    return ("judge" if is_judge(annotator) else "app"), ""


def _new_origin(key: str, name: str) -> Origin:
    if key == "judge":
        return Origin("judge", "cast by AI judges (`python rlhf/train.py judge`)", None)
    if key == "app":
        return Origin("app", "collected with prefkit's labeling app", None)
    fmt = key[len(IMPORT) :].partition(":")[0]
    if fmt in KNOWN_SOURCES:
        src = KNOWN_SOURCES[fmt]
        return Origin("import", f"imported from {src.name} ({src.hub_id})", src.license)
    return Origin("import", f"imported from the {FORMAT_NAMES.get(fmt, fmt)} file `{name}`", None)


@dataclass
class Provenance:
    """The origins of a set of standing votes, largest first."""

    origins: list[Origin]

    @classmethod
    def of(cls, votes: pa.Table) -> Provenance:
        """From the standing votes' `session` and `annotator` columns."""
        # One Python step per distinct (session, annotator), not per vote: a store may hold millions of votes.
        groups = votes.select(["session", "annotator"]).group_by(["session", "annotator"], use_threads=False)
        counts = groups.aggregate([([], "count_all")]).to_pylist()
        found: dict[str, Origin] = {}
        for g in counts:
            key, name = origin_key(g["session"], g["annotator"])
            o = found.setdefault(key, _new_origin(key, name))
            o.votes += g["count_all"]
            o.annotators.add(g["annotator"])
            if name:
                o.files.add(name)
        return cls(sorted(found.values(), key=lambda o: (-o.votes, o.label)))

    def private_names(self) -> list[str]:
        """Annotator names to pseudonymise: every app annotator's and judge's (sorted, for stable pseudonyms)."""
        return sorted({a for o in self.origins if o.kind != "import" for a in o.annotators})

    def kept_names(self) -> set[str]:
        """Imported annotator ids, published as the source gave them (none also used by an app annotator)."""
        private = set(self.private_names())
        return {a for o in self.origins if o.kind == "import" for a in o.annotators} - private

    def license(self, given: str | None) -> tuple[str | None, str]:
        """(licence, why), licence None when it cannot be determined (module doc)."""
        if given:
            return given, "given with --license"
        licences = {o.license for o in self.origins}
        if len(licences) == 1 and None not in licences:
            names = ", ".join(o.label.removeprefix("imported from ") for o in self.origins)
            return licences.pop(), f"the licence of {names} at its source, where every judgment here comes from"
        if None not in licences:
            return None, "the judgments come from sources under different licences (see the table above)"
        open_ = [f"the {o.votes:,} votes {o.label}" for o in self.origins if o.license is None]
        return None, f"prefkit cannot know the licence of {'; '.join(open_)}"

    def conflicts(self, licence: str | None) -> list[Origin]:
        """Imported origins whose known licence at the source differs from the release's."""
        return [o for o in self.origins if o.license is not None and licence is not None and o.license != licence]

    def summary(self) -> str:
        """'1,000 imported from HH-RLHF (Anthropic/hh-rlhf) and 30 collected with prefkit's labeling app'."""
        parts = [f"{o.votes:,} {o.label}" for o in self.origins]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"

    def rows(self) -> list[dict[str, str]]:
        """The card's table of origins (annotate.cards)."""
        source_licence = {"app": "the publisher's (--license)", "judge": "the publisher's (--license)"}
        return [
            {
                "origin": o.label,
                "standing votes": f"{o.votes:,}",
                "annotators": f"{len(o.annotators):,}",
                "files": ", ".join(f"`{f}`" for f in sorted(o.files)) or "-",
                "licence at the source": o.license or source_licence.get(o.kind, "unknown (the file does not say)"),
            }
            for o in self.origins
        ]

    def annotator_note(self, pseudonymised: bool) -> str:
        """What the card's annotator ids are, per origin."""
        kinds = {o.kind for o in self.origins}
        parts = []
        if "app" in kinds:
            parts.append("labeling-app annotators appear as " + (
                "pseudonyms (annotator-NN, stable within this release)" if pseudonymised
                else "the ids they logged in with (--keep-annotator-ids)"))  # fmt: skip
        if "judge" in kinds:
            parts.append("AI judges as " + ("judge:model-NN" if pseudonymised else "judge:<model>"))
        if "import" in kinds:
            kept = ", ".join(f"`{n}`" for n in sorted(self.kept_names())) or "none"
            parts.append(f"imported votes keep the annotator ids they were imported with ({kept})")
        text = "; ".join(parts)
        return text[0].upper() + text[1:] + "."


def origin_of_name(name: str, kept: set[str]) -> str:
    """A published annotator name's origin, for the card's annotator table."""
    if name in kept:
        return "imported (id as given)"
    return "AI judge" if is_judge(name) else "labeling app"
