"""``harness compare``: several finished studies side by side.

Does offline error tell which networks stay stable, and does the answer depend on how the study
was set up (on L96: what a column's network sees, its own X_k, a stencil or the whole state)?
Each study is reduced to the statistics of its own report (harness.report, harness.survival):
the share of censored candidates, Spearman's rho of validation MSE with steps to failure and its
bootstrap CI, Harrell's concordance with its CI and the Cox hazard ratio of log10 val_mse; the
studies' survival is compared with Kaplan-Meier curves and log-rank tests.
``OUT/report.md`` with PNG figures beside it holds the result. A statistic that cannot be
computed is given with its reason, never as NaN.

``run_variants`` makes the studies first: a study file with a few keys changed per variant
(harness.study.variants), each run as a whole study into ``OUT/studies/NAME``; a study that
finished earlier is not run again, so the command resumes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .atomic import atomic_write_text
from .errors import HarnessError
from .report import (CENSORED_MARKER, Study, _censored, _log_ok, _md_table, _new_figure, _num,
                     _p_is, _pval, _save, _share, _steps, _steps_axis, load_study, overall_spearman,
                     survival_inputs, usable_candidates)
from .study.variants import Variant
from .survival import (SurvivalData, concordance, cox_hazard_ratios, logrank_by_group,
                       spearman_bootstrap)

__all__ = ["StudyEntry", "StudyStats", "Comparison", "VariantRun", "load_entries",
           "default_labels", "compare", "write_comparison", "compare_studies", "run_variants",
           "FIGURES", "HR_COVARIATE"]

FIGURES: dict[str, str] = {
    "survival": "compare_survival.png",
    "statistics": "compare_statistics.png",
    "mse_vs_steps": "compare_mse_vs_steps.png",
}
HR_COVARIATE = "log10 val_mse"
RUNS_FILE = "variants.json"
#: the study keys that never make a label: the name, and where the tasks ran (the executors
#: give the same table)
_NOT_A_DIFFERENCE = ("name", "executor")


@dataclass
class StudyEntry:
    """A collected study to compare: its directory, its label, what collect wrote and its
    full configuration (study.json; empty when the directory has only results/)."""

    directory: Path
    label: str
    study: Study
    config: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None      # how long its run took (when run by `run_variants`)

    @property
    def host(self) -> str:
        return str(self.study.summary.get("host") or self.config.get("host", {}).get("name")
                   or "unknown")


@dataclass
class StudyStats:
    """One study's row of the comparison; each statistic a dict as harness.survival and
    harness.report return them (None values with a 'note' when absent)."""

    label: str
    n: int
    n_failed: int
    censored_fraction: float | None
    n_steps: int | None
    spearman: dict[str, Any]
    spearman_ci: dict[str, Any]
    concordance: dict[str, Any]
    hazard: dict[str, Any]
    failure_steps: list[int]
    data: SurvivalData


@dataclass
class Comparison:
    """The studies, their statistics and the tests between them."""

    entries: list[StudyEntry]
    stats: list[StudyStats]
    logrank: dict[str, Any]                    # all studies at once
    pairwise: list[dict[str, Any] | None]      # each study against the first (None: itself)
    notes: list[str] = field(default_factory=list)


@dataclass
class VariantRun:
    """What `run_variants` did with one variant."""

    variant: Variant
    directory: Path
    ran: bool                  # False: finished earlier, not run again
    wall_s: float | None       # of the run that made it (None: not known)


# ------------------------------------------------------------------------------------ loading

def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "study.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{path}: not readable JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _open(directory: Path) -> tuple[Study, dict[str, Any]]:
    """A study's collected results and configuration; errors name the directory and the
    command that makes what is missing."""
    if not directory.is_dir():
        raise HarnessError(f"{directory}: no such study directory")
    if not (directory / "study.json").is_file() and not (directory / "results").is_dir():
        raise HarnessError(f"{directory} is not a study directory (no study.json, no results/): "
                           f"run a study into it with `harness study CONFIG -o {directory}`")
    if not (directory / "results" / "summary.json").is_file():
        raise HarnessError(f"{directory}: the study is not collected (no results/summary.json): "
                           f"run `harness collect {directory}` (or `harness study --resume "
                           f"{directory}` to finish it)")
    return load_study(directory), _read_config(directory)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def default_labels(configs: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """Each study named by its values of the configuration keys that differ between the
    studies (``host.inputs=stencil, host.stencil_halfwidth=2``); ``names`` (the directories'
    names) where that says nothing or names two studies alike."""
    flats = [_flat(c) for c in configs]
    keys = sorted(k for k in {k for f in flats for k in f}
                  if k.split(".")[0] not in _NOT_A_DIFFERENCE)
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
    labels = [", ".join(f"{k}={_text(f.get(k))}" for k in differ) if all(configs) else ""
              for f in flats]
    if any(not label for label in labels) or len(set(labels)) < len(labels):
        labels = list(names)
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({i + 1})" for i, label in enumerate(labels)]
    return labels


def load_entries(directories: Sequence[Path | str], labels: dict[str, str] | None = None,
                 wall: dict[Path, float | None] | None = None) -> list[StudyEntry]:
    """The studies in ``directories``, labelled (``labels``: directory or its name -> label,
    overriding the default); at least two, of one host."""
    dirs = [Path(d) for d in directories]
    if len(dirs) < 2:
        raise HarnessError(f"give at least two studies to compare (got {len(dirs)}"
                           + (f": {dirs[0]}" if dirs else "") + ")")
    seen: set[Path] = set()
    for d in dirs:
        if d.resolve() in seen:
            raise HarnessError(f"{d}: the same study given twice")
        seen.add(d.resolve())
    opened = [_open(d) for d in dirs]
    names = [d.resolve().name for d in dirs]
    default = default_labels([c for _, c in opened], names)
    labels = dict(labels or {})
    entries = []
    for d, (study, cfg), name, label in zip(dirs, opened, names, default):
        chosen = next((v for k, v in labels.items()
                       if k == name or Path(k).resolve() == d.resolve()), label)
        entries.append(StudyEntry(d, chosen, study, cfg,
                                  (wall or {}).get(d.resolve())))
    unused = [k for k in labels if not any(k == e.directory.resolve().name or
                                           Path(k).resolve() == e.directory.resolve()
                                           for e in entries)]
    if unused:
        raise HarnessError(f"--label {unused[0]}=...: no study given is {unused[0]}")
    if len({e.label for e in entries}) < len(entries):
        raise HarnessError("two studies have the same label: "
                           + ", ".join(e.label for e in entries))
    hosts = {e.host for e in entries}
    if len(hosts) > 1:
        raise HarnessError("the studies are of different hosts ("
                           + ", ".join(f"{e.directory}: {e.host}" for e in entries)
                           + "); steps to failure of different models cannot be compared")
    return entries


# --------------------------------------------------------------------------------- statistics

def _study_stats(entry: StudyEntry) -> StudyStats:
    df = entry.study.candidates
    n_steps = entry.study.n_steps
    data = survival_inputs(df, n_steps)
    use = usable_candidates(df)
    mse = data.frame["val_mse"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_mse = np.where(mse > 0, np.log10(mse), np.nan)
    hazard = cox_hazard_ratios(data, {HR_COVARIATE: log_mse})[0]
    failed = np.sort(data.durations[data.events]).astype(int).tolist()
    return StudyStats(
        label=entry.label, n=data.n, n_failed=data.n_events,
        censored_fraction=data.censored_fraction, n_steps=n_steps,
        spearman=overall_spearman(df, n_steps),
        spearman_ci=spearman_bootstrap(use["val_mse"].to_numpy(dtype=float),
                                       use["steps_to_failure"].to_numpy(dtype=float)),
        concordance=concordance(data, -mse), hazard=hazard, failure_steps=failed, data=data)


def _pooled(stats: Sequence[StudyStats]) -> tuple[SurvivalData, list[tuple[str, np.ndarray]]]:
    """The studies' candidates as one survival data set, and each study's rows in it."""
    frames, cens, groups, start = [], [], [], 0
    for s in stats:
        frames.append(s.data.frame.assign(_duration=s.data.durations))
        cens.append(~s.data.events)
        groups.append((s.label, np.arange(start, start + s.n)))
        start += s.n
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    frame["steps_to_failure"] = frame.pop("_duration")
    budgets = [s.n_steps for s in stats if s.n_steps is not None]
    data = SurvivalData(durations=frame["steps_to_failure"].to_numpy(dtype=float),
                        events=~np.concatenate(cens).astype(bool), frame=frame,
                        n_steps=max(budgets) if budgets else None)
    return data, groups


def _subset(data: SurvivalData, idx: np.ndarray) -> SurvivalData:
    return SurvivalData(durations=data.durations[idx], events=data.events[idx],
                        frame=data.frame.iloc[idx].reset_index(drop=True), n_steps=data.n_steps)


def _logrank(data: SurvivalData, groups: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    empty = [label for label, idx in groups if idx.size == 0]
    if empty:
        return {"p": None, "statistic": None,
                "note": f"absent: no coupled candidate in {', '.join(empty)}"}
    idx = np.concatenate([i for _, i in groups])
    sub = _subset(data, idx)
    offsets = np.cumsum([0] + [i.size for _, i in groups])
    return logrank_by_group(sub, [(label, np.arange(offsets[k], offsets[k + 1]))
                                  for k, (label, _) in enumerate(groups)])


def compare(entries: Sequence[StudyEntry]) -> Comparison:
    """Each study's statistics and the log-rank tests between them."""
    stats = [_study_stats(e) for e in entries]
    data, groups = _pooled(stats)
    pairwise: list[dict[str, Any] | None] = [None]
    for g in groups[1:]:
        pairwise.append(_logrank(data, [groups[0], g]))
    notes = []
    budgets = {e.label: e.study.n_steps for e in entries}
    if len(set(budgets.values())) > 1:
        notes.append("The studies' step budgets differ ("
                     + ", ".join(f"{k}: {_steps(v)}" for k, v in budgets.items())
                     + "): a candidate censored at a shorter budget is known to survive less "
                       "long, so censored shares and concordances are not comparable one to "
                       "one; the Kaplan-Meier curves and log-rank tests use each candidate's "
                       "own censoring time.")
    dts = {e.label: e.study.summary.get("dt") for e in entries}
    if len({json.dumps(v) for v in dts.values()}) > 1:
        notes.append("The studies' coupled time steps differ ("
                     + ", ".join(f"{k}: {_text(v)}" for k, v in dts.items())
                     + "): steps to failure are steps, not model time.")
    for e in entries:
        notes += [f"{e.label}: {n}" for n in e.study.notes]
    return Comparison(list(entries), stats, _logrank(data, groups), pairwise, notes)


# ------------------------------------------------------------------------------------ figures

def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _fig_survival(cmp: Comparison, path: Path) -> bool:
    """Kaplan-Meier curves of the studies overlaid, one colour each, censored candidates
    marked on their curve, the 95% band shaded."""
    from lifelines import KaplanMeierFitter
    fig = _new_figure(7.0, 4.4)
    ax = fig.add_subplot()
    drawn = False
    for s, colour in zip(cmp.stats, _colours(len(cmp.stats))):
        if s.n == 0:
            continue
        kmf = KaplanMeierFitter().fit(s.data.durations, s.data.events)
        t = kmf.survival_function_.index.to_numpy()
        sf = kmf.survival_function_.iloc[:, 0].to_numpy()
        ci = kmf.confidence_interval_survival_function_
        ax.step(t, sf, where="post", color=colour, lw=1.8,
                label=f"{s.label} (n={s.n}, {_share(s.censored_fraction)} censored)")
        ax.fill_between(t, ci.iloc[:, 0].to_numpy(), ci.iloc[:, 1].to_numpy(), step="post",
                        color=colour, alpha=0.12 if len(cmp.stats) <= 3 else 0.06, lw=0)
        cens = s.data.durations[~s.data.events]
        if cens.size:
            at = kmf.survival_function_at_times(cens).to_numpy()
            ax.plot(cens, at, ls="none", marker="|", ms=10, mew=1.6, color=colour)
        drawn = True
    if not drawn:
        return False
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("steps (median over a candidate's initial conditions)")
    ax.set_ylabel("fraction of candidates not yet failed")
    title = "Kaplan-Meier survival per study (| censored at the budget)"
    if cmp.logrank["p"] is not None:
        title += f"; log-rank {_p_is(cmp.logrank['p'])}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)
    return True


def _fig_statistics(cmp: Comparison, path: Path) -> bool:
    """Spearman's rho and Harrell's C per study with their bootstrap 95% intervals."""
    import textwrap
    labels = [textwrap.fill(s.label, 28) for s in cmp.stats]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig = _new_figure(9.0, 1.6 + 0.22 * lines + 0.2 * len(labels))
    ax_rho, ax_c = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(cmp.stats))[::-1]
    drawn = False
    for yi, s, colour in zip(y, cmp.stats, _colours(len(cmp.stats))):
        rho, ci = s.spearman.get("rho"), s.spearman_ci
        if rho is not None:
            ax_rho.plot([rho], [yi], "o", color=colour)
            drawn = True
        if ci.get("low") is not None:
            ax_rho.plot([ci["low"], ci["high"]], [yi, yi], "-", color=colour, lw=2)
        c = s.concordance
        if c.get("c") is not None:
            ax_c.plot([c["c"]], [yi], "o", color=colour)
            drawn = True
        if c.get("low") is not None:
            ax_c.plot([c["low"], c["high"]], [yi, yi], "-", color=colour, lw=2)
    if not drawn:
        return False
    ax_rho.axvline(0, color="grey", lw=0.8, ls="--")
    ax_c.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax_rho.set_xlim(-1.05, 1.05)
    ax_c.set_xlim(-0.02, 1.02)
    ax_rho.set_yticks(y, labels, fontsize=8)
    ax_rho.set_ylim(-0.6, len(cmp.stats) - 0.4)
    ax_rho.set_xlabel("Spearman rho (val MSE, steps to failure)")
    ax_c.set_xlabel("Harrell's C (lower val MSE survives longer)")
    ax_rho.set_title("negative: lower offline error, more steps", fontsize=9)
    ax_c.set_title("0.5: offline error says nothing", fontsize=9)
    _save(fig, path)
    return True


def _fig_mse_vs_steps(cmp: Comparison, path: Path) -> bool:
    """Offline validation MSE against steps to failure, one panel per study, censored
    candidates as open triangles (the paper's Fig. 4a per study)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    panels = [(s, e) for s, e in zip(cmp.stats, cmp.entries) if s.n]
    if not panels:
        return False
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    fig = _new_figure(4.0 * ncols, 3.3 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    all_mse = np.concatenate([s.data.frame["val_mse"].to_numpy(dtype=float) for s, _ in panels])
    all_steps = np.concatenate([s.data.durations for s, _ in panels])
    colours = _colours(len(cmp.stats))
    for ax, (s, e) in zip(axes, panels):
        colour = colours[cmp.stats.index(s)]
        mse = s.data.frame["val_mse"].to_numpy(dtype=float)
        steps = s.data.durations
        cens = _censored(s.data.frame, s.n_steps)
        ax.scatter(mse[~cens], steps[~cens], s=22, color=colour, label="failed")
        ax.scatter(mse[cens], steps[cens], s=34, marker=CENSORED_MARKER, facecolors="none",
                   edgecolors=colour, label="censored")
        if _log_ok(all_mse):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        _steps_axis(ax, all_steps, s.n_steps)
        rho = s.spearman.get("rho")
        ax.set_title(s.label + (f"\nrho = {rho:+.2f}" if rho is not None else
                                "\nrho undefined"), fontsize=8)
        ax.set_xlabel("validation MSE", fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for k, ax in enumerate(axes[:len(panels)]):
        if k % ncols:
            ax.set_ylabel("")
    axes[0].legend(fontsize=7, loc="best")
    _save(fig, path)
    return True


# ------------------------------------------------------------------------------------- report

def _ci(low: Any, high: Any, fmt: str) -> str:
    return "–" if low is None else f"{format(low, fmt)} to {format(high, fmt)}"


def _rows(cmp: Comparison) -> tuple[list[list[str]], list[str]]:
    """The main table's rows and the reasons for its absent cells."""
    rows, why = [], []
    for s, pair in zip(cmp.stats, cmp.pairwise):
        sp, ci, c, hr = s.spearman, s.spearman_ci, s.concordance, s.hazard
        if sp["rho"] is None:
            why.append(f"{s.label}, Spearman: {sp['note']}")
        elif ci["low"] is None:
            why.append(f"{s.label}, Spearman CI: {ci['note']}")
        if c["c"] is None:
            why.append(f"{s.label}, concordance: {c['note']}")
        elif c["low"] is None:
            why.append(f"{s.label}, concordance CI: too few comparable bootstrap resamples")
        if hr["hr"] is None:
            why.append(f"{s.label}, hazard ratio: {hr['note']}")
        if pair is not None and pair["p"] is None:
            why.append(f"{s.label}, log-rank against {cmp.stats[0].label}: {pair['note']}")
        rows.append([
            s.label, str(s.n), str(s.n_failed), _share(s.censored_fraction),
            "–" if sp["rho"] is None else f"{sp['rho']:+.2f} ({_p_is(sp['p'])})",
            _ci(ci["low"], ci["high"], "+.2f"),
            "–" if c["c"] is None else f"{c['c']:.2f}",
            _ci(c["low"], c["high"], ".2f"),
            "–" if hr["hr"] is None else f"{_num(hr['hr'])} ({_num(hr['low'])} to "
                                         f"{_num(hr['high'])})",
            "reference" if pair is None else
            _pval(pair["p"]),
        ])
    return rows, why


def _failure_steps(steps: list[int], listed: int = 20) -> str:
    """The steps in full when there are few, else their median, quartiles and range."""
    if not steps:
        return "none"
    if len(steps) <= listed:
        return ", ".join(_steps(v) for v in steps)
    q1, med, q3 = np.quantile(steps, [0.25, 0.5, 0.75])
    return (f"{len(steps)} candidates, median {_steps(med)} (quartiles {_steps(q1)} and "
            f"{_steps(q3)}, range {_steps(steps[0])} to {_steps(steps[-1])})")


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())


def _report(cmp: Comparison, out: Path, figures: dict[str, str]) -> str:
    n = len(cmp.entries)
    lines = [f"# Comparison of {n} studies", "",
             "Each study's candidates (networks trained in its random search and coupled to "
             "its host), reduced to how well their offline validation error tells their "
             "steps to failure. Every statistic is that of the studies' own reports "
             "(`harness report`); see there for the candidates.", ""]
    rows = []
    for e in cmp.entries:
        s = e.study.summary
        inputs = f" (inputs: {s['inputs']})" if s.get("inputs") else ""
        report = e.directory / "report" / "report.md"
        where = (f"[{_relative(e.directory, out)}]({_relative(report, out)})"
                 if report.is_file() else _relative(e.directory, out))
        rows.append([e.label, where, f"{e.host}{inputs}", _steps(e.study.n_steps),
                     str(int((e.study.candidates["kind"] == "candidate").sum())),
                     "–" if e.wall_s is None else f"{e.wall_s:.0f} s"])
    lines += _md_table(["study", "directory (its report)", "host", "step budget",
                        "candidates", "wall time of its run"], rows)
    lines.append("")
    if cmp.notes:
        lines += ["**Notes:**"] + [f"- {note}" for note in cmp.notes] + [""]

    lines += ["## Offline error against steps to failure", ""]
    table, why = _rows(cmp)
    lines += _md_table(["study", "n", "failed", "censored", "Spearman rho (p)", "95% CI",
                        "Harrell's C", "95% CI", f"HR per SD of {HR_COVARIATE} (95% CI)",
                        f"log-rank p vs {cmp.stats[0].label}"], table)
    lines += ["",
              "n: candidates with a validation MSE and a coupled run; failed: their median run "
              "failed within the budget; the rest are censored (survived at least the budget). "
              "Spearman's rho of validation MSE with steps to failure counts the censored as "
              "tied at the budget (negative: a lower offline error goes with more steps); "
              "Harrell's C uses the censoring (the probability that of two comparable "
              "candidates the one with the lower validation MSE stays stable longer; 0.5: "
              "offline error says nothing); the hazard ratio is that of a univariate Cox model "
              "of the standardized log10 validation MSE (HR > 1: a higher offline error, an "
              "earlier failure). Intervals are 95% (bootstrap over candidates for rho and C). "
              "With few failures (fewer than ~10) read every number as a rough indication.", ""]
    if why:
        lines += ["**Absent values, and why:**"] + [f"- {w}" for w in why] + [""]
    lines += ["Steps at which the failed candidates' median runs failed:", ""]
    lines += [f"- {s.label}: {_failure_steps(s.failure_steps)}" for s in cmp.stats]
    lines.append("")
    if "statistics" in figures:
        lines += [f"![Spearman and concordance per study]({figures['statistics']})", ""]

    lines += ["## Survival of the studies' candidates", ""]
    lr = cmp.logrank
    if lr["p"] is None:
        lines.append(f"- Log-rank test over all {n} studies: {lr['note']}.")
    else:
        lines.append(f"- Log-rank test over all {n} studies (do their candidates fail at the "
                     f"same rate?): chi2 = {_num(lr['statistic'])}, {_p_is(lr['p'])}"
                     f" (df = {n - 1}); each study against {cmp.stats[0].label}: the last "
                     "column of the table above.")
    lines.append("")
    if "survival" in figures:
        lines += [f"![Kaplan-Meier curves of the studies]({figures['survival']})", ""]
    else:
        lines += ["No survival curves drawn: no study has a coupled candidate.", ""]
    if "mse_vs_steps" in figures:
        lines += ["## Offline error against steps, per study", "",
                  f"![validation MSE against steps to failure]({figures['mse_vs_steps']})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_comparison(cmp: Comparison, out: Path | str) -> Path:
    """OUT/report.md and its figures; a figure that cannot be drawn is removed if an earlier
    comparison left it. Returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    for key, draw in (("survival", _fig_survival), ("statistics", _fig_statistics),
                      ("mse_vs_steps", _fig_mse_vs_steps)):
        if draw(cmp, out / FIGURES[key]):
            made[key] = FIGURES[key]
        else:
            (out / FIGURES[key]).unlink(missing_ok=True)
    path = out / "report.md"
    atomic_write_text(path, _report(cmp, out, made))
    return path


def compare_studies(directories: Sequence[Path | str], out: Path | str,
                    labels: dict[str, str] | None = None,
                    wall: dict[Path, float | None] | None = None) -> tuple[Path, Comparison]:
    """Load, compare and write: OUT/report.md and the comparison."""
    cmp = compare(load_entries(directories, labels, wall))
    return write_comparison(cmp, out), cmp


# ----------------------------------------------------------------------------------- variants

def _finished(root: Path) -> bool:
    from .status import TaskState
    from .study.layout import StudyDir
    try:
        sd = StudyDir.open(root)
    except HarnessError:
        return False
    return all(sd.task_state(stage, 0) == TaskState.OK for stage in ("collect", "report"))


def run_variants(config: Path | str, variants: Sequence[Variant], out: Path | str,
                 executor: str | None = None, progress: bool = True) -> list[VariantRun]:
    """Each variant of the study file ``config`` as a whole study in OUT/studies/NAME, one after
    another; a finished one is not run again (its wall time is kept in OUT/variants.json).
    Every configuration is checked before the first study starts."""
    from .study.config import STAGES, config_from_dict
    from .study.layout import StudyDir
    from .study.runner import run_stages
    from .study.variants import apply_settings, read_study_toml, toml_text
    if len({v.name for v in variants}) < len(variants):
        raise HarnessError("two variants have the same name: "
                           + ", ".join(v.name for v in variants))
    out = Path(out)
    base = read_study_toml(config)
    planned = []
    for v in variants:
        data = apply_settings(base, v.settings)
        data["name"] = v.name
        cfg = config_from_dict(data, f"{config} with variant {v.name} ({v.describe()})")
        planned.append((v, cfg, toml_text(data)))
    record_path = out / RUNS_FILE
    try:
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    except ValueError:
        record = {}
    runs = []
    for v, cfg, text in planned:
        root = out / "studies" / v.name
        sd = StudyDir.create(root, cfg, text)
        if _finished(sd.root):
            print(f"harness: variant {v.name}: finished earlier in {root}, not run again",
                  file=sys.stderr)
            wall = record.get(v.name, {}).get("wall_s")
            runs.append(VariantRun(v, sd.root, False, wall))
            continue
        print(f"harness: variant {v.name} ({v.describe()}): study in {root}", file=sys.stderr)
        start = time.monotonic()
        run_stages(sd, STAGES, executor, progress=progress)
        wall = time.monotonic() - start
        runs.append(VariantRun(v, sd.root, True, wall))
        record[v.name] = {"settings": [s.text() for s in v.settings], "wall_s": round(wall, 1),
                          "directory": str(root)}
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    unfinished = [r for r in runs if not _finished(r.directory)]
    if unfinished:
        raise HarnessError("unfinished studies (failed or waiting tasks): " + "; ".join(
            f"{r.directory}: `harness status {r.directory}`, then `harness study --resume "
            f"{r.directory}`" for r in unfinished))
    return runs
