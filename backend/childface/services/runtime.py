"""What a serving process holds once: settings, database, media store, face pipeline, gallery.

`Runtime` is created once per process (the API keeps it in `app.state`) and
handed to every request. The pipeline loads lazily on first use (a few seconds
on the CPU) unless one is injected — tests share one loaded pipeline across
many runtimes. The gallery serves the pipeline's embedding model: searches
never mix models (DESIGN.md invariant 4).

After every committed unit of work that may change the index, callers run
`runtime.catch_up()`: the gallery is the only writer of the index and replays
the audit events it has not seen.

`runtime.settings` is the *effective* configuration: the process's `Settings`
plus the thresholds an admin changed at run time (services/runtime_settings.py).
It follows such changes, made by any process, whenever the index catches up
(`current_gallery`, `readiness`), so recognition decides with them at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from childface.config import Settings
from childface.db.models import AuditEvent
from childface.db.session import Database, DatabaseError
from childface.private_files import private_dir
from childface.services.media import MediaStore
from childface.services.recovery import Housekeeper, RecoveryReport, import_scratch_root, recover
from childface.services.runtime_settings import EffectiveSettings

if TYPE_CHECKING:
    from childface.services.gallery import Gallery
    from childface.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    ready: bool
    checks: dict[str, str] = field(default_factory=dict)


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
        self._pipeline = pipeline
        self._gallery: Gallery | None = None
        self._model_db_id: int | None = None
        self._init_lock = threading.Lock()
        self._housekeeper: Housekeeper | None = None
        #: what start-up recovery found and did (None before `start`)
        self.recovery: RecoveryReport | None = None

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
        """The configuration (environment, `.env`) without run-time overrides."""
        return self._settings.base

    @property
    def effective_settings(self) -> EffectiveSettings:
        return self._settings

    def reload_settings(self) -> Settings:
        """Read the run-time overrides now (after this process changed them)."""
        return self._settings.reload(self.db)

    # --- lazily built parts ------------------------------------------------------

    @property
    def pipeline(self) -> FacePipeline:
        if self._pipeline is None:
            with self._init_lock:
                if self._pipeline is None:
                    from childface.vision.pipeline import FacePipeline

                    log.info("loading face models on %s", self.settings.resolved_device)
                    self._pipeline = FacePipeline.from_settings(self.settings)
        return self._pipeline

    @property
    def pipeline_loaded(self) -> bool:
        return self._pipeline is not None

    @property
    def gallery(self) -> Gallery:
        if self._gallery is None:
            pipeline = self.pipeline
            with self._init_lock:
                if self._gallery is None:
                    from childface.services.gallery import Gallery, ensure_embedding_model

                    embedder = pipeline.embedder
                    self._model_db_id = ensure_embedding_model(
                        self.db,
                        key=pipeline.model_id,
                        name=embedder.name,
                        weights_sha256=embedder.weights_sha256,
                        dim=embedder.dim,
                    )
                    gallery = Gallery(
                        db=self.db, settings=self.settings, model_key=pipeline.model_id, dim=embedder.dim
                    )
                    gallery.start()
                    self._settings.start(self.db, gallery.watermark)
                    self._gallery = gallery
        return self._gallery

    @property
    def model_db_id(self) -> int:
        """The `embedding_models.id` of the pipeline's embedder (stored with every embedding)."""
        self.gallery  # noqa: B018 - registers the model on first use
        assert self._model_db_id is not None
        return self._model_db_id

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
        if autosave:
            self.gallery.start_autosave()
            if self._housekeeper is None:
                self._housekeeper = Housekeeper(settings=self.settings, db=self.db, media=self.media)
                self._housekeeper.start()
        else:
            self.gallery  # noqa: B018 - loads the pipeline and starts the gallery

    def catch_up(self) -> None:
        """Apply committed changes to the index; call after each unit of work."""
        if self._gallery is not None:
            self._gallery.catch_up()

    def current_gallery(self) -> Gallery:
        """The gallery caught up with every committed change, this process's or another's.

        Read the index through this: API replicas and imports write to the same database.
        """
        gallery = self.gallery
        gallery.catch_up()
        self._settings.follow(self.db, gallery.watermark)  # thresholds changed by an admin, anywhere
        return gallery

    def current_settings(self) -> Settings:
        """The settings in force, after catching up with changes any process made (see current_gallery)."""
        self.current_gallery()
        return self.settings

    def readiness(self) -> Readiness:
        checks: dict[str, str] = {}
        try:
            self.db.check()
            checks["database"] = "ok"
        except DatabaseError as exc:
            # the probe needs no credentials: the reason (host, user) goes to the log, not the answer
            log.warning("readiness: database unreachable: %s", exc)
            checks["database"] = "unreachable"
        checks["models"] = "ok" if self.pipeline_loaded else "not loaded"
        if self._gallery is None:
            checks["index"] = "not started"
        elif checks["database"] == "ok":
            # replicas learn of other processes' changes here too
            self._gallery.catch_up()
            self._settings.follow(self.db, self._gallery.watermark)
            with self.db.session() as session:
                head = session.scalar(select(func.max(AuditEvent.seq))) or 0
            lag = head - self._gallery.watermark
            checks["index"] = "ok" if lag <= 0 else f"{lag} change(s) behind"
        else:
            checks["index"] = "unknown"
        return Readiness(ready=all(value == "ok" for value in checks.values()), checks=checks)

    def close(self) -> None:
        """Stop the background threads and save the snapshot (a restart replays only newer changes)."""
        if self._housekeeper is not None:
            self._housekeeper.stop()
            self._housekeeper = None
        if self._gallery is not None:
            try:
                self._gallery.close()
            except OSError as exc:
                log.warning("could not save the index snapshot: %s", exc)
        if self._owns_db:
            self.db.dispose()
