"""The report every distillation shares, one row per run: student and teacher accuracy with their 95% intervals,
ratio, minutes, where the images came from, the precision the KD ran in. Used by Distill's result and by Runs."""
from __future__ import annotations

from typing import Mapping, Sequence

import streamlit as st

from dfkd_core.stats import Interval
from pages.views.labels import as_sentence


FELL_BACK = " ⚠"   # marks a KD precision other than the one asked for; the table's caption says which


def result_row(summary: Mapping, name: str = "") -> dict:
    """The report every method shares: one table row, each accuracy beside its 95% interval over the test images.
    Narrow enough to fit the page: intervals without their estimate again, the precision in a word."""
    def number(key):
        v = summary.get(key)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def percent(key):   # in points, so every accuracy shows two decimals ("87.50%", not "87.5%" beside "83.89%")
        v = number(key)
        return None if v is None else 100 * v

    def interval(key, spec):
        stored = summary.get(f"{key}_ci")
        if not isinstance(stored, dict):
            return "–"
        ci = Interval.from_dict(stored)
        return f"{ci.low:{spec}} – {ci.high:{spec}}" if ci.defined else ci.format(spec)
    made, pool = number("images_synthesized"), number("pool_size")
    images = (f"{pool:,} reused" if pool and not made else f"{made:,} made" if made is not None else "–")
    precision = str(summary.get("kd_precision", "–"))   # 'float32 (bf16 asked for, but this CPU has no ...)'
    return {"run": name, "method": summary.get("method"), "student": summary.get("student"),
            "student acc": percent("student_accuracy"), "student 95% CI": interval("student_accuracy", ".2%"),
            "teacher acc": percent("teacher_accuracy"), "ratio": number("ratio"),
            "ratio 95% CI": interval("ratio", ".3f"), "minutes": number("wall_minutes"), "images": images,
            "KD in": precision.split(" ")[0].replace("bfloat16", "bf16") + (FELL_BACK if "asked for" in precision
                                                                            else "")}


# The run's long name kept to a medium column (whole on hover): at full width it pushed the last columns off a
# 1280-px screen.
RESULT_COLUMNS = {"run": st.column_config.TextColumn(width="medium", help="the distillation run (partial: stopped "
                                                     "before its end, its student measured as it was)"),
                  "student acc": st.column_config.NumberColumn(format="%.2f%%", help="the student's accuracy on "
                                                               "the whole real test set"),
                  "student 95% CI": st.column_config.TextColumn(help="95% percentile-bootstrap interval over the "
                                                                "test images"),
                  "teacher acc": st.column_config.NumberColumn(format="%.2f%%", help="the teacher's accuracy on "
                                                               "the same test images"),
                  "ratio 95% CI": st.column_config.TextColumn(help="95% interval of the ratio, teacher and student "
                                                              "resampled together on the same images"),
                  "ratio": st.column_config.NumberColumn(format="%.3f",
                                                         help="student accuracy ÷ teacher accuracy"),
                  "minutes": st.column_config.NumberColumn(format="%.2f", help="wall time of this run (a pool's "
                                                           "synthesis, when reused, is not in it)"),
                  "images": st.column_config.TextColumn(help="synthetic images the student learned from: made in "
                                                        "this run, or reused from a pool made before"),
                  "KD in": st.column_config.TextColumn(help="the number format the student's training computed in: "
                                                       "float32 (full precision) or bf16 (half the bits, faster "
                                                       "where the hardware has it)")}


def show_results(summaries: Sequence[Mapping], names: Sequence[str]) -> None:
    """The results table of these runs' summaries; under it, in words, a precision other than the one asked for."""
    rows = [result_row(s, n) for s, n in zip(summaries, names)]
    st.dataframe(rows, hide_index=True, column_config=RESULT_COLUMNS)
    fallbacks = sorted({str(s.get("kd_precision")) for s, row in zip(summaries, rows) if FELL_BACK in row["KD in"]})
    if fallbacks:
        st.caption(f"{FELL_BACK.strip()} KD computed in " + "; in ".join(fallbacks) + ".")
    for summary, name in zip(summaries, names):   # why a student may have learned less than it could
        for key in ("teacher_note", "diagnosis", "pool_note"):
            if summary.get(key):
                st.warning((f"**{name}**: " if len(summaries) > 1 else "") + as_sentence(summary[key]))
        if summary.get("reproducibility_note"):
            st.caption((f"**{name}**: " if len(summaries) > 1 else "") + as_sentence(summary["reproducibility_note"]))
