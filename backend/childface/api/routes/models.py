"""Embedding models (admin only): list them, re-embed every face with another one, switch the current one.

Moving a deployment to another model (services/embedding_models.py,
services/reembedding.py): `POST /models/reembed` computes the new model's
embeddings in a background thread of this server while recognition goes on with
the current model (`GET /models/reembed` shows the progress); `POST
/models/{key}/switch` then makes it current, and every API process follows
within seconds, without a restart.
"""

from __future__ import annotations

import logging
import threading

from fastapi import APIRouter

from childface.api.deps import Admin, RuntimeDep
from childface.api.schemas_models import (
    ModelList,
    ModelPublic,
    ReembedJobPublic,
    ReembedRequest,
    SwitchRequest,
    SwitchResultPublic,
)
from childface.services import embedding_models, reembedding
from childface.services.errors import InvalidInput, NotFound

router = APIRouter(prefix="/models", tags=["models"])
log = logging.getLogger(__name__)


@router.get("", response_model=ModelList)
def list_models(_: Admin, runtime: RuntimeDep) -> ModelList:
    """Every embedding model with its state, embeddings stored and coverage of the enrolled faces."""
    runtime.current_gallery()  # follow a switch another process made
    models = [ModelPublic(**m.to_dict()) for m in embedding_models.list_models(runtime.db)]
    return ModelList(models=models, serving=runtime.model_key, note=runtime.model_note)


@router.post("/reembed", response_model=ReembedJobPublic, status_code=202)
def start_reembed(body: ReembedRequest, principal: Admin, runtime: RuntimeDep) -> ReembedJobPublic:
    """Start computing a model's embedding of every enrolled and pending face, in the background.

    400 `model_unloadable` when the embedder cannot be loaded (weights missing, wrong
    format); 409 `reembed_running` while another re-embedding runs (any process).
    """
    base = runtime.effective_settings.base
    spec = embedding_models.spec_from_settings(base)
    if body.embedder is not None:
        spec.update(embedder=body.embedder, weights=None)
    if body.weights is not None:
        spec["weights"] = body.weights
    if body.arch is not None:
        spec["arch"] = body.arch
    if body.flip is not None:
        spec["flip"] = body.flip
    if spec["embedder"] == "arcface" and not spec["weights"]:
        raise InvalidInput("an arcface model needs its weights file", code="model_unloadable")
    target = reembedding.load_target(runtime.db, base, spec)
    job_id = reembedding.start_job(runtime.db, principal.actor, target.model_id)

    def work(stop: threading.Event) -> None:
        try:
            reembedding.run_job(runtime.db, runtime.media, base, job_id, target, principal.actor,
                                batch_size=body.batch_size, stop=stop)
        except Exception:  # noqa: BLE001 - recorded in the job (status failed, error); log it too
            log.exception("re-embedding job %d failed", job_id)

    runtime.run_in_background(f"reembed-{job_id}", work)
    return ReembedJobPublic(**reembedding.job(runtime.db, job_id).to_dict())


@router.get("/reembed", response_model=ReembedJobPublic)
def reembed_progress(_: Admin, runtime: RuntimeDep) -> ReembedJobPublic:
    """The latest re-embedding (running or ended): done/total, faces per second, time left, failures."""
    latest = reembedding.latest_job(runtime.db)
    if latest is None:
        raise NotFound("no re-embedding has run yet", code="no_job")
    return ReembedJobPublic(**latest.to_dict())


@router.post("/{key}/switch", response_model=SwitchResultPublic)
def switch(key: str, body: SwitchRequest, principal: Admin, runtime: RuntimeDep) -> SwitchResultPublic:
    """Make this model the current one, in every process (audited `model.switched`).

    409 `model_incomplete` when enrolled faces with a stored photo lack its embedding
    (up to 200 are computed first), `already_current`, `model_unloadable`; 404 `no_model`.
    """
    base = runtime.effective_settings.base

    def top_up(face_ids: list[int]) -> None:
        with runtime.db.session() as session:
            spec = embedding_models.model_row(session, key).spec
        target = reembedding.load_target(runtime.db, base, spec)
        reembedding.embed_missing(runtime.db, runtime.media, base, target, principal.actor, face_ids)

    result = embedding_models.switch_model(
        runtime.db, runtime.media, principal.actor, key,
        accept=body.accept_threshold, review=body.review_threshold, top_up=top_up,
    )
    runtime.catch_up()  # this process serves the new model from its next request
    return SwitchResultPublic(
        before=result.before, after=result.after, thresholds=result.thresholds or None,
        topped_up=result.topped_up, faces_without_photo=result.without_photo,
        overrides_removed=result.overrides_removed or None,
    )
