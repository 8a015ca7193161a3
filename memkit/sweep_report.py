"""Reports over sweep folders: mean ± std per cell, AUC over memory, plot, failures, comparison.

A cell is one combination of a sweep's axis values other than ``seed``;
its runs are the seeds. A *method* is a cell without its budget, and the
MEMO paper's (Zhou et al., "A Model or 603 Exemplars", ICLR 2023) summary of
a method across memory scales is the area under its accuracy-versus-total-MB
curve (AUC), divided by the MB range so that it reads as the mean accuracy
over that range. The report has a panel per stream (the values of the axes
whose key starts with ``stream``, or else the config's stream name), because
budgets are only comparable within one stream.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from memkit.budget import parse_size
from memkit.io import atomic_path, write_text_atomic
from memkit.results import DATABASE, ResultStore

METRICS = ("final_average", "forgetting", "model_nbytes", "memory_nbytes", "items", "wall_s")
FORMATS = ("md", "csv", "json")


def load_records(directories: Iterable[str | Path]) -> list[dict]:
    """Every run recorded in the sweep folders (a run id met twice counts once)."""
    records = {}
    for directory in directories:
        if not (Path(directory) / DATABASE).exists():
            raise FileNotFoundError(f"{directory}: no {DATABASE}; expected a sweep folder "
                                    f"written by 'memkit sweep'")
        with ResultStore(directory) as store:
            records |= {r["id"]: r for r in store.get()}
    return list(records.values())


def rows_of(records: Sequence[dict]) -> tuple[list[str], list[dict]]:
    """Axis keys (first-seen order) and one flat row per run: axis labels, status, metrics."""
    keys = list(dict.fromkeys(k for record in records for k in record["axes"]))
    panels = [_panel(r) for r in records]
    named = {k for k in keys if all(
        _named_axis([r["axes"][k] for r, p in zip(records, panels, strict=True)
                     if p == panel and k in r["axes"]]) for panel in set(panels))}
    rows = []
    for record, panel in zip(records, panels, strict=True):
        labels = {k: v["name"] if k in named else _label(v) for k, v in record["axes"].items()}
        rows.append({**labels, **record["metrics"], "status": record["status"],
                     "id": record["id"], "error": record["error"], "budget": _budget(record),
                     "panel": panel})
    return keys, rows


def _named_axis(values: list) -> bool:
    """Every value is a mapping with a ``name``, and within a panel distinct values have
    distinct names: such an axis (``learner: [{name: er, ...}, {name: derpp, alpha: 0.3,
    ...}]``) is labelled by the names."""
    if not all(isinstance(v, Mapping) and "name" in v for v in values):
        return False
    distinct = {_label(v): v["name"] for v in values}
    return len(set(distinct.values())) == len(distinct)


def _panel(record: Mapping) -> str:
    """The stream axes' values, or the stream's name when no axis varies it."""
    streams = [str(_label(v)) for k, v in record["axes"].items() if k.startswith("stream")]
    if streams:
        return " / ".join(streams)
    stream = record["config"].get("stream")
    return str(stream.get("name", "all")) if isinstance(stream, Mapping) else "all"


def _budget(record: Mapping) -> int | None:
    try:
        return parse_size(record["config"]["budget"])
    except (KeyError, TypeError, ValueError):
        return None


def _label(value):
    """An axis value as a hashable cell label (mappings and lists as compact JSON)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def summarise(rows: Iterable[dict], keys: Sequence[str],
              metrics: Sequence[str] = METRICS) -> list[dict]:
    """Mean and standard deviation of each metric per cell of ``keys`` (ok runs only)."""
    cells = defaultdict(list)
    for row in rows:
        if row["status"] == "ok":
            cells[tuple(row.get(k) for k in keys)].append(row)
    out = []
    for cell, members in sorted(cells.items(), key=lambda kv: tuple(map(_order, kv[0]))):
        entry = dict(zip(keys, cell, strict=True)) | {"runs": len(members)}
        for metric in metrics:
            values = np.array([m[metric] for m in members], dtype=float)
            entry[metric], entry[f"{metric}_std"] = values.mean(), values.std()
        out.append(entry)
    return out


def _order(value) -> tuple:
    """Numbers before strings, numbers by value (a budget of 2e5 sorts before 1.5e6)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if number else (1, 0, str(value))


def area_under_budget_curve(budgets_mb: Sequence[float], accuracy: Sequence[float]) -> float:
    """Trapezoidal area under accuracy versus total memory (MB), divided by the MB range.

    The division makes it the mean accuracy over the memory range, comparable
    between grids with different ranges; a single budget gives its accuracy.
    """
    x, y = np.asarray(budgets_mb, dtype=float), np.asarray(accuracy, dtype=float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    if len(x) == 1 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def build_report(records: Sequence[dict]) -> dict:
    """Cells, AUC per method and failures of the runs in ``records``."""
    axes, rows = rows_of(records)
    method = _independent([k for k in axes if k not in ("seed", "budget")
                           and not k.startswith("stream")], rows)
    cells = summarise(rows, keys=["panel", *method, "budget"])
    for cell in cells:
        cell["method"] = " / ".join(str(cell[k]) for k in method) or "all"
    failures = _failures([r for r in rows if r["status"] != "ok"], method)
    budgets = defaultdict(set)
    for row in rows:
        if row["budget"] is not None:
            budgets[row["panel"]].add(row["budget"])
    return {"axes": axes, "cells": cells, "budgets": {k: sorted(v) for k, v in budgets.items()},
            "auc": _auc(cells, rows), "failures": failures}


def _failures(rows: list[dict], method: list[str]) -> list[dict]:
    """Runs not ok, one entry per panel, method, budget, status and reason, seeds counted."""
    groups = defaultdict(list)
    for r in rows:
        name = " / ".join(str(r.get(k)) for k in method) or "all"
        groups[(r["panel"], name, r["budget"], r["status"], _last_line(r))].append(r["id"])
    return [{"panel": p, "method": m, "budget": b, "status": s, "reason": e, "runs": ids}
            for (p, m, b, s, e), ids in groups.items()]


def _independent(keys: list[str], rows: list[dict]) -> list[str]:
    """Drop axes whose value follows from an earlier axis (a zip's companions), per panel."""
    kept = []
    for key in keys:
        if not any(_determines(k, key, rows) for k in kept):
            kept.append(key)
    return kept


def _determines(a: str, b: str, rows: list[dict]) -> bool:
    """Within each panel, the value of axis ``a`` fixes the value of axis ``b``."""
    seen = {}
    return all(seen.setdefault((r["panel"], r.get(a)), r.get(b)) == r.get(b) for r in rows)


def _last_line(row: Mapping) -> str:
    lines = (row.get("error") or "").strip().splitlines()
    return lines[-1] if lines else ""


def _auc(cells: list[dict], rows: list[dict]) -> list[dict]:
    """Per panel and method: AUC over every budget of the panel, a misfit or failure
    scoring 0, and over the budgets at which every method of the panel has a score."""
    out = []
    for name in sorted({c["panel"] for c in cells}):
        members = [c for c in cells if c["panel"] == name]
        budgets = sorted({r["budget"] for r in rows if r["panel"] == name
                          and r["budget"] is not None})
        scores = {(c["method"], c["budget"]): c["final_average"] for c in members}
        methods = list(dict.fromkeys(c["method"] for c in members))
        common = [b for b in budgets if all((m, b) in scores for m in methods)]
        for m in methods:
            every = [scores.get((m, b), 0.0) for b in budgets]
            out.append({"panel": name, "method": m,
                        "auc_all": area_under_budget_curve(_mb(budgets), every),
                        "auc_common": (area_under_budget_curve(
                            _mb(common), [scores[(m, b)] for b in common]) if common else None),
                        "common_mb": [common[0] / 1e6, common[-1] / 1e6] if common else None})
    return out


def _mb(budgets: Sequence[int]) -> list[float]:
    return [b / 1e6 for b in budgets]


def markdown(report: Mapping) -> str:
    """Per panel a methods × budgets table of final accuracy, then every cell's metrics,
    AUC per method and the runs that did not finish ok."""
    parts = [_pivot(report["cells"], name, report["budgets"][name]) for name in _panels(report)]
    parts.append(_table(["panel", "method", "budget", "final avg", "forgetting", "model KB",
                         "memory KB", "items", "wall s", "runs"],
                        [[c["panel"], c["method"], _mb_label(c["budget"]),
                          f"{c['final_average']:.3f} ± {c['final_average_std']:.3f}",
                          f"{c['forgetting']:.3f}", f"{c['model_nbytes'] / 1e3:.1f}",
                          f"{c['memory_nbytes'] / 1e3:.1f}", f"{c['items']:.0f}",
                          f"{c['wall_s']:.1f}", c["runs"]] for c in report["cells"]]))
    parts.append(_table(["panel", "method", "AUC, all budgets (misfit = 0)",
                         "AUC, budgets where all fit", "range (MB)"],
                        [[a["panel"], a["method"], f"{a['auc_all']:.3f}",
                          _maybe(a["auc_common"]), _range(a["common_mb"])]
                         for a in report["auc"]]))
    if report["failures"]:
        parts.append(_table(["panel", "method", "budget", "status", "runs", "reason"],
                            [[f["panel"], f["method"], _mb_label(f["budget"]), f["status"],
                              ", ".join(f["runs"]), f["reason"].replace("|", "\\|")]
                             for f in report["failures"]]))
    return "\n\n".join(parts) + "\n"


def _panels(report: Mapping) -> list[str]:
    return list(dict.fromkeys(c["panel"] for c in report["cells"]))


def _pivot(cells: list[dict], panel: str, budgets: list[int]) -> str:
    members = [c for c in cells if c["panel"] == panel]
    by = {(c["method"], c["budget"]): c for c in members}
    rows = [[m, *(_mean_std(by.get((m, b))) for b in budgets)]
            for m in dict.fromkeys(c["method"] for c in members)]
    title = (f"**{panel}**: final average accuracy, mean ± std over seeds (runs), "
             f"by total budget (model + memory)")
    return title + "\n\n" + _table(["method", *(_mb_label(b) for b in budgets)], rows)


def _mean_std(cell: Mapping | None) -> str:
    if cell is None:
        return "—"
    return f"{cell['final_average']:.3f} ± {cell['final_average_std']:.3f} ({cell['runs']})"


def _mb_label(nbytes: int | None) -> str:
    return "—" if nbytes is None else f"{nbytes / 1e6:.4g} MB"


def _maybe(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _range(mb: Sequence[float] | None) -> str:
    return "—" if not mb else f"{mb[0]:.3g}–{mb[1]:.3g}"


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def to_csv(report: Mapping) -> str:
    """One CSV row per cell: its axis values, runs, and each metric's mean and std."""
    cells = report["cells"]
    columns = list(dict.fromkeys(k for c in cells for k in c))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(cells)
    return buffer.getvalue()


def render(report: Mapping, fmt: str) -> str:
    """The report as ``md``, ``csv`` (cells only) or ``json`` text."""
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "md":
        return markdown(report)
    return to_csv(report) if fmt == "csv" else json.dumps(report, indent=1) + "\n"


def plot(report: Mapping, path: str | Path) -> None:
    """Final average accuracy against total budget, one line per method, a panel per stream."""
    panels = _panels(report)
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4),
                             squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=False):
        members = [c for c in report["cells"] if c["panel"] == panel]
        for method in dict.fromkeys(c["method"] for c in members):
            line = sorted((c for c in members if c["method"] == method),
                          key=lambda c: c["budget"])
            ax.errorbar([c["budget"] / 1e6 for c in line], [c["final_average"] for c in line],
                        yerr=[c["final_average_std"] for c in line], marker="o", capsize=3,
                        label=method)
        ax.set(title=panel, xlabel="total budget: model + memory (MB)",
               ylabel="final average accuracy", xscale="log", ylim=(0, 1))
        budgets = [b / 1e6 for b in report["budgets"].get(panel, [])]
        ax.set_xticks(budgets, [f"{b:.3g}" for b in budgets])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(Path(path), ".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def compare(a: Sequence[dict], b: Sequence[dict]) -> dict:
    """Two sweeps side by side: per shared cell and per method, A, B and B − A."""
    ra, rb = build_report(a), build_report(b)
    return {"cells": _paired(ra["cells"], rb["cells"], ("panel", "method", "budget"),
                             "final_average"),
            "auc": _paired(ra["auc"], rb["auc"], ("panel", "method"), "auc_all"),
            "only_a": len(ra["cells"]) - len(_shared(ra["cells"], rb["cells"])),
            "only_b": len(rb["cells"]) - len(_shared(rb["cells"], ra["cells"]))}


def _key(entry: Mapping, keys: Sequence[str]) -> tuple:
    return tuple(entry[k] for k in keys)


def _shared(xs: list[dict], ys: list[dict]) -> list[dict]:
    keys = ("panel", "method", "budget")
    other = {_key(y, keys) for y in ys}
    return [x for x in xs if _key(x, keys) in other]


def _paired(xs: list[dict], ys: list[dict], keys: Sequence[str], metric: str) -> list[dict]:
    other = {_key(y, keys): y for y in ys}
    return [dict(zip(keys, _key(x, keys), strict=True))
            | {"a": x[metric], "b": other[_key(x, keys)][metric],
               "delta": other[_key(x, keys)][metric] - x[metric]}
            for x in xs if _key(x, keys) in other]


def render_comparison(comparison: Mapping, fmt: str, names: Sequence[str]) -> str:
    """The comparison as ``md``, ``csv`` (cells) or ``json`` text."""
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        return json.dumps(comparison | {"names": list(names)}, indent=1) + "\n"
    if fmt == "csv":
        return to_csv({"cells": comparison["cells"]})
    a, b = names
    cells = _table(["panel", "method", "budget", f"A: {a}", f"B: {b}", "B − A"],
                   [[c["panel"], c["method"], _mb_label(c["budget"]), f"{c['a']:.3f}",
                     f"{c['b']:.3f}", f"{c['delta']:+.3f}"] for c in comparison["cells"]])
    auc = _table(["panel", "method", "AUC A", "AUC B", "B − A"],
                 [[x["panel"], x["method"], f"{x['a']:.3f}", f"{x['b']:.3f}",
                   f"{x['delta']:+.3f}"] for x in comparison["auc"]])
    note = (f"cells only in A: {comparison['only_a']}, only in B: {comparison['only_b']}")
    return f"final average accuracy\n\n{cells}\n\nAUC over memory\n\n{auc}\n\n{note}\n"


def write_sweep_report(directories: Sequence[str | Path], out: str | Path,
                       fmt: str = "md") -> tuple[Path, Path, str]:
    """Write ``report.<fmt>`` and ``report.png`` for the sweep folders into ``out``."""
    report = build_report(load_records(directories))
    text = render(report, fmt)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path, png = out / f"report.{fmt}", out / "report.png"
    write_text_atomic(path, text)
    plot(report, png)
    return path, png, text
