"""How runs are named where the app lists them: in full (`describe_run`) and in a narrow sidebar box
(`compact_labels`: names told apart where the box shows them, accuracy, an id tail where needed). No widgets here."""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

from dfkd_core.plots.synthesis import describe_update
from dfkd_core.runs import RunRecord

NAME_CHARS_SHOWN = 28            # about what a sidebar select box shows of its choice's name
LABEL_CHARS_SHOWN = 31           # ... and of its whole label (name, accuracy, id)
PARTIAL_STATUSES = ("cancelled", "interrupted")   # stopped runs whose model so far was saved: usable, marked partial


def as_sentence(clause: str) -> str:
    """A library note (a clause, as the CLI prints it after 'note:') as a sentence on a page."""
    return clause[:1].upper() + clause[1:] + ("" if clause.endswith(".") else ".")


def run_name(record: RunRecord) -> str:
    return record.name or record.method or record.kind


def describe_run(record: RunRecord) -> str:
    """Name, live changes, accuracy, partial status and id: in full (a narrow box shows `compact_labels`)."""
    return f"{run_name(record)}{live_edit_note(record)}{accuracy_text(record)}{partial_text(record)} · {record.id}"


def partial_text(record: RunRecord) -> str:
    """' · partial (cancelled)' for a run stopped before its end whose model so far was kept, else ''."""
    return f" · partial ({record.status})" if record.status in PARTIAL_STATUSES else ""


def accuracy_text(record: RunRecord) -> str:
    """' · 92.8%': a teacher's test accuracy or a student's, '' for a run without one."""
    accuracy = record.summary.get("test_accuracy", record.summary.get("student_accuracy"))
    return f" · {accuracy:.1%}" if isinstance(accuracy, (int, float)) else ""


def distinct_names(names: Sequence[str]) -> list[str]:
    """Each name with the leading words it shares with another name cut to '…' and the last shared word, so that
    names which differ only at their end differ where a narrow box shows them: 'robustness teacher bncnn6_w32
    fashion-mnist seed 2 (3 epochs)' beside its seed-0 twin becomes '…seed 2 (3 epochs)'. A name whose difference
    the box shows anyway ('bncnn3_w32 on digits (starter)' beside 'bncnn3_w32 on digits') and another's exact copy
    stay as they are."""
    words = [n.split() for n in names]

    def shared(a: list[str], b: list[str]) -> int:
        count = 0
        while count < min(len(a), len(b)) and a[count] == b[count]:
            count += 1
        return count

    out = []
    for i, mine in enumerate(words):
        common = max((shared(mine, other) for j, other in enumerate(words) if j != i and other != mine), default=0)
        hidden = len(" ".join(mine[:common])) >= NAME_CHARS_SHOWN - 4   # the box would not reach the difference
        context = common - 1 if mine[common - 1] != "·" else common   # the last shared word, unless a separator
        out.append("…" + " ".join(mine[context:]) if hidden and 2 <= common < len(mine) else names[i])
    return out


def distinct_run_names(records: Sequence[RunRecord]) -> list[str]:
    """`distinct_names` of these runs' names, in their order."""
    return distinct_names([run_name(r) for r in records])


def shorten(text: str, chars: int) -> str:
    """`text` cut to `chars` characters with '…', at a word boundary when one is near the end."""
    if len(text) <= chars:
        return text
    cut = text[:chars - 1]
    if " " in cut[-6:]:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" ·") + "…"


def fit_labels(entries: Mapping[str, tuple[str, str, str]]) -> dict[str, str]:
    """{key: label} from {key: (name, facts, id tail)} for a box that shows ~LABEL_CHARS_SHOWN characters. Labels
    that differ where the box shows them stay whole ('bncnn3_w32 on digits (starter) · 99.4%'); ones that would
    look alike have their name cut so that the facts (' · 92.8%') show, then, if still alike, the id tail too."""
    def label(key: str, level: int) -> str:
        name, facts, tail = entries[key]
        if level == 0:
            return name + facts
        end = facts + (f" · {tail}" if level == 2 else "")
        return shorten(name, max(LABEL_CHARS_SHOWN - len(end), 8)) + end
    levels = dict.fromkeys(entries, 0)
    for _ in range(2):
        labels = {key: label(key, level) for key, level in levels.items()}
        seen = Counter(text[:LABEL_CHARS_SHOWN] for text in labels.values())
        alike = [key for key, text in labels.items() if seen[text[:LABEL_CHARS_SHOWN]] > 1]
        for key in alike:
            levels[key] += 1
    return {key: label(key, level) for key, level in levels.items()}


def compact_labels(records: Sequence[RunRecord]) -> dict[str, str]:
    """{run id: label} for a narrow sidebar box: names told apart where the box shows them (`distinct_names`),
    accuracy, and the run id's tail where needed (`fit_labels`). Show the chosen run's full `describe_run` beside
    it."""
    return fit_labels({r.id: (name, run_facts(r), r.id.rsplit("-", 1)[-1])
                       for r, name in zip(records, distinct_run_names(records))})


def run_facts(record: RunRecord) -> str:
    """' · 92.8%' (test accuracy) and ' · partial' for a stopped run: what a compact label keeps of `describe_run`."""
    return accuracy_text(record) + (" · partial" if record.status in PARTIAL_STATUSES else "")


def live_edit_note(record: RunRecord) -> str:
    """' · changed live: α_tv=1 at step 104' when settings moved during the run: its name gives the start."""
    summary = live_edits(record)
    return f" · changed live: {summary}" if summary else ""


def live_edits(record: RunRecord) -> str:
    """'α_tv=1 at step 104 (+1 earlier)': the last live change and how many came before it, or ''."""
    edits = record.summary.get("live_updates") or []
    if not edits:
        return ""
    return live_change_text(edits[-1]) + (f" (+{len(edits) - 1} earlier)" if len(edits) > 1 else "")


def live_change_text(edit: dict) -> str:
    """'α_tv=1, α_l2=3 at step 104' for one entry of a summary's `live_updates`."""
    return f"{describe_update(edit)} at step {edit['step'] + 1}"
