"""The three applications' results as markdown tables (the CLI prints them, the benchmark collects them), read from
a run's results.json: every accuracy with its 95% bootstrap interval, every comparison with its paired one."""
from __future__ import annotations

from typing import Mapping

from dfkd_core.stats import Interval


def percent(ci: Mapping | None) -> str:
    """'91.23% [90.67, 91.78]' from a stored interval."""
    if not ci:
        return "–"
    interval = Interval.from_dict(dict(ci))
    if not interval.defined:
        return f"{100 * interval.estimate:.2f}% [no interval]"
    return f"{100 * interval.estimate:.2f}% [{100 * interval.low:.2f}, {100 * interval.high:.2f}]"


def points(ci: Mapping | None) -> str:
    """A difference of accuracies in percentage points: '−0.41 [−0.80, −0.02] pt'."""
    if not ci:
        return "–"
    interval = Interval.from_dict(dict(ci))
    return f"{100 * interval.estimate:+.2f} [{100 * interval.low:+.2f}, {100 * interval.high:+.2f}] pt"


def milliseconds(row: Mapping) -> str:
    """The row's latency (median over the timing rounds) and the range it moved in, or '–' for a run stopped
    before its timing step."""
    if row.get("latency_ms") is None:
        return "–"
    spread = row.get("latency_range_ms")
    return f"{row['latency_ms']:.2f}" + (f" ({spread[0]:.2f}–{spread[1]:.2f})" if spread else "")


def _table(header: list[str], lines: list[list[str]]) -> str:
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(rows + ["| " + " | ".join(cells) + " |" for cells in lines])


def pruning_table(results: Mapping) -> str:
    """One line per pruned network: its size and latency, then the accuracy of each variant."""
    rows = results["rows"]
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] != "unpruned"))
    comparisons = {(c["criterion"], c["keep_target"]): c["difference_ci"] for c in results.get("comparisons", [])}
    header = ["criterion", "kept FLOPs (target)", "MMACs", "params", "CPU ms/batch (range)", *variants,
              "synthetic − real KD"]
    lines = []
    for key in dict.fromkeys((r["criterion"], r["keep_target"]) for r in rows):
        group = {r["variant"]: r for r in rows if (r["criterion"], r["keep_target"]) == key}
        first = next(iter(group.values()))
        accuracy = [percent(group[v]["accuracy_ci"]) if v in group else "–" for v in variants]
        if "unpruned" in group:
            accuracy = [percent(group["unpruned"]["accuracy_ci"])] + ["–"] * (len(variants) - 1)
        lines.append([key[0] if key[0] != "-" else "unpruned", f"{first['kept_flops']:.3f} ({key[1]:g})",
                      f"{first['macs'] / 1e6:.2f}", f"{first['parameters']:,}", milliseconds(first),
                      *accuracy, points(comparisons.get(key))])
    return _table(header, lines)


def quantization_table(results: Mapping) -> str:
    """One line per model: its activation observer (int8), accuracy, its paired difference to fp32, serialized size
    and latency."""
    to_fp32 = {c["a"]: c["difference_ci"] for c in results.get("comparisons", []) if c["b"] == "fp32"}
    lines = []
    for r in results["rows"]:
        name = f"{r['model']}/{r['calibration']}"
        lines.append([r["model"], r["calibration"], r.get("observer", "–"), "yes" if r["data_free"] else "no",
                      str(r.get("calibration_images", "–")), percent(r["accuracy_ci"]), points(to_fp32.get(name)),
                      f"{r['size_bytes'] / 1024:.0f}", milliseconds(r)])
    table = _table(["model", "calibration", "observer", "data-free", "images", "accuracy [95% CI]",
                    "− fp32 (paired)", "size KiB", "CPU ms/batch (range)"], lines)
    others = [c for c in results.get("comparisons", []) if c["b"] != "fp32"]
    extra = "".join(f"\n{c['comparison']}: {points(c['difference_ci'])}" for c in others)
    return table + "\n" + extra


def continual_table(results: Mapping) -> str:
    """One line per model: accuracy on old-class, new-class and all test images, and the old accuracy it kept."""
    weight = results.get("config", {}).get("feature_weight")

    def name(model: str) -> str:   # the replay row says its feature weight: the result depends on it
        return f"replay (λ_feat {weight:g})" if model == "replay" and weight is not None else model
    lines = [[name(r["model"]), "yes" if r["data_free"] else "no", percent(r["old"]["accuracy_ci"]),
              percent(r["new"]["accuracy_ci"]) if r["model"] != "old model" else "– (never saw them)",
              percent(r["all"]["accuracy_ci"]), percent(r.get("old_retention_ci"))] for r in results["rows"]]
    table = _table(["model", "data-free", "old classes", "new classes", "all classes", "old accuracy kept"], lines)
    extra = "".join(f"\n{c['comparison']}: {points(c['difference_ci'])}" for c in results.get("comparisons", []))
    return table + "\n" + extra


TABLES = {"prune": pruning_table, "quantize": quantization_table, "continual": continual_table}


def format_results(results: Mapping) -> str:
    """The run's table, its paired comparisons and its notes (what the results must be read with)."""
    notes = "".join(f"\nnote: {note}" for note in results.get("notes", []))
    return TABLES[results["kind"]](results) + notes
