"""The usage page (grouped totals with their cost) and its CSV export (the same rows, streamed).

Both show one row per group — per meter, (provider, model), agent, session or day — with its quantity of each
meter and its cost, from ``billing.selectors.usage_by_groups``, the function the read API's GET /usage uses:
the page, the CSV and the API cannot disagree.
"""

from __future__ import annotations

import csv
import html
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.http import HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import mark_safe

from billing import periods
from billing import selectors as billing_selectors
from billing.money import format_money, format_quantity
from portal.access import activate_tenant_timezone, tenant_view
from portal.forms import UsageFilterForm
from portal.windows import windows
from tenants.models import Agent
from usage import gaps
from usage.models import Meter, meter_names

USAGE_TABLE_ROWS = 2000
# What a row is, by grouping: the keys of billing.selectors.usage_by_groups, each with its page heading and
# CSV column. Grouped by model the provider comes too: the same model name can come from two providers.
GROUP_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "meter": [("meter", "Meter", "meter")],
    "model": [("provider", "Provider", "provider"), ("model", "Model", "model")],
    "agent": [("agent", "Agent", "agent")],
    "session": [("session", "Session", "session_id")],
    "day": [("day", "Day", "day")],
}


@dataclass
class UsageReport:
    """The rows of the page and the CSV: ``meters`` are the quantity columns (grouped by meter, one
    "quantity" column holds each row's own meter), ``rows`` are (group values, usage) sorted by group."""

    group_by: str
    meters: list[str]
    rows: list[tuple[tuple, billing_selectors.GroupUsage]]
    agents: dict[int, str]
    # By session the report is read a page of sessions at a time (billing.selectors.usage_by_sessions): the
    # sessions after ``after`` (None: the first page), ``next_after`` to continue from (None: the last page),
    # and the whole range's quantity per meter and Σ per-call costs (None when not known without reading every
    # session: billing.selectors.calls_total).
    after: str | None = None
    next_after: str | None = None
    range_quantity: dict[str, Decimal] | None = None
    range_cost: Decimal | None = None

    @property
    def is_paged(self) -> bool:
        return self.after is not None or self.next_after is not None

    @property
    def columns(self) -> list[tuple[str, str, str]]:
        return GROUP_COLUMNS[self.group_by]

    def quantities(self, key: tuple, usage: billing_selectors.GroupUsage) -> list[Decimal | None]:
        if self.group_by == "meter":
            return [usage.quantity.get(key[0])]
        return [usage.quantity.get(meter) for meter in self.meters]

    def total_quantities(self) -> list[Decimal]:
        totals = [Decimal(0)] * (1 if self.group_by == "meter" else len(self.meters))
        for key, usage in self.rows:
            totals = [t + (q or 0) for t, q in zip(totals, self.quantities(key, usage), strict=True)]
        return totals

    @property
    def total_cost(self) -> Decimal:
        return sum((usage.cost for _, usage in self.rows), Decimal(0))

    def label(self, name: str, value) -> str:
        """A group value as text (agents by name, days as ISO dates)."""
        if name == "agent":
            return self.agents.get(value, str(value))
        if isinstance(value, date):
            return value.isoformat()
        return value


def usage_report(
    tenant, start: date, end: date, group_by: str, filters: dict, after: str | None = None
) -> UsageReport:
    """The page's report: every group, or by session one page of sessions (those after ``after``)."""
    keys = [name for name, _, _ in GROUP_COLUMNS[group_by]]
    agents = dict(Agent.objects.for_tenant(tenant).values_list("pk", "name"))
    if group_by == "session":
        page = billing_selectors.usage_by_sessions(tenant, start, end, keys, filters, after=after)
        report = UsageReport(group_by, [], [], agents, after, page.next_after)
        groups = page.groups
        if report.is_paged:
            report.range_quantity = billing_selectors.usage_quantities(tenant, start, end, filters)
            report.range_cost = billing_selectors.calls_total(tenant, start, end, filters)
    else:
        groups = billing_selectors.usage_by_groups(tenant, start, end, keys, filters)
        report = UsageReport(group_by, [], [], agents)
    report.meters = _meters(
        report.range_quantity or {meter for usage in groups.values() for meter in usage.quantity}
    )
    report.rows = sorted(
        groups.items(),
        key=lambda item: tuple(str(report.label(k, v)) for k, v in zip(keys, item[0], strict=True)),
    )
    return report


def _meters(used) -> list[str]:
    """The meters with usage, in the catalogue's order (one removed from the catalogue since still shows)."""
    meters = [code for code in Meter.objects.values_list("code", flat=True) if code in used]
    return meters + sorted(set(used) - set(meters))


def _usage_form(request):
    tenant = request.access.tenant
    start, end = billing_selectors.invoicing.current_period(tenant)
    form = UsageFilterForm(request.GET or None, tenant=tenant, default_start=start, default_end=end)
    if not request.GET:  # show what is displayed: the current period
        defaults = {
            "group_by": "meter",
            "start": start.isoformat(),
            "end": (end - timedelta(days=1)).isoformat(),
        }
        form = UsageFilterForm(defaults, tenant=tenant, default_start=start, default_end=end)
    return form


@tenant_view()
def usage(request):
    activate_tenant_timezone(request)
    tenant = request.access.tenant
    form = _usage_form(request)
    report = None
    found_gaps: list[dict] = []
    if form.is_valid():
        data = form.cleaned_data
        report = usage_report(
            tenant, data["start"], data["end_exclusive"], data["group_by"], form.filters(), _after(request)
        )
        found_gaps = gaps.range_gaps(
            tenant.pk,
            periods.local_midnight(data["start"], tenant.timezone),
            periods.local_midnight(data["end_exclusive"], tenant.timezone),
            form.filters(),
        )
    return render(
        request,
        "portal/usage.html",
        {
            "form": form,
            "rows": bool(report and report.rows),
            "table": _usage_table(tenant, report) if report and report.rows else "",
            "truncated": bool(report) and len(report.rows) > USAGE_TABLE_ROWS,
            "pages": _pages(request, report) if report and report.is_paged else None,
            "query": _without_page(request).urlencode(),
            "ranges": _ranges(request, form),
            "gaps": found_gaps,
        },
    )


def _after(request) -> str | None:
    """The page of a report by session: the sessions after this id (absent: the first page). No session id
    holds a NUL, which PostgreSQL cannot compare: such a value means the first page too."""
    after = request.GET.get("after")
    return None if after is None or "\x00" in after else after


def _without_page(request) -> QueryDict:
    params = request.GET.copy() if request.GET else QueryDict(mutable=True)
    params.pop("after", None)
    return params


def _pages(request, report: UsageReport) -> dict:
    """The links between the pages of a report by session: the first page, and the next one if any."""
    params = _without_page(request)
    first = params.urlencode()
    following = None
    if report.next_after is not None:
        params["after"] = report.next_after
        following = params.urlencode()
    return {"first": first if report.after is not None else None, "next": following}


def _ranges(request, form) -> list[dict]:
    """The dashboard's periods as date ranges of this page (this period, the last 30 days, past periods), each
    keeping the other filters; ``current`` marks the one the form shows."""
    params = _without_page(request)
    shown = (form.data.get("start"), form.data.get("end"))
    found = []
    for window in windows(request.access.tenant, timezone.localdate()):
        # the form's end day is inclusive (the rolling window ends tomorrow, so today)
        start, end = window.start.isoformat(), (window.end - timedelta(days=1)).isoformat()
        params["start"], params["end"] = start, end
        params.setdefault("group_by", "meter")
        found.append({"label": window.label, "query": params.urlencode(), "current": shown == (start, end)})
    return found


def _usage_table(tenant, report: UsageReport) -> str:
    """The whole table's HTML, every cell escaped here: a month by session is thousands of rows, and
    rendering them through the template engine (a lookup and an escape per cell) was most of the page's time."""
    escape = html.escape  # plain str cells: the standard library's, six times faster than Django's wrapper
    currency = tenant.currency
    names = meter_names()
    quantity_heads = (
        ["Quantity"]
        if report.group_by == "meter"
        else [
            f'<span title="{escape(meter)}">{escape(names.get(meter, meter))}</span>'
            for meter in report.meters
        ]
    )
    head = (
        "".join(f"<th>{title}</th>" for _, title, _ in report.columns)
        + "".join(
            f'<th class="num{"" if report.group_by == "meter" else " meter"}">{t}</th>'
            for t in quantity_heads
        )
        + '<th class="num">Cost</th>'
    )
    lines = []
    for key, group in report.rows[:USAGE_TABLE_ROWS]:
        cells = [
            _group_cell(report, name, value, names)
            for (name, _, _), value in zip(report.columns, key, strict=True)
        ]
        cells += [
            f'<td class="num">{escape(format_quantity(q)) if q is not None else ""}</td>'
            for q in report.quantities(key, group)
        ]
        cells.append(
            f'<td class="num">{escape(format_money(group.cost, currency))}{_unpriced_mark(group)}</td>'
        )
        lines.append(f"<tr>{''.join(cells)}</tr>")
    # Grouped by meter, the rows hold different units: their quantities do not add up.
    totals = "".join(
        f'<td class="num">{"" if report.group_by == "meter" else escape(format_quantity(q))}</td>'
        for q in report.total_quantities()
    )
    span = len(report.columns)
    page_cost = escape(format_money(report.total_cost, currency))
    if report.is_paged:
        everything = "".join(
            f'<td class="num">{escape(format_quantity(report.range_quantity.get(meter, Decimal(0))))}</td>'
            for meter in report.meters
        )
        range_cost = (
            escape(format_money(report.range_cost, currency))
            if report.range_cost is not None
            else '<span class="muted" title="Sessions at the edges of these days count in part: the CSV has '
            "every session's cost\">—</span>"
        )
        foot = (
            f'<tr class="total"><td colspan="{span}">These {len(report.rows)} sessions</td>{totals}'
            f'<td class="num" data-testid="usage-page-total">{page_cost}</td></tr>'
            f'<tr class="total"><td colspan="{span}">All sessions</td>{everything}'
            f'<td class="num" data-testid="usage-total">{range_cost}</td></tr>'
        )
    else:
        foot = (
            f'<tr class="total"><td colspan="{span}">Total</td>{totals}'
            f'<td class="num" data-testid="usage-total">{page_cost}</td></tr>'
        )
    body = "\n".join(lines)
    return mark_safe(  # noqa: S308 - every cell is escaped above
        f'<div class="table-scroll"><table data-testid="usage-table"><thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody><tfoot>{foot}</tfoot></table></div>"
    )


def _unpriced_mark(group) -> str:
    """A visible marker on a row with usage no price matches (its cost covers the priced part only)."""
    if not group.unpriced:
        return ""
    what = "; ".join(f"{meter} {format_quantity(q)}" for meter, q in sorted(group.unpriced.items()))
    title = html.escape(f"No price in your plan for: {what}. Recorded, not billed yet, not in this cost.")
    return f' <span class="badge unpriced" data-testid="unpriced" title="{title}">+ unpriced</span>'


def _group_cell(report: UsageReport, name: str, value, names: dict[str, str]) -> str:
    escape = html.escape
    if name == "session" and value:
        return f'<td><a href="{escape(reverse("portal:session", args=[value]))}">{escape(value)}</a></td>'
    if name == "day":
        return f'<td class="day">{value:%a} {value.day} {value:%b}</td>'  # as the date filter's "D j M"
    if name == "meter":
        return f'<td title="{escape(value)}">{escape(names.get(value, value))}</td>'
    return f"<td>{escape(report.label(name, value) or '—')}</td>"


# Costs as the read API gives them: allocations are fractions of a cent, and rounding each row to the cent
# would make the column add up to something else than the total.
CSV_COST_PLACES = Decimal("0.000001")


class _Echo:
    def write(self, value):
        return value


def _csv_cell(value) -> str:
    text = "" if value is None else str(value)
    # Spreadsheets run cells that start like a formula; a leading quote keeps them text (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@tenant_view()
def usage_csv(request):
    tenant = request.access.tenant
    form = _usage_form(request)
    if not form.is_valid():
        return HttpResponse(
            "Invalid filters: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items()),
            status=400,
            content_type="text/plain",
        )
    data = form.cleaned_data
    start, end, group_by, filters = data["start"], data["end_exclusive"], data["group_by"], form.filters()
    if group_by == "session":
        # every session of the range, read CSV_SESSIONS_PER_READ at a time as it is sent: memory holds one
        # read's rows, never the report (a large tenant's month is 10⁵ sessions)
        report = UsageReport(
            group_by, _meters(billing_selectors.usage_quantities(tenant, start, end, filters)), [], {}
        )
        reports = _session_reports(tenant, start, end, filters, report)
    else:
        report = usage_report(tenant, start, end, group_by, filters)
        reports = iter([report])
    writer = csv.writer(_Echo())

    def stream():
        quantity_columns = ["quantity"] if report.group_by == "meter" else report.meters
        yield writer.writerow(
            [column for _, _, column in report.columns] + quantity_columns + ["cost", "currency", "unpriced"]
        )
        for part in reports:
            for key, group in part.rows:
                values = [
                    part.label(name, value) for (name, _, _), value in zip(part.columns, key, strict=True)
                ]
                values += [
                    "" if q is None else format(q.normalize(), "f") for q in part.quantities(key, group)
                ]
                values += [format(group.cost.quantize(CSV_COST_PLACES), "f"), tenant.currency]
                # meter=quantity for each meter with usage no price matches (not in cost); empty when all priced
                values.append(
                    ";".join(f"{m}={format(q.normalize(), 'f')}" for m, q in sorted(group.unpriced.items()))
                )
                yield writer.writerow([_csv_cell(v) for v in values])

    response = StreamingHttpResponse(stream(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="usage-{tenant.slug}-{data["start"]}-by-{data["group_by"]}.csv"'
    )
    return response


CSV_SESSIONS_PER_READ = 1000


def _session_reports(tenant, start: date, end: date, filters: dict, heading: UsageReport):
    """The report by session of [start, end), CSV_SESSIONS_PER_READ sessions at a time in id order (keyset: each
    read costs the same however far the export has got), each with the columns of ``heading``."""
    after, spends = None, {}  # the range's months priced once for the whole export
    while True:
        page = billing_selectors.usage_by_sessions(
            tenant, start, end, ["session"], filters, after=after, limit=CSV_SESSIONS_PER_READ, spends=spends
        )
        yield UsageReport("session", heading.meters, sorted(page.groups.items()), heading.agents)
        if page.next_after is None:
            return
        after = page.next_after
