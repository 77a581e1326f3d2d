"""`childface retention [--dry-run] [--json]`: erase children archived too long, drop stale review items.

What is due follows `CHILDFACE_RETENTION_ARCHIVED_DAYS` and `CHILDFACE_RETENTION_REVIEW_DAYS`
(services/retention.py); a running server does the same once a day by itself.

Exit codes: 0 done (or nothing due, or retention off), 1 something due could not be done now
(a child could not be erased: an import is running), 2 usage or configuration errors.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from childface.cli import app, get_settings, migrated_database


@app.command()
def retention(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what is due; change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
) -> None:
    """Erase children archived for more than CHILDFACE_RETENTION_ARCHIVED_DAYS days and drop open review
    items (with their faces and photos) and unmatched video crops older than CHILDFACE_RETENTION_REVIEW_DAYS
    days. Audited as the system (`system:retention`): one `retention.run` event and one erasure event per
    child. Off while both settings are unset."""
    from childface.services.media import MediaStore
    from childface.services.retention import plan_retention, run_retention

    settings = get_settings()
    database = migrated_database(settings)
    if settings.retention_archived_days is None and settings.retention_review_days is None:
        if as_json:
            typer.echo(json.dumps({"skipped": "retention is off"}))
        else:
            typer.echo("retention is off: set CHILDFACE_RETENTION_ARCHIVED_DAYS and/or "
                       "CHILDFACE_RETENTION_REVIEW_DAYS")
        return
    if dry_run:
        plan = plan_retention(database, settings)
        if as_json:
            typer.echo(json.dumps({"dry_run": True, **plan.to_dict()}, indent=2))
        else:
            _print_plan(plan, "due now (dry run: nothing changed)")
        return
    report = run_retention(db=database, media=MediaStore(settings.media_dir), settings=settings)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_plan(report.plan, "was due")
        dropped = len(report.review_items_dropped)
        typer.echo(f"erased {len(report.erased)} child(ren); dropped {dropped} review item(s) and "
                   f"{report.crops_dropped} video crop(s); {report.photos_deleted} photo(s) deleted "
                   f"(audit event {report.audit_seq})")
        for child, why in report.not_erased:
            typer.echo(f"  not erased now: child {child.child_id} ({child.external_id}): {why}")
    if report.not_erased:
        raise typer.Exit(1)


def _print_plan(plan, title: str) -> None:  # noqa: ANN001 - retention.RetentionPlan, imported late
    rules = []
    if plan.archived_days is not None:
        rules.append(f"children archived more than {plan.archived_days} day(s) ago are erased")
    if plan.review_days is not None:
        rules.append(f"review items and unmatched video crops older than {plan.review_days} day(s) "
                     "are dropped")
    typer.echo("; ".join(rules))
    typer.echo(f"{title}: {len(plan.children)} child(ren), {len(plan.review_items)} review item(s), "
               f"{plan.crops} video crop(s)")
    for child in plan.children:
        typer.echo(f"  child {child.child_id} ({child.external_id}), archived {child.archived_at:%Y-%m-%d}")
    for item in plan.review_items:
        typer.echo(f"  review item {item.review_id} (face {item.face_id}), {item.age_days:.0f} day(s) old")
