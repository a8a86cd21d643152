"""The flywheel page as one HTML document: inline CSS and SVG, no script, nothing fetched from elsewhere. Every
text from data (project ids, labels, sources, versions, reasons, addresses) is escaped; docs/page.md says what each
figure means."""
from __future__ import annotations

import statistics
from datetime import UTC, datetime
from html import escape
from typing import Any

from . import page_plots as plots
from .page import PageFigures, ProjectFigures, by_source, day_window, totals

QUALITY_BINS = 10
GATE_METRICS = {"episode_miou": "episode mIoU", "action_accuracy": "next-action accuracy",
                "parse_rate": "parse rate"}
ACTIVE = ' <span class="badge active">active</span>'
SCORER_METRICS = {"pearson": "Pearson", "mae": "MAE"}
PROGRESS = (("written", "#009E73"), ("skipped", "#999999"), ("failed", "#D55E00"))
STYLE = """
:root{--ink:#1d2433;--muted:#5b6477;--line:#e3e6ee;--card:#fff;--bg:#f4f6fa;--accent:#0072B2}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
header.top{background:#1d2433;color:#fff;padding:18px max(28px,calc((100% - 1280px)/2))}
header.top h1{margin:0 0 4px;font-size:20px}
header.top .meta{color:#c4cad8;font-size:13px}
header.top .meta b{color:#fff;font-weight:600}
nav{padding:10px max(28px,calc((100% - 1280px)/2));background:#fff;border-bottom:1px solid var(--line)}
nav a{margin-right:14px}
main{padding:20px 28px;max-width:1336px;margin:0 auto}
a{color:var(--accent)}
section.project{margin-bottom:36px}
section.project>h2{font-size:18px;margin:0 0 4px}
.summary{color:var(--muted);margin:0 0 12px}
.summary b{color:var(--ink)}
.alert{background:#fdecea;border:1px solid #f3b8b2;border-radius:6px;padding:8px 12px;margin:0 0 12px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px;min-width:0}
.card.wide{grid-column:1/-1}
.card h3{margin:0 0 2px;font-size:15px}
.hint{color:var(--muted);font-size:12.5px;margin:0 0 10px}
.none{color:var(--muted);font-style:italic;margin:18px 0}
svg.plot{max-width:100%;height:auto;display:block}
svg .grid{stroke:#e8ebf2;stroke-width:1}
svg .tick{fill:#5b6477;font-size:11px}
svg .tick.strong{fill:#1d2433;font-weight:700}
svg .count{fill:#1d2433;font-size:11px}
svg .line{fill:none;stroke-width:2}
svg .track{fill:#eef1f6}
svg .active{fill:#fff4d6}
ul.legend{list-style:none;padding:0;margin:8px 0 0;display:flex;flex-wrap:wrap;gap:4px 16px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px;vertical-align:-1px}
.table{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
tr.active td{background:#fff9e8}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;background:#eef1f6}
.badge.promoted,.badge.active{background:#d9f2e6;color:#0b5d3b}
.badge.rejected{background:#fde3da;color:#8a2f0b}
.big{font-size:22px;font-weight:650}
.reason{color:var(--muted);font-size:12px}
"""


def e(value: Any) -> str:
    return escape(str(value), quote=True)


def when(moment: float | None) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "—"


def link(url: str, text: str) -> str:
    """A link to a web address only (anything else is shown as text)."""
    if not url.startswith(("http://", "https://")):
        return e(text)
    return f'<a href="{e(url)}" target="_blank" rel="noopener noreferrer">{e(text)}</a>'


def render(figures: PageFigures) -> str:
    nav = "".join(f'<a href="#project-{e(p.project)}">project {e(p.project)}</a>' for p in figures.projects)
    body = "".join(_project(p, figures) for p in figures.projects) or (
        '<p class="none">Nothing yet: the page fills once Label Studio sends annotations (its webhook), a project is '
        "pre-annotated or a policy version is trained.</p>")
    training = "on" if figures.training is None else f"off: {figures.training}"
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<title>SegAgent flywheel</title><style>{STYLE}</style></head><body>"
            '<header class="top"><h1>SegAgent flywheel</h1><div class="meta">'
            f"tool <b>{e(figures.tool or 'off')}</b> · policy <b>{e(figures.policy or 'off')}</b>"
            f"{'' if figures.policy else ' (' + e(figures.policy_reason or '') + ')'} · quality scorer "
            f"<b>{e(figures.scorer or 'off')}</b> · training <b>{e(training)}</b> · generated {e(when(figures.generated))}"
            "</div></header>"
            f"{'<nav>' + nav + '</nav>' if len(figures.projects) > 1 else ''}<main>{body}</main></body></html>")


def _project(project: ProjectFigures, figures: PageFigures) -> str:
    active = next((v.name for v in project.policy_versions if v.active), "v0")
    trajectories = sum(totals(project.trajectories).values())
    home = f"{project.label_studio}/projects/{e(project.project)}" if project.label_studio else ""
    cards = [_over_time("trajectories", "Trajectories by source, per day", project.trajectories,
                        "What each day's annotations taught the policy: human clicks replayed, corrections of "
                        "the agent's own episodes and trajectories simulated from scratch.", "trajectories"),
             _over_time("labels", "Quality labels by source, per day", project.labels,
                        "The labels the project's quality scorer learns from, by where they came from.", "labels"),
             _preannotation(project.preannotation), _quality(project),
             _policy(project, figures), _scorers(project.scorer_versions), _worst(project)]
    return (f'<section class="project" id="project-{e(project.project)}" data-project="{e(project.project)}">'
            f"<h2>Project {link(home, project.project) if home else e(project.project)}</h2>"
            f'<p class="summary"><b data-value="annotations">{project.annotations}</b> annotations · '
            f'<b data-value="trajectories">{trajectories}</b> trajectories · active policy '
            f'<b data-value="active-policy">{e(active)}</b>'
            f"{' (scope ' + e(project.scope) + ')' if project.scope else ''}</p>{_webhook_alert(project)}"
            f'<div class="grid">{"".join(cards)}</div></section>')


def _webhook_alert(project: ProjectFigures) -> str:
    if not project.webhook_problem:
        return ""
    return ('<p class="alert" data-alert="webhook-auth">Label Studio\'s webhook to this backend could not be given '
            "the basic auth header, without which the backend refuses its events (annotations, Start training, new "
            f"tasks): {e(project.webhook_problem)}. Check it, or give it the header by hand: docs/deployment.md.</p>")


def _card(name: str, title: str, hint: str, content: str, wide: bool = False) -> str:
    return (f'<article class="card{" wide" if wide else ""}" data-card="{e(name)}"><h3>{e(title)}</h3>'
            f'<p class="hint">{e(hint)}</p>{content}</article>')


def _over_time(name: str, title: str, rows: list[dict], hint: str, noun: str) -> str:
    if not rows:
        return _card(name, title, hint, f'<p class="none">No {e(noun)} yet.</p>')
    days = day_window(rows)
    series = by_source(rows, days)
    palette = plots.colours(list(series))
    earlier = sum(int(row["count"]) for row in rows if row["day"] < days[0])
    legend = "".join(f'<li data-source="{e(source)}"><span class="swatch" style="background:{palette[source]}">'
                     f'</span>{e(source)} <b>{count}</b></li>' for source, count in totals(rows).items())
    note = f'<p class="reason">{earlier} {e(noun)} before {e(days[0])} are not drawn.</p>' if earlier else ""
    plot = plots.stacked_days(name, f"{title}, {days[0]} to {days[-1]}", days, series)
    return _card(name, title, f"{hint} Totals since the start beside each source; hover a bar for its count.",
                 f'{plot}<ul class="legend">{legend}</ul>{note}')


def _preannotation(progress: dict | None) -> str:
    title, hint = ("Pre-annotation",
                   "Tasks queued for a prediction (by /preannotate or on import), and what became of them.")
    if progress is None:
        return _card("preannotation", title, hint, '<p class="none">Not pre-annotated yet.</p>')
    total, done = progress["total"], progress["done"]
    skipped = sum(progress["skipped"].values())
    parts = [("written", progress["written"], PROGRESS[0][1]), ("skipped", skipped, PROGRESS[1][1]),
             ("failed", progress["failed"], PROGRESS[2][1])]
    bar = plots.progress_bar("preannotation", f"{done + progress['failed']} of {total} tasks finished", parts, total)
    share = round(100 * (done + progress["failed"]) / total) if total else 0
    legend = "".join(f'<li><span class="swatch" style="background:{colour}"></span>{part} <b data-value="{part}">'
                     f'{count}</b></li>' for part, count, colour in parts)
    legend += f'<li><span class="swatch" style="background:#eef1f6"></span>waiting <b data-value="remaining">' \
              f'{progress["remaining"]}</b></li>'
    pace = f"{progress['tasks_per_minute']} tasks a minute" if progress["tasks_per_minute"] else "no task finished lately"
    eta = progress["eta_seconds"]
    left = "" if eta in (None, 0) else f" · about {max(1, round(eta / 60))} min left"
    reasons = "".join(f"<li>{e(reason)}: {count}</li>" for reason, count in progress["skipped"].items())
    failures = "".join(f"<li>task {e(f['task'])}: {e(f['reason'])}</li>" for f in progress["failures"])
    extra = (f'<p class="reason">skipped because</p><ul class="reason">{reasons}</ul>' if reasons else "") + (
        f'<p class="reason">latest failures</p><ul class="reason">{failures}</ul>' if failures else "")
    return _card("preannotation", title, hint,
                 f'<p><span class="big" data-value="finished">{done + progress["failed"]} / {total}</span> tasks '
                 f"finished ({share} %) · {e(pace)}{e(left)}</p>{bar}<ul class=\"legend\">{legend}</ul>{extra}")


def _quality(project: ProjectFigures) -> str:
    title = "Annotation quality"
    hint = ("Each annotation's estimated IoU (its worst region's score from the quality scorer): mass on the left "
            "is work to review.")
    if not project.qualities:
        pending = f" ({project.unscored} annotations wait for their score)" if project.unscored else ""
        return _card("quality", title, hint, f'<p class="none">No scored annotation yet{e(pending)}.</p>')
    counts = [0] * QUALITY_BINS
    for quality in project.qualities:
        counts[min(max(int(quality * QUALITY_BINS), 0), QUALITY_BINS - 1)] += 1
    median = statistics.median(project.qualities)
    plot = plots.histogram("quality", f"{len(project.qualities)} annotations by estimated IoU", counts)
    waiting = f" · {project.unscored} not scored yet" if project.unscored else ""
    return _card("quality", title, hint,
                 f'{plot}<p><b data-value="scored">{len(project.qualities)}</b> scored · median '
                 f'<b data-value="median-quality">{median:.2f}</b>{waiting}</p>')


def _policy(project: ProjectFigures, figures: PageFigures) -> str:
    title = "Policy versions"
    hint = ("Each version trained for this project's scope, gated on held-out trajectories against the version "
            "active then: filled dots passed the gate and were promoted, hollow ones were rejected; the shaded "
            "column serves now.")
    if project.scope is None:
        return _card("policy", title, hint, '<p class="none">This project id has no policy scope.</p>', wide=True)
    trained = [v for v in reversed(project.policy_versions) if v.status != "base"]
    plot = plots.gate_lines("policy", f"gate figures of {len(trained)} versions",
                            [(v.name, v.gate.get("candidate") or {}, v.status == "promoted", v.active)
                             for v in trained], GATE_METRICS) if trained else \
        '<p class="none">No version trained yet: the base policy serves.</p>'
    rows = "".join(
        f'<tr class="{"active" if v.active else ""}" data-version="{e(v.name)}"><td><b>{e(v.name)}</b>'
        f'{ACTIVE if v.active else ""}</td>'
        f'<td><span class="badge {e(v.status)}">{e(v.status)}</span></td><td class="num">{e(when(v.created))}</td>'
        + "".join(f'<td class="num">{_versus(v.gate, metric)}</td>' for metric in (*GATE_METRICS, "click_distance"))
        + f'<td class="reason">{e(v.reason)}</td></tr>' for v in project.policy_versions)
    shared = " (shared by every project)" if project.scope == "shared" else ""
    table = ('<div class="table"><table><tr><th>version</th><th>status</th><th>trained</th>'
             + "".join(f"<th>{e(name)}</th>" for name in (*GATE_METRICS.values(), "click distance"))
             + f"<th>why</th></tr>{rows}</table></div>")
    legend = _metric_legend(GATE_METRICS) if trained else ""
    return _card("policy", title + shared, hint, plot + legend + table, wide=True)


def _scorers(versions: list[dict] | None) -> str:
    title = "Quality scorer versions"
    hint = ("The project's own quality scorers, each fitted on its quality labels and gated on held-out labels "
            "against the scorer active then (Pearson: higher is better; MAE: lower is better). v0 is the shipped "
            "scorer.")
    if versions is None:
        return _card("scorers", title, hint, '<p class="none">This project id has no scorer of its own.</p>')
    fitted = [v for v in versions if (v.get("gate") or {}).get("candidate")]
    plot = plots.gate_lines("scorers", f"gate figures of {len(fitted)} scorer versions",
                            [(str(v.get("version")), v["gate"]["candidate"], v.get("status") == "promoted",
                              bool(v.get("active"))) for v in fitted], SCORER_METRICS) if fitted else ""
    rows = "".join(
        f'<tr class="{"active" if v.get("active") else ""}" data-version="{e(v.get("version"))}">'
        f'<td><b>{e(v.get("version"))}</b>{ACTIVE if v.get("active") else ""}</td>'
        f'<td><span class="badge {e(v.get("status") or "")}">{e(v.get("status") or "—")}</span></td>'
        f'<td class="num">{e(_moment(v.get("created_at")))}</td><td class="num">{e(v.get("labels", "—"))}</td>'
        + "".join(f'<td class="num">{_versus(v.get("gate") or {}, metric)}</td>' for metric in SCORER_METRICS)
        + f'<td class="reason">{e((v.get("gate") or {}).get("reason") or "")}{_unservable(v)}</td></tr>'
        for v in reversed(versions))
    table = ('<div class="table"><table><tr><th>version</th><th>status</th><th>fitted</th><th>labels</th>'
             + "".join(f"<th>{e(name)}</th>" for name in SCORER_METRICS.values())
             + f"<th>why</th></tr>{rows}</table></div>")
    return _card("scorers", title, hint, plot + (_metric_legend(SCORER_METRICS) if fitted else "") + table)


def _metric_legend(metrics: dict[str, str]) -> str:
    return '<ul class="legend">' + "".join(
        f'<li><span class="dot" style="background:{colour}"></span>{e(name)}</li>'
        for name, colour in zip(metrics.values(), plots.PALETTE, strict=False)) + (
        '<li class="reason">filled: promoted · hollow: rejected · shaded: active</li></ul>')


def _unservable(version: dict) -> str:
    """Why a scorer version cannot be served (the shipped scorer scores in its place), when it cannot."""
    why = version.get("unservable")
    return f' <span class="badge rejected">not served: {e(why)}</span>' if why else ""


def _versus(gate: dict, metric: str) -> str:
    """The candidate's figure, and the compared version's beside it."""
    candidate, against = gate.get("candidate") or {}, gate.get("active") or {}
    if not isinstance(candidate, dict) or metric not in candidate:
        return "—"
    versus = f' <span class="reason">vs {float(against[metric]):.3f}</span>' if metric in against else ""
    return f"{float(candidate[metric]):.3f}{versus}"


def _moment(value: Any) -> str:
    return when(float(value)) if isinstance(value, int | float) else str(value or "—")


def _worst(project: ProjectFigures) -> str:
    title = "Worst annotations"
    hint = "The lowest-scored annotations, worst first: open each task in Label Studio to review it."
    if not project.worst:
        return _card("worst", title, hint, '<p class="none">No scored annotation yet.</p>')
    rows = "".join(
        f'<tr data-task="{e(row["task_id"])}"><td class="num">{float(row["quality"]):.3f}</td>'
        f'<td>{link(row.get("link") or "", "task " + str(row["task_id"]))}</td>'
        f'<td class="num">{e(row["annotation_id"])}</td><td>{e(row.get("labels") or "")}</td></tr>'
        for row in project.worst)
    return _card("worst", title, hint, '<div class="table"><table><tr><th>estimated IoU</th><th>task</th>'
                                       f"<th>annotation</th><th>labels</th></tr>{rows}</table></div>")
