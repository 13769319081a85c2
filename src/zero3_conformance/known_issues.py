r"""Expectations: known findings, recorded outside the checks and applied after the run to its raw outcomes.

In the manner of web-platform-tests' expectation files, an entry names the cases it is about (clauses and
subjects, narrowed by check, model, head class, layout, world size, dtype, backend and version conditions on the cell)
and the status, or set of statuses for an intermittent case, they are expected to end with:

    [[issue]]
    clause = "G1"                              # a clause or a list of them
    subject = "transformers"                   # a subject or a list of them
    model = ["bert", "gpt2"]                   # optional narrowing: one value or a list
    world_size = 2                             # also: check, head, layout, dtype, variant, backend
    versions = { deepspeed = ">=0.15,<0.19" }  # PEP 440 specifiers on the cell's versions
    expected = ["PASS", "FAIL"]                # default "FAIL"; any of PASS, FAIL, ERROR, TIMEOUT, CRASH
    match = { kind = "values_differ", tensor = '^model\.norm\.' }  # optional: the findings it is about
                                               # (a list of such tables: any one of them)
    message = '(?s)^(?!.*raised during)'       # optional: a regular expression the message must match
    reason = "..."
    link = "https://github.com/OWNER/REPO/issues/N"

An entry is *met* by a case when every outcome of the case (every try) is among its expected statuses, and
the failure's evidence is the entry's: every structured finding of the record (finding_kinds: kind, tensor,
expected, observed) meets the entry's `match` (its kind among the entry's, each other field matching the
entry's regular expression), so an entry for a fault that corrupts values does not also excuse a call that
raised. `message`, a regular expression on the message, is the fallback where a record has no findings (one
written before findings existed, or an outcome that is not a FAIL: a crash, a timeout). A
met entry makes a case that did not pass XFAIL; an entry that applies and is not met leaves the raw status
(a case that passed becomes XPASS: the versions may have moved past the finding; not for an entry that names
no model or class — a fault of the loader or of DeepSpeed, which every model may show — and matches its
evidence, `message`: unless it expects PASS, it applies only to cases that show that evidence). The record
keeps its raw status and names the entry, so applying another file later (`report --known-issues`) re-triages a run
without running it again. An entry's `id` (lower-case words joined by '-', unique in its file) is how records name
it, so that comparing two runs or two files does not depend on where it stands; an entry without one is named by
its position (the shipped file gives every entry an id).

Two kinds of entry. A *known upstream* entry links an issue or pull request upstream (`/issues/N` or
`/pull/N`). A *new finding* (`upstream = false`) is not reported upstream yet: it describes the finding in
full (`short_name`, `tensor`, `expected_value`, `observed_value`, `seen_in`, `not_seen_in`) and links to
the tracker where it should be reported. It names the code at fault (`at_fault`: library, release, file and
function) and its `disposition`: "file" (a crash or wrong result a user sees), "divergence" (documented
behaviour the contract asks more of) or "harness" (our own artifact, to fix); the last two say why in
`not_filed_because`. `zero3-conformance findings` writes each one's folder under findings/<short_name>/.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from .errors import UsageError, read_toml_file
from .finding_kinds import KINDS
from .results import CRASH, ERROR, FAIL, PASS, SKIP, TIMEOUT, XFAIL, XPASS, Record

DEFAULT_FILE = Path(__file__).with_name("known_issues.toml")

EXPECTABLE = (PASS, FAIL, ERROR, TIMEOUT, CRASH)
# Record fields an entry may narrow by.
NARROWING = ("check", "model", "head", "layout", "world_size", "dtype", "variant", "backend")
VERSIONED = ("python", "torch", "deepspeed", "transformers", "accelerate")  # the cell's versions
# A new finding, in full; its short name names its folder of reproducer and report (`findings` command), and
# entries that record one finding for several clauses share it.
FINDING = ("short_name", "tensor", "expected_value", "observed_value", "seen_in", "not_seen_in", "at_fault",
           "disposition")
# What is to become of a new finding; all but "file" say why in `not_filed_because`.
DISPOSITIONS = {
    "file": "to be filed upstream: a crash or a wrong result a user sees",
    "divergence": "a documented divergence from the contract, not a bug to file",
    "harness": "an artifact of this harness, to be fixed here; the entry holds its cases until then",
}
SHORT_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
FIELDS = ("id", "clause", "subject", "reason", "link", "expected", "match", "message", "upstream", "versions",
          *NARROWING, *FINDING, "not_filed_because")
MATCHED = ("kind", "tensor", "expected", "observed")  # `match`: the finding's kind(s), and a regex per other field
UPSTREAM_LINK = re.compile(r"^https://\S+/(issues|pull)/\d+(#\S*)?$")
KNOWN_UPSTREAM, NEW_FINDING = "known upstream", "new finding"


def versions_hold(cell: dict[str, Any], versions: Iterable[tuple[str, str]]) -> bool:
    """Every (library, PEP 440 specifier) holds for the cell's version of that library; a version that is
    missing or not a version holds for none."""
    for library, spec in versions:
        try:
            if Version(str(cell.get(library, ""))) not in SpecifierSet(spec):
                return False
        except InvalidVersion:
            return False
    return True


@dataclasses.dataclass(frozen=True)
class KnownIssue:
    clauses: tuple[str, ...]
    subjects: tuple[str, ...]
    reason: str
    link: str
    expected: tuple[str, ...] = (FAIL,)
    upstream: bool = True
    narrowing: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (record field, the values it may take)
    versions: tuple[tuple[str, str], ...] = ()
    finding: tuple[tuple[str, str], ...] = ()  # a new finding's description, field by field
    name: str = ""  # how records, messages and reports name the entry: file and id (or position, where it has none)
    message: str = ""  # a regular expression the record's message must match; empty: any message
    # The findings it is about, as alternatives (a finding meets the entry when it meets one): each a tuple of
    # (field, value) with "kind" a tuple of kinds, the others regular expressions.
    match: tuple[tuple[tuple[str, Any], ...], ...] = ()

    @property
    def short_name(self) -> str:
        """A new finding's folder name; empty for a known upstream entry."""
        return dict(self.finding).get("short_name", "")

    @property
    def kind(self) -> str:
        return KNOWN_UPSTREAM if self.upstream else NEW_FINDING

    @property
    def every_model(self) -> bool:
        """The entry names no model or class: a fault of the loader or of DeepSpeed, not of one architecture."""
        return not {"model", "head"} & dict(self.narrowing).keys()

    def applies_to(self, record: Record) -> bool:
        # A fault every model may show is about the cases where its evidence shows: an every-model entry with
        # evidence that does not expect PASS applies to no other case (another model's PASS is no XPASS, another
        # fault's FAIL is not this entry's to name; stale when a case showing the evidence does not meet it).
        if self.every_model and self.has_evidence and PASS not in self.expected and (
                record.raw_status == PASS or not self.shown_by(record)):
            return False
        return self.names_case(record) and versions_hold(record.cell, self.versions)

    def names_case(self, record: Record) -> bool:
        """The entry's clauses, subjects, narrowing and backend hold for the record: all it asks but versions."""
        if record.clause not in self.clauses or record.subject not in self.subjects:
            return False
        fields = {**dataclasses.asdict(record), "backend": record.cell.get("backend")}
        return not any(fields[field] not in values for field, values in self.narrowing)

    def versions_missed(self, cell: dict[str, Any]) -> list[tuple[str, str, str]]:
        """(library, the entry's specifier, the cell's version) for each version condition the cell misses."""
        return [(library, spec, str(cell.get(library, "?"))) for library, spec in self.versions
                if not versions_hold(cell, [(library, spec)])]

    @property
    def has_evidence(self) -> bool:
        return bool(self.match or self.message)

    def meets(self, finding: dict[str, Any]) -> bool:
        """The finding is this entry's: it meets one of the entry's `match` tables."""
        return any(finding.get("kind") in dict(alternative)["kind"] and all(
            re.search(pattern, str(finding.get(field, ""))) is not None
            for field, pattern in alternative if field != "kind") for alternative in self.match)

    def judges_by_kinds(self, record: Record) -> bool:
        """The record's findings decide (the entry has `match`, the record findings); else its message does."""
        return bool(self.match and record.findings)

    def _evidence(self, record: Record, every: bool) -> bool:
        """The record shows the entry's evidence: its findings meet `match` (every one of them, or one), or,
        where the record has no findings or the entry no `match`, its message matches `message`."""
        if self.judges_by_kinds(record):
            return (all if every else any)(self.meets(found) for found in record.findings)
        return not self.message or re.search(self.message, record.message) is not None

    def shown_by(self, record: Record) -> bool:
        """Some finding of the record is the entry's fault (for an every-model entry: where it applies)."""
        return self._evidence(record, every=False)

    def met_by(self, record: Record) -> bool:
        """Every outcome is expected and every finding is the entry's: it excuses no failure of another kind."""
        return set(record.outcomes) <= set(self.expected) and self._evidence(record, every=True)

    def describe(self, met: bool) -> dict[str, Any]:
        """What a record keeps of the entry."""
        return {"entry": self.name, "expected": list(self.expected), "kind": self.kind, "reason": self.reason,
                "link": self.link, "met": met}


def load(path: Path = DEFAULT_FILE) -> list[KnownIssue]:
    data = read_toml_file(path, "known-issues file")
    entries = data.get("issue", [])
    if set(data) - {"issue"} or not isinstance(entries, list):
        raise UsageError(f"known-issues file {path}: expected only [[issue]] tables, found "
                         f"{', '.join(sorted(set(data) - {'issue'})) or 'issue = ' + type(entries).__name__}")
    # An entry is named by its id, which stays when entries are added or removed; one without is named by its
    # position in the file.
    ids: dict[str, int] = {}
    names = []
    for number, entry in enumerate(entries, 1):
        given = entry.get("id") if isinstance(entry, dict) else None
        if given is not None:
            if not isinstance(given, str) or not SHORT_NAME.match(given):
                raise UsageError(f"{path}: issue #{number}: id {given!r} must be lower-case words joined by '-'")
            if given in ids:
                raise UsageError(f"{path}: issue #{number}: id {given!r} is issue #{ids[given]}'s already")
            ids[given] = number
        names.append(f"{Path(path).name} {given if given is not None else f'#{number}'}")
    return [_entry(entry, f"{path}: issue #{number}", name)
            for number, (entry, name) in enumerate(zip(entries, names), 1)]


def _entry(entry: Any, where: str, name: str) -> KnownIssue:
    """One [[issue]] table, checked; `where` names it in errors (the file's path), `name` in records."""
    if not isinstance(entry, dict):
        raise UsageError(f"{where} is not a table")
    named_as = f"({_names(entry.get('clause', '?'))} {_names(entry.get('subject', '?'))})"
    where, name = f"{where} {named_as}", f"{name} {named_as}"
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise UsageError(f"{where}: unknown field '{unknown[0]}'; known: {', '.join(FIELDS)}")
    named = {}
    for field in ("clause", "subject"):
        values = entry.get(field)
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise UsageError(f"{where}: field '{field}' is required: a non-empty string or list of them")
        named[field] = tuple(values)
    for field in ("reason", "link"):
        if not isinstance(entry.get(field), str) or not entry[field].strip():
            raise UsageError(f"{where}: field '{field}' is required and must be a non-empty string")
    expected = entry.get("expected", FAIL)
    expected = (expected,) if isinstance(expected, str) else expected
    if (not isinstance(expected, list) and not isinstance(expected, tuple)) or not expected:
        raise UsageError(f"{where}: expected must be a status or a list of statuses")
    for status in expected:
        if status not in EXPECTABLE:
            raise UsageError(f"{where}: unknown expected status {status!r}; known: {', '.join(EXPECTABLE)}")
    if set(expected) == {PASS}:
        raise UsageError(f"{where}: expected = PASS alone expects nothing; list the statuses the finding shows")
    message = entry.get("message", "")
    try:
        re.compile(message)
    except (re.error, TypeError):
        raise UsageError(f"{where}: message {message!r} is not a regular expression") from None
    match = _match(entry.get("match", {}), where)
    upstream = entry.get("upstream", True)
    if not isinstance(upstream, bool):
        raise UsageError(f"{where}: upstream must be true or false")
    if upstream and not UPSTREAM_LINK.match(entry["link"]):
        raise UsageError(f"{where}: link {entry['link']!r} must be an upstream issue or pull request "
                         "(.../issues/N or .../pull/N); a finding not reported yet takes upstream = false")
    finding = []
    if not upstream:
        for field in FINDING:
            if not isinstance(entry.get(field), str) or not entry[field].strip():
                raise UsageError(f"{where}: a new finding (upstream = false) describes itself in full: field "
                                 f"'{field}' is required ({', '.join(FINDING)})")
            finding.append((field, entry[field]))
        if entry["disposition"] not in DISPOSITIONS:
            raise UsageError(f"{where}: disposition {entry['disposition']!r} is not one of "
                             f"{', '.join(DISPOSITIONS)}")
        reason_not_filed = entry.get("not_filed_because", "")
        if (entry["disposition"] != "file") != (isinstance(reason_not_filed, str) and bool(reason_not_filed.strip())):
            raise UsageError(f"{where}: not_filed_because is required with disposition "
                             f"{entry['disposition']!r} and only then (a finding to file needs no excuse)")
        if reason_not_filed:
            finding.append(("not_filed_because", reason_not_filed))
        if not SHORT_NAME.match(entry["short_name"]):
            raise UsageError(f"{where}: short_name {entry['short_name']!r} must be lower-case words joined by '-' "
                             f"(it names the finding's folder)")
    narrowing = []
    for field in NARROWING:
        if field in entry:
            values = entry[field] if isinstance(entry[field], list) else [entry[field]]
            kind = int if field == "world_size" else str
            if not values or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
                raise UsageError(f"{where}: {field} must be a {kind.__name__} or a list of them")
            narrowing.append((field, tuple(values)))
    versions = entry.get("versions", {})
    if not isinstance(versions, dict):
        raise UsageError(f"{where}: versions must be a table, e.g. {{ transformers = \">=5.0\" }}")
    for library, spec in versions.items():
        if library not in VERSIONED:
            raise UsageError(f"{where}: versions.{library}: unknown library; known: {', '.join(VERSIONED)}")
        try:
            SpecifierSet(spec)
        except (InvalidSpecifier, TypeError):
            raise UsageError(f"{where}: versions.{library} = {spec!r} is not a version specifier") from None
    return KnownIssue(named["clause"], named["subject"], entry["reason"], entry["link"], tuple(expected), upstream,
                      tuple(narrowing), tuple(sorted(versions.items())), tuple(finding), name, message, match)


def _match(match: Any, where: str) -> tuple[tuple[tuple[str, Any], ...], ...]:
    """An entry's `match`, one table or a list of them (alternatives: a fault that shows as a raise on one
    model and as wrong values on another), each checked: known fields, known kinds, regular expressions."""
    if isinstance(match, list) and match:
        return tuple(_match_table(table, f"{where}: match[{number}]") for number, table in enumerate(match))
    return (_match_table(match, where),) if match else ()


def _match_table(match: Any, where: str) -> tuple[tuple[str, Any], ...]:
    if not isinstance(match, dict) or not match:
        raise UsageError(f"{where}: match must be a table or a list of tables, e.g. "
                         f"{{ kind = \"values_differ\", tensor = 'bias$' }}")
    unknown = sorted(set(match) - set(MATCHED))
    if unknown:
        raise UsageError(f"{where}: match.{unknown[0]}: unknown field; known: {', '.join(MATCHED)}")
    if "kind" not in match:
        raise UsageError(f"{where}: match needs a kind (one of finding_kinds.KINDS, or a list of them)")
    checked: list[tuple[str, Any]] = []
    for field, value in match.items():
        if field == "kind":
            kinds = [value] if isinstance(value, str) else value
            if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
                raise UsageError(f"{where}: match.kind must be a kind or a list of kinds")
            for kind in kinds:
                if kind not in KINDS:
                    raise UsageError(f"{where}: match.kind {kind!r} is not a finding kind; known: "
                                     f"{', '.join(KINDS)}")
            checked.append(("kind", tuple(kinds)))
            continue
        try:
            re.compile(value)
        except (re.error, TypeError):
            raise UsageError(f"{where}: match.{field} {value!r} is not a regular expression") from None
        checked.append((field, value))
    return tuple(checked)


def _names(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _applying(record: Record, issues: Iterable[KnownIssue]) -> tuple[KnownIssue | None, bool, list[KnownIssue]]:
    """The first entry the record's outcomes meet by its findings, else the entries that meet it together, else
    the first that meets it by its message alone, else the first that applies (unmet), else none; with the other
    entries that met it together. A broad message-only entry (a race that corrupts any value) does not take a
    record whose findings other entries name exactly."""
    applying = [issue for issue in issues if issue.applies_to(record)]
    met = [issue for issue in applying if issue.met_by(record)]
    by_kinds = [issue for issue in met if issue.judges_by_kinds(record)]
    if by_kinds:
        return by_kinds[0], True, []
    together = _together(record, applying)
    if together:
        return together[0], True, together[1:]
    if met:
        return met[0], True, []
    return (applying[0], False, []) if applying else (None, False, [])


def _together(record: Record, applying: list[KnownIssue]) -> list[KnownIssue]:
    """Entries that between them own every finding of a record that shows two known faults (one rank raising
    one way, another the other): each expects every outcome and owns findings by its kinds, so each fault is
    still excused only by its own entry. [] where some finding is no entry's."""
    owners = [issue for issue in applying if issue.match and set(record.outcomes) <= set(issue.expected)]
    chosen: list[KnownIssue] = []
    for found in record.findings:
        if any(issue.meets(found) for issue in chosen):
            continue
        owner = next((issue for issue in owners if issue.meets(found)), None)
        if owner is None:
            return []
        chosen.append(owner)
    return chosen if len(chosen) > 1 else []


def meeting(record: Record, issues: Iterable[KnownIssue]) -> list[KnownIssue]:
    """The entries the record's raw outcomes meet: the one its triage names, and any that met it together with
    that one; [] where none does."""
    if record.raw_status in (SKIP, PASS):
        return []
    issue, met, together = _applying(dataclasses.replace(record, status=record.raw_status, expected=None), issues)
    return [issue, *together] if met and issue is not None else []


def apply(record: Record, issues: Iterable[KnownIssue]) -> Record:
    """The record triaged afresh from its raw outcomes: a met entry makes a case that did not pass XFAIL; an
    entry that applies but is not met turns a pass into XPASS and leaves any other status as it was. A failure
    that would meet an entry but for the cell's versions stays what it was and names that entry: a regression
    of a fixed finding, or one older than recorded, is news, not an expected failure."""
    issues = list(issues)
    raw = dataclasses.replace(record, status=record.raw_status, expected=None)
    if raw.raw_status == SKIP:
        return raw
    issue, met, together = _applying(raw, issues)
    if issue is None:
        near = next((i for i in issues if raw.raw_status != PASS and i.versions and i.names_case(raw)
                     and i.met_by(raw)), None)
        if near is None:
            return raw
        return dataclasses.replace(raw, expected={**near.describe(False),
                                                  "versions_missed": near.versions_missed(raw.cell)})
    if met:
        status = raw.raw_status if raw.raw_status == PASS else XFAIL
    else:
        status = XPASS if raw.raw_status == PASS else raw.raw_status
    expected = issue.describe(met)
    if together:
        expected["together_with"] = [other.name for other in together]
    return dataclasses.replace(raw, status=status, expected=expected)


def stale(issues: Iterable[KnownIssue], records: list[Record]) -> list[KnownIssue]:
    """Entries possibly stale for these records: the entry's conditions hold for a cell the records come
    from, a case it applies to was run (not skipped), and no case met it."""
    issues = list(issues)
    met_together = {issue for r in records if r.findings and r.raw_status not in (SKIP, PASS)
                    for issue in _together(r, [i for i in issues if i.applies_to(r)])}
    stale_entries = []
    for issue in issues:
        applying = [r for r in records if r.raw_status != SKIP and issue.applies_to(r)]
        if applying and issue not in met_together and not any(issue.met_by(r) for r in applying):
            stale_entries.append(issue)
    return stale_entries


def _above(version: str, spec: str) -> bool:
    """`version` misses `spec` by being newer than an upper bound of it (`<`, `<=`, `==`)."""
    try:
        ours = Version(version)
    except InvalidVersion:
        return False
    for specifier in SpecifierSet(spec):
        try:
            bound = Version(specifier.version)
        except InvalidVersion:  # a wildcard (==5.*)
            continue
        if (specifier.operator == "<" and ours >= bound) or (specifier.operator in ("<=", "==") and ours > bound):
            return True
    return False


def _first_sentence(text: str, limit: int = 200) -> str:
    first = " ".join(text.split()).split(". ")[0].rstrip(".")
    return first if len(first) <= limit else first[:limit - 1] + "…"


def note(record: Record) -> str:
    """One line naming the entry a record was triaged by, for messages and reports; empty when none."""
    entry = record.expected
    if not entry:
        return ""
    expected = " or ".join(entry["expected"])
    if entry.get("versions_missed"):
        return f"matches known finding {entry['entry']} in all but its versions: " + "; ".join(
            f"recorded for {library} {spec}, here {version}: "
            f"{'a regression?' if _above(version, spec) else 'older than recorded: widen the entry?'}"
            for library, spec, version in entry["versions_missed"]) + f" ({entry['link']})"
    if entry["met"]:
        reason = _first_sentence(entry["reason"])
        together = f"; with {', '.join(entry['together_with'])} for its other findings" if entry.get(
            "together_with") else ""
        return f"known issue ({entry['kind']}): {reason} ({entry['link']}; expected {expected}{together})"
    return (f"known issue ({entry['kind']}) expected {expected}, outcomes {', '.join(record.outcomes)}: not met, "
            f"check the entry ({entry['link']})")
