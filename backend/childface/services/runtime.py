"""What a serving process holds once: settings, database, media store, face pipeline, gallery.

`Runtime` is created once per process (the API keeps it in `app.state`) and
handed to every request. The pipeline loads lazily on first use (a few seconds
on the CPU) unless one is injected — tests share one loaded pipeline across
many runtimes. The gallery serves the pipeline's embedding model: searches
never mix models (DESIGN.md invariant 4).

After every committed unit of work that may change the index, callers run
`runtime.catch_up()`: the gallery is the only writer of the index and replays
the audit events it has not seen.

The embedding model served is the database's *current* model
(services/embedding_models.py), not necessarily the configured one: on the first
start of a deployment the configured model becomes current (unless the stored
faces are of another model), and `childface switch-model` changes it for every
process. A process follows a switch (audit event `model.switched`) when it
catches up (`current_gallery`, `readiness`, `catch_up`, and once a second in the
background after `start`): it loads the new model's pipeline (same detector
settings, embedder from the model's spec) and gallery, swaps both at once and
closes the old gallery. A thread that took the pipeline before the swap keeps
getting the old model's gallery and `model_db_id` until its next `catch_up()`
(the end of a write) or for `PIN_S` seconds, so an operation that began on the
old model finishes on it: vectors of one model are never searched in, or stored
under, another.

`runtime.settings` is the *effective* configuration: the process's `Settings`
plus the thresholds an admin changed at run time (services/runtime_settings.py).
It follows such changes, made by any process, whenever the index catches up
(`current_gallery`, `readiness`), so recognition decides with them at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from childface.config import Settings
from childface.db.models import AuditEvent
from childface.db.session import Database, DatabaseError
from childface.private_files import private_dir
from childface.services.integrity import QuickReport, StartupCheck, quick_check
from childface.services.media import MediaStore
from childface.services.recovery import Housekeeper, RecoveryReport, import_scratch_root, recover
from childface.services.relations import Kinship, RelationBook
from childface.services.runtime_settings import EffectiveSettings

if TYPE_CHECKING:
    from childface.services.gallery import Gallery
    from childface.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

#: seconds an operation that took the pipeline before a model switch keeps the old model's gallery
PIN_S = 60.0
#: how often a started runtime looks for a model switch made by another process
FOLLOW_S = 1.0
#: readiness checks that decide `ready` (others inform)
REQUIRED_CHECKS = ("database", "models", "index")
#: states of the integrity check that are not a warning
INTEGRITY_QUIET = ("ok", "checking", "not checked")


@dataclass
class Readiness:
    ready: bool
    checks: dict[str, str] = field(default_factory=dict)
    #: problems that do not make the process unready (a damaged deployment still recognises)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Serving:
    """One embedding model as served: its pipeline, gallery and `embedding_models` row, swapped together."""

    key: str
    model_db_id: int
    pipeline: FacePipeline
    gallery: Gallery
    switched_at: float = 0.0


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        db: Database | None = None,
        pipeline: FacePipeline | None = None,
    ) -> None:
        self._settings = EffectiveSettings(settings)
        self._owns_db = db is None
        self.db = db if db is not None else Database(settings.database_url)
        self.media = MediaStore(settings.media_dir)
        #: a pipeline handed in (tests share one): served when it is the current model's
        self._injected = pipeline
        self._configured: FacePipeline | None = pipeline
        self._serving: Serving | None = None
        #: the model served before the last switch, for operations that began on it (see PIN_S)
        self._retired: Serving | None = None
        self._local = threading.local()
        #: audit seq up to which model switches are followed (None: not serving yet)
        self._model_seen: int | None = None
        self._switching = threading.Lock()
        #: why the configured embedder is not the one served, or why the current model cannot be served
        self.model_note: str | None = None
        self.model_problem: str | None = None
        self._background: list[threading.Thread] = []
        self._stop = threading.Event()
        self._autosaving = False
        self._init_lock = threading.Lock()
        self._housekeeper: Housekeeper | None = None
        self._relations = RelationBook()
        #: what start-up recovery found and did (None before `start`)
        self.recovery: RecoveryReport | None = None
        #: the start-up integrity check (services/integrity.py), reported by `readiness`
        self.integrity = StartupCheck(self._integrity_check, spawn=self.run_in_background)

    @classmethod
    def scratch(cls, settings: Settings, root: Path) -> Runtime:
        """A runtime on a new, migrated SQLite database and media folder under `root` (benchmarks)."""
        from childface.db.migrate import upgrade

        scratch_settings = settings.model_copy(
            update={
                "database_url": f"sqlite:///{root / 'scratch.db'}",
                "media_dir": root / "media",
                "index_dir": root / "index",
            }
        )
        runtime = cls(scratch_settings)
        upgrade(runtime.db)
        return runtime

    # --- settings ---------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings in force: the configuration plus run-time overrides (thresholds)."""
        return self._settings.current

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings.base = settings

    @property
    def configured_settings(self) -> Settings:
        """The configuration (environment, `.env`) with the current embedding model's own thresholds
        when it carries some, without run-time overrides: what applies when no override is set."""
        return self._settings.model_base

    @property
    def effective_settings(self) -> EffectiveSettings:
        return self._settings

    def reload_settings(self) -> Settings:
        """Read the run-time overrides now (after this process changed them)."""
        return self._settings.reload(self.db)

    # --- the served model: pipeline, gallery, model row ----------------------------------

    @property
    def pipeline(self) -> FacePipeline:
        """The current model's pipeline (loaded on first use). The calling thread is pinned to that
        model until its next `catch_up()`, for `PIN_S` seconds at most: its `current_gallery()` and
        `model_db_id` stay of the same model even when a switch lands meanwhile."""
        serving = self._serving_now()
        self._local.pin = (serving, time.monotonic())
        return serving.pipeline

    @property
    def pipeline_loaded(self) -> bool:
        return self._serving is not None

    @property
    def gallery(self) -> Gallery:
        """The gallery of the model this thread works with (see `pipeline`), without catching up."""
        return self._pinned().gallery

    @property
    def model_db_id(self) -> int:
        """The `embedding_models.id` stored with every embedding this thread's pipeline computes."""
        return self._pinned().model_db_id

    @property
    def model_key(self) -> str:
        """The key of the model served now (a switch changes it)."""
        return self._serving_now().key

    def _pinned(self) -> Serving:
        serving = self._serving_now()
        pin = getattr(self._local, "pin", None)
        retired = self._retired
        if pin is None or pin[0] is serving or retired is None:
            return serving
        if pin[0] is retired and time.monotonic() - pin[1] < PIN_S:
            return retired
        return serving

    def _serving_now(self) -> Serving:
        serving = self._serving
        if serving is None:
            with self._init_lock:
                if self._serving is None:
                    self._serving = self._first_serving()
                    watermark = self._serving.gallery.watermark
                    self._settings.start(self.db, watermark)
                    self._model_seen = watermark
                serving = self._serving
        return serving

    def _configured_pipeline(self) -> FacePipeline:
        if self._configured is None:
            from childface.vision.pipeline import FacePipeline

            log.info("loading face models on %s", self.configured_settings.resolved_device)
            self._configured = FacePipeline.from_settings(self._settings.base)
        return self._configured

    def _first_serving(self) -> Serving:
        """The current model's pipeline and gallery; at a deployment's first start, decides that model."""
        from childface.services import embedding_models as models

        with self.db.session() as session:
            row = models.current_row(session)
            current = None if row is None else (row.key, row.spec)
        if current is None:
            configured = self._configured_pipeline()
            embedder = configured.embedder
            choice = models.establish_current(
                self.db,
                configured=models.Identity(
                    embedder.model_id, embedder.name, embedder.weights_sha256, embedder.dim
                ),
                configured_spec=models.spec_from_settings(self._settings.base),
                reconstruct=self._reconstructed_spec,
            )
            self.model_problem = choice.problem
            if choice.problem is not None:
                log.error("embedding model: %s", choice.problem)
                return self._serve(configured, spec=models.spec_from_settings(self._settings.base))
            with self.db.session() as session:
                row = models.current_row(session)
                assert row is not None
                current = (row.key, row.spec)
        key, spec = current
        self.model_note = models.configured_note(key, spec, self._settings.base)
        if self.model_note:
            log.warning("embedding model: %s", self.model_note)
        self._settings.set_model_thresholds(models.model_thresholds(spec))
        return self._serve(self._pipeline_for(key, spec))

    def _reconstructed_spec(self, key: str) -> dict[str, Any] | None:
        """The spec of a model stored without one: the configured settings' with flip on or off, if either
        gives `key`."""
        from childface.services.embedding_models import spec_from_settings
        from childface.vision.embedders import load_embedder

        base = self._settings.base
        for flip in (base.embedder_flip_tta, not base.embedder_flip_tta):
            variant = base.model_copy(update={"embedder_flip_tta": flip})
            try:
                if load_embedder(variant).model_id == key:
                    return spec_from_settings(variant)
            except (FileNotFoundError, ValueError) as exc:
                log.warning("cannot load the configured embedder to identify model %s: %s", key, exc)
                return None
        return None

    def _pipeline_for(self, key: str, spec: dict[str, Any] | None) -> FacePipeline:
        """A pipeline whose embedder is model `key`: the injected or configured one when it is, else built
        from the model's spec. ModelUnavailable when no spec is stored or loading gives another model."""
        from childface.services.embedding_models import ModelUnavailable, settings_for_spec
        from childface.vision.pipeline import FacePipeline

        for candidate in (self._injected, self._configured):
            if candidate is not None and candidate.model_id == key:
                return candidate
        if spec is None:
            raise ModelUnavailable(f"the current embedding model {key} has no loading spec in the database")
        try:
            pipeline = FacePipeline.from_settings(settings_for_spec(self._settings.base, spec))
        except (FileNotFoundError, ValueError) as exc:
            raise ModelUnavailable(f"cannot load the current embedding model {key}: {exc}") from exc
        if pipeline.model_id != key:
            raise ModelUnavailable(
                f"loading the current embedding model {key} from its spec gave {pipeline.model_id}: "
                "its weights file changed"
            )
        return pipeline

    def _serve(self, pipeline: FacePipeline, *, spec: dict[str, Any] | None = None) -> Serving:
        """Register the pipeline's model and start its gallery (snapshot + catch-up, or a rebuild)."""
        from childface.services.gallery import Gallery, ensure_embedding_model

        embedder = pipeline.embedder
        model_db_id = ensure_embedding_model(
            self.db, key=pipeline.model_id, name=embedder.name, weights_sha256=embedder.weights_sha256,
            dim=embedder.dim, spec=spec,
        )
        gallery = Gallery(db=self.db, settings=self.settings, model_key=pipeline.model_id, dim=embedder.dim)
        gallery.start()
        return Serving(pipeline.model_id, model_db_id, pipeline, gallery, time.monotonic())

    def _follow_models(self) -> None:
        """Serve the current model if a `model.switched` (or `model.thresholds`) event has been applied."""
        serving, seen = self._serving, self._model_seen
        if serving is None or seen is None:
            return
        if self._retired is not None and time.monotonic() - serving.switched_at > PIN_S:
            self._retired = None  # no operation can still be pinned to it: free its index
        watermark = serving.gallery.watermark
        if watermark <= seen:
            return  # nothing new: no database access on the common path
        from childface.services.embedding_models import model_event_after

        with self.db.session() as session:
            event = model_event_after(session, seen, watermark)
        if event is None:
            self._model_seen = max(self._model_seen or 0, watermark)
            return
        if not self._switching.acquire(blocking=False):
            return  # another thread is loading the new model: carry on with this one meanwhile
        try:
            self._switch_to_current()
            self._model_seen = max(self._model_seen or 0, watermark)
        finally:
            self._switching.release()

    def _switch_to_current(self) -> None:
        from childface.services import embedding_models as models

        with self.db.session() as session:
            row = models.current_row(session)
            current = None if row is None else (row.key, row.spec)
        old = self._serving
        assert old is not None
        if current is None:
            return
        key, spec = current
        self._settings.set_model_thresholds(models.model_thresholds(spec))
        self._settings.reload(self.db)  # a switch may remove threshold overrides
        if key == old.key:
            return
        try:
            pipeline = self._pipeline_for(key, spec)
            new = self._serve(pipeline)
        except (models.ModelUnavailable, OSError) as exc:
            self.model_problem = f"{exc}; still serving {old.key}"
            log.error("embedding model switch to %s failed: %s", key, exc)
            return
        if self._autosaving:
            new.gallery.start_autosave()
        self.model_problem = None
        self.model_note = models.configured_note(key, spec, self._settings.base)
        self._retired, self._serving = old, new  # one assignment each: readers see the old or the new one
        log.info("embedding model switched: %s -> %s (%d faces indexed)", old.key, key, new.gallery.count)
        try:
            old.gallery.close()  # operations already on it finish there: its index stays in memory
        except OSError as exc:
            log.warning("could not save the old model's index snapshot: %s", exc)

    def run_in_background(self, name: str, target: Callable[[threading.Event], None]) -> threading.Thread:
        """Run `target(stop)` in a daemon thread that `close()` asks to stop (`stop` set) and waits for."""
        thread = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
        self._background = [t for t in self._background if t.is_alive()] + [thread]
        thread.start()
        return thread

    # --- life cycle -----------------------------------------------------------------

    def start(self, *, autosave: bool = True) -> None:
        """Check the database, recover from an unclean stop, load the models, bring the index up to date
        (idempotent).

        `autosave` runs the background threads: the gallery's (saves the index
        snapshot when it changed, keeps its FAISS structure tuned) and housekeeping
        (journaled file deletions, abandoned writes, interrupted imports).
        """
        self.db.check()
        scratch = import_scratch_root(self.settings).parent
        for folder in (self.media.root, self.settings.resolved_index_dir, scratch):
            private_dir(folder)  # biometric data: 0700, also for folders made by earlier versions
        self.recovery = recover(settings=self.settings, db=self.db, media=self.media)
        if self.recovery.anything:
            log.info("recovered after an unclean stop: %s", self.recovery.summary())
        serving = self._serving_now()  # loads the current model's pipeline and starts its gallery
        if autosave and not self._autosaving:
            self._autosaving = True
            serving.gallery.start_autosave()
            self.run_in_background("model-follower", self._follow_loop)
            if self._housekeeper is None:
                self._housekeeper = Housekeeper(settings=self.settings, db=self.db, media=self.media)
                self._housekeeper.start()
            self.integrity.start(self.db)  # off the start-up path: /readyz says "checking" meanwhile

    def _integrity_check(self) -> QuickReport:
        """The cheap integrity checks on the served model (StartupCheck runs it in the background)."""
        serving = self._serving_now()
        return quick_check(self.db, self.media, model_ids=[serving.model_db_id], gallery=serving.gallery)

    def _follow_loop(self, stop: threading.Event) -> None:
        """Background: an idle process learns of a model switch within FOLLOW_S (one indexed query)."""
        from childface.services.embedding_models import model_event_after

        while not stop.wait(FOLLOW_S):
            try:
                seen = self._model_seen
                if seen is None:
                    continue
                with self.db.session() as session:
                    event = model_event_after(session, seen)
                if event is not None:
                    self.catch_up()
            except Exception:  # noqa: BLE001 - the database may be away for a moment: try again
                log.warning("could not look for an embedding model switch", exc_info=True)

    def catch_up(self) -> None:
        """Apply committed changes to the index (and follow a model switch); call after each unit of work.

        It also ends the calling thread's pin to the model its pipeline came from (see `pipeline`):
        the operation that wrote is done, so the thread's next reads are of the current model.
        """
        serving = self._serving
        if serving is not None:
            serving.gallery.catch_up()
            self._follow_models()
        self._local.pin = None

    def current_gallery(self) -> Gallery:
        """The gallery caught up with every committed change, this process's or another's.

        Read the index through this: API replicas and imports write to the same database. After a
        model switch it is the new model's, except for a thread still pinned to the old one (`pipeline`).
        """
        serving = self._serving_now()
        serving.gallery.catch_up()
        self._settings.follow(self.db, serving.gallery.watermark)  # thresholds changed by an admin, anywhere
        self._follow_models()
        gallery = self._pinned().gallery
        if gallery is not serving.gallery:
            gallery.catch_up()
        return gallery

    def current_settings(self) -> Settings:
        """The settings in force, after catching up with changes any process made (see current_gallery)."""
        self.current_gallery()
        return self.settings

    def current_relations(self) -> Kinship:
        """Marked siblings and twins as of the index's place in the audit feed (after `current_gallery`):
        recognition decides with them without a query per photo (`services.relations.RelationBook`)."""
        return self._relations.follow(self.db, self.gallery.watermark)

    def readiness(self) -> Readiness:
        checks: dict[str, str] = {}
        try:
            self.db.check()
            checks["database"] = "ok"
        except DatabaseError as exc:
            # the probe needs no credentials: the reason (host, user) goes to the log, not the answer
            log.warning("readiness: database unreachable: %s", exc)
            checks["database"] = "unreachable"
        serving = self._serving
        checks["models"] = "ok" if serving is not None else "not loaded"
        if serving is None:
            checks["index"] = "not started"
        elif checks["database"] == "ok":
            # replicas learn of other processes' changes here too
            serving.gallery.catch_up()
            self._settings.follow(self.db, serving.gallery.watermark)
            self._follow_models()
            serving = self._serving
            with self.db.session() as session:
                head = session.scalar(select(func.max(AuditEvent.seq))) or 0
            lag = head - serving.gallery.watermark
            checks["index"] = "ok" if lag <= 0 else f"{lag} change(s) behind"
        else:
            checks["index"] = "unknown"
        if self.model_problem is not None:
            checks["models"] = self.model_problem
        elif self.model_note is not None:
            checks["model"] = self.model_note  # informs; the configured model is not required to be served
        ready = all(checks.get(name) == "ok" for name in REQUIRED_CHECKS)
        # informs, never makes the process unready: corrupt rows are not searched meanwhile
        checks["integrity"] = self.integrity.state(self.db if checks["database"] == "ok" else None)
        warnings = [] if checks["integrity"] in INTEGRITY_QUIET else [f"integrity: {checks['integrity']}"]
        return Readiness(ready=ready, checks=checks, warnings=warnings)

    def close(self) -> None:
        """Stop the background threads and save the snapshot (a restart replays only newer changes)."""
        if self._housekeeper is not None:
            self._housekeeper.stop()
            self._housekeeper = None
        self._stop.set()
        for thread in self._background:
            thread.join()
        self._background = []
        if self._serving is not None:
            try:
                self._serving.gallery.close()
            except OSError as exc:
                log.warning("could not save the index snapshot: %s", exc)
        if self._owns_db:
            self.db.dispose()
