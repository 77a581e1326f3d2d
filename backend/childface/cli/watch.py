"""`childface watch`: live recognition on video files, webcams and RTSP/HTTP streams.

Sources come from the arguments (`SOURCE`, named after the file, webcam or
host), from `--source NAME=URI` (repeatable), and from `--config FILE`, a YAML
(.yaml/.yml) or TOML (.toml) file:

    stride: 3            # optional: detect every 3rd frame
    embed_every: 5       # optional: embed a track's face at most every 5 frames
    sources:
      - name: front-door
        uri: rtsp://user:password@10.0.0.21/stream1
      - name: hall
        uri: 0           # webcam index
      - name: test
        uri: /videos/test.mp4
        loop: true

Options on the command line win over the file's. Exit codes: 0 when every
source ended (files) or on Ctrl+C / SIGTERM, 2 for bad arguments or
configuration, 3 when a source failed (a file that cannot be read).
"""

from __future__ import annotations

import logging
import signal
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from childface.cli import app, ensure_media_dir, fail, get_settings, migrated_database, use_threads

if TYPE_CHECKING:
    from childface.vision.video import SourceSpec

#: keys a config file may hold (anything else is a typo worth a message)
_CONFIG_KEYS = {"stride", "embed_every", "votes", "sources"}
_SOURCE_KEYS = {"name", "uri", "loop"}


def read_config(path: Path) -> dict[str, Any]:
    """A watch config file (YAML or TOML, by its suffix) as a dict, or exit with the reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            fail(f"{path}: the config file must end in .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        fail(f"{path} is not valid: {exc}")
    except Exception as exc:  # noqa: BLE001 - yaml's errors: one message for a person
        fail(f"{path} is not valid YAML: {exc}")
    if not isinstance(data, dict):
        fail(f"{path}: expected a mapping with a 'sources' list")
    unknown = set(data) - _CONFIG_KEYS
    if unknown:
        fail(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(_CONFIG_KEYS)})")
    return data


def collect_sources(
    arguments: list[str], named: list[str], config: dict[str, Any], *, loop: bool
) -> list[SourceSpec]:
    """Every source of the command line and the config file, checked, or exit with the reason."""
    from childface.vision.video import SourceError, SourceSpec

    specs = []
    try:
        for uri in arguments:
            specs.append(SourceSpec.parse(uri, loop=loop))
        for item in named:
            name, sep, uri = item.partition("=")
            if not sep or not name or not uri:
                fail(f"--source wants NAME=URI, got {item!r}")
            specs.append(SourceSpec.parse(uri, name=name, loop=loop))
        entries = config.get("sources") or []
        if not isinstance(entries, list):
            fail("the config file's 'sources' must be a list")
        for entry in entries:
            if not isinstance(entry, dict) or "uri" not in entry:
                fail(f"each configured source needs a 'uri' (and a 'name'): {entry!r}")
            unknown = set(entry) - _SOURCE_KEYS
            if unknown:
                fail(f"configured source {entry.get('name')!r}: unknown keys {sorted(unknown)}")
            repeat = bool(entry.get("loop", loop))
            specs.append(SourceSpec.parse(str(entry["uri"]), name=entry.get("name"), loop=repeat))
    except SourceError as exc:
        fail(str(exc))
    if not specs:
        fail("give at least one source: a file, a webcam index, a URL, --source NAME=URI or --config FILE")
    names = [spec.name for spec in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        fail(f"source names must differ; used more than once: {twice} (name them with --source NAME=URI)")
    return specs


@app.command()
def watch(
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SOURCE", help="Video files, webcam indexes (0, 1, ...) or rtsp:// http:// URLs."
        ),
    ] = None,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", metavar="NAME=URI", help="A named source (repeat for several)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", metavar="FILE", help="YAML or TOML file with 'sources' (see the README)."),
    ] = None,
    stride: Annotated[
        int | None, typer.Option(min=1, help="Detect faces on every N-th frame (default 3).")
    ] = None,
    embed_every: Annotated[
        int | None, typer.Option(min=1, help="Embed a track's face at most every N frames (default 5).")
    ] = None,
    loop: Annotated[bool, typer.Option("--loop", help="Start video files again at their end.")] = False,
    health_file: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Touch this file every few seconds while watching (health check)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Recognise faces on live video: one track per person passing, one decision per track.

    Writes sightings, arrivals (the first confident match of a child per day) and
    camera status to the database, and sends the configured webhooks. No frame is
    stored, except the latest annotated one when staff ask for it on the Cameras page.
    """
    if log_level.lower() not in {"debug", "info", "warning", "error"}:
        fail(f"--log-level must be debug, info, warning or error, not {log_level!r}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = read_config(config) if config is not None else {}
    specs = collect_sources(sources or [], source or [], data, loop=loop)
    from childface.services.watch import WatchOptions

    try:
        options = WatchOptions(
            stride=stride or int(data.get("stride", WatchOptions.stride)),
            embed_every=embed_every or int(data.get("embed_every", WatchOptions.embed_every)),
            votes=int(data.get("votes", WatchOptions.votes)),
            health_file=health_file,
        )
    except (TypeError, ValueError) as exc:
        fail(f"watch options: {exc}")

    from childface.services.runtime import Runtime
    from childface.services.watch import Watcher
    from childface.services.webhooks import WebhookWorker

    settings = use_threads(get_settings())  # one loop, large batches: the batch thread policy
    ensure_media_dir(settings.media_dir)
    database = migrated_database(settings)
    runtime = Runtime(settings, db=database)
    runtime.start(autosave=False)
    watcher = Watcher(runtime, specs, options)
    # SIGTERM (docker stop) and Ctrl+C end the tracks cleanly: each gets its final report
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: watcher.stop())
    worker = WebhookWorker(runtime.db, runtime.settings).start()
    from childface.vision.video import redacted

    names = ", ".join(f"{s.name} ({s.kind}: {redacted(s.uri)})" for s in specs)
    typer.echo(f"watching {names}; stride {options.stride}, run {watcher.run_id}", err=True)
    try:
        summary = watcher.run()
    finally:
        worker.stop()
        runtime.close()
        database.dispose()
    events = ", ".join(f"{k} {v}" for k, v in sorted(summary.events.items())) or "none"
    typer.echo(f"frames {summary.frames}, faces {summary.faces}, tracks {summary.tracks}, events: {events}")
    if watcher.failed:
        fail("a source failed: " + "; ".join(watcher.failed), code=3)
