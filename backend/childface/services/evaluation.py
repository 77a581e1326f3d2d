"""How good are the decisions? `childface eval` on a labelled folder, `childface calibrate` on the gallery.

Evaluation (`evaluate`): DATASET_DIR holds one sub-folder per person. Photos
are read in name order; each photo's largest face is that person. The first
`enroll` photos of each person whose face passes the quality gate are enrolled
(as enrollment would), the rest are probes. It runs the real pipeline and the
real search (an in-memory index from `childface.index` + `identify`) and
reports:

- rank-1 identification accuracy over probes of enrolled people;
- open-set counts at the configured thresholds: correct match, wrong match,
  review, unknown (`Settings.accept_threshold`, `review_threshold`, `match_margin`);
- verification over all pairs of photos (genuine = same person, impostor =
  different people): TAR at FAR 1e-2 and 1e-3, the threshold giving each FAR,
  EER and its threshold;
- the same identification figures for each child-score aggregation (`max`,
  `mean2`), which is how `Settings.child_score`'s default was chosen.

A FAR target below 1 / (impostor pairs) cannot be resolved: the threshold is
then just above the highest impostor score, and `far_resolution` says so.

Calibration (`calibrate`): the same genuine/impostor statistics over the
enrolled gallery in the DB (templates of one child vs templates of different
children) and a proposal: accept = the threshold for the target FAR, review =
the threshold for ten times that FAR. It changes nothing; `write_env_thresholds`
is what `--apply` calls.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from childface.config import Settings
from childface.db.models import Embedding, EmbeddingModel
from childface.db.session import Database
from childface.index import create_index
from childface.services.gallery import ChildIndex, indexable_query
from childface.services.recognition import identify

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
FARS = (1e-2, 1e-3)
#: impostor pairs above this count are sampled (calibration on large galleries)
MAX_IMPOSTOR_PAIRS = 2_000_000


class EvaluationError(ValueError):
    """The data set or gallery cannot be evaluated; the message says why."""


# ---- verification statistics -----------------------------------------------


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The lowest threshold t with (impostor scores >= t) / n <= far."""
    if len(impostor) == 0:
        raise EvaluationError("no impostor pairs: at least two people are needed")
    # scores are float32: step to the next float32 so the threshold survives the comparison's cast
    ordered = np.sort(impostor.astype(np.float32))[::-1]
    allowed = int(math.floor(far * len(ordered)))
    if allowed >= len(ordered):
        return float(ordered[-1])
    return float(np.nextafter(ordered[allowed], np.float32(np.inf)))


def verification_stats(genuine: np.ndarray, impostor: np.ndarray, fars: Sequence[float] = FARS) -> dict:
    """TAR at each FAR with its threshold, EER with its threshold, pair counts."""
    if len(genuine) == 0:
        raise EvaluationError("no genuine pairs: some person needs at least two photos")
    out: dict[str, float | int] = {"genuine_pairs": int(len(genuine)), "impostor_pairs": int(len(impostor))}
    for far in fars:
        t = threshold_at_far(impostor, far)
        out[f"tar_at_far_{far:.0e}".replace("e-0", "e-")] = float(np.mean(genuine >= t))
        out[f"threshold_at_far_{far:.0e}".replace("e-0", "e-")] = t
    # EER: where the false-accept and false-reject curves cross, over every observed score
    candidates = np.unique(np.concatenate([genuine, impostor]).astype(np.float64))
    imp = np.sort(impostor.astype(np.float64))
    gen = np.sort(genuine.astype(np.float64))
    far_curve = 1.0 - np.searchsorted(imp, candidates, side="left") / len(imp)
    frr_curve = np.searchsorted(gen, candidates, side="left") / len(gen)
    best = int(np.argmin(np.abs(far_curve - frr_curve)))
    out["eer"] = float((far_curve[best] + frr_curve[best]) / 2)
    out["eer_threshold"] = round(float(candidates[best]), 6)
    out["far_resolution"] = 1.0 / len(impostor)
    return out


def pair_scores(
    vectors: np.ndarray, labels: np.ndarray, max_impostor: int = MAX_IMPOSTOR_PAIRS, seed: int = 0
):
    """Cosine scores of all same-label pairs and of different-label pairs (sampled when too many)."""
    n = len(vectors)
    labels = np.asarray(labels)
    genuine, impostor = [], []
    if n * (n - 1) // 2 <= max_impostor + n * 64:
        sims = vectors @ vectors.T
        upper = np.triu_indices(n, 1)
        same = labels[upper[0]] == labels[upper[1]]
        return sims[upper][same].astype(np.float32), sims[upper][~same].astype(np.float32)
    for label in np.unique(labels):
        group = vectors[labels == label]
        if len(group) > 1:
            genuine.append((group @ group.T)[np.triu_indices(len(group), 1)])
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, max_impostor)
    b = rng.integers(0, n, max_impostor)
    keep = labels[a] != labels[b]
    impostor = np.einsum("ij,ij->i", vectors[a[keep]], vectors[b[keep]])
    gen = np.concatenate(genuine) if genuine else np.empty(0)
    return gen.astype(np.float32), impostor.astype(np.float32)


def plot_png(genuine: np.ndarray, impostor: np.ndarray, *, title: str, thresholds: dict[str, float]) -> bytes:
    """Genuine/impostor histograms with the thresholds, and the ROC (FAR log scale): PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), dpi=100)
    hist, roc = figure.subplots(1, 2)
    bins = np.linspace(min(genuine.min(), impostor.min()), 1.0, 60)
    hist.hist(impostor, bins=bins, alpha=0.6, density=True, label=f"impostor ({len(impostor)} pairs)")
    hist.hist(genuine, bins=bins, alpha=0.6, density=True, label=f"genuine ({len(genuine)} pairs)")
    for (name, value), style in zip(thresholds.items(), ("-", "--", ":"), strict=False):
        hist.axvline(value, color="black", linestyle=style, label=f"{name} {value:.3f}")
    hist.set_xlabel("cosine similarity")
    hist.set_ylabel("density")
    hist.legend(fontsize=8)
    hist.set_title(title)
    cuts = np.unique(np.concatenate([genuine, impostor]))[::-1]
    far = np.searchsorted(np.sort(-impostor), -cuts, side="right") / len(impostor)
    tar = np.searchsorted(np.sort(-genuine), -cuts, side="right") / len(genuine)
    floor = 0.5 / len(impostor)
    roc.plot(np.maximum(far, floor), tar)
    roc.set_xscale("log")
    roc.set_xlim(floor, 1.0)
    roc.set_ylim(0.0, 1.01)
    roc.set_xlabel("false accept rate")
    roc.set_ylabel("true accept rate")
    roc.grid(True, which="both", alpha=0.3)
    roc.set_title("ROC")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# ---- evaluation on a labelled folder -----------------------------------------


@dataclass
class _Photo:
    person: int
    path: Path
    vector: np.ndarray | None  # the largest face's embedding; None when no face was found
    quality_passed: bool


def _read_dataset(dataset_dir: Path) -> list[tuple[str, list[Path]]]:
    if not dataset_dir.is_dir():
        raise EvaluationError(f"{dataset_dir} is not a folder")
    people = []
    for folder in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if photos:
            people.append((folder.name, photos))
    if len(people) < 2:
        raise EvaluationError(f"{dataset_dir} needs at least two sub-folders of photos (one per person)")
    return people


def _embed(pipeline, people: list[tuple[str, list[Path]]], batch: int) -> list[_Photo]:  # noqa: ANN001
    jobs = [(i, path) for i, (_, paths) in enumerate(people) for path in paths]
    photos = []
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        for (person, path), faces in zip(
            chunk, pipeline.process([p.read_bytes() for _, p in chunk]), strict=True
        ):
            if not faces:
                photos.append(_Photo(person, path, None, False))
                continue
            face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            photos.append(_Photo(person, path, face.embedding, face.quality.passed))
    return photos


def _identification(children: ChildIndex, probes: list[_Photo], settings: Settings) -> dict:
    """Rank-1, open-set counts, and separation: the probe's own child's score minus the best other's."""
    counts = dict.fromkeys(("correct_match", "wrong_match", "review", "unknown"), 0)
    if not probes:
        return {"rank1": None, "open_set": counts, "separation_mean": None, "separation_min": None}
    results = identify(children, np.stack([p.vector for p in probes]), settings)
    hits = 0
    separation = []
    for probe, result in zip(probes, results, strict=True):
        hits += bool(result.candidates) and result.candidates[0].child_id == probe.person
        if result.decision == "match":
            counts["correct_match" if result.child_id == probe.person else "wrong_match"] += 1
        else:
            counts[result.decision] += 1
        own = children.child_scores(probe.vector, [probe.person])[0].score
        others = [c.score for c in result.candidates if c.child_id != probe.person]
        if others:
            separation.append(own - others[0])
    return {
        "rank1": hits / len(probes),
        "open_set": counts,
        "separation_mean": round(float(np.mean(separation)), 4) if separation else None,
        "separation_min": round(float(np.min(separation)), 4) if separation else None,
    }


def evaluate(dataset_dir: Path, *, settings: Settings, pipeline, enroll: int = 1, batch: int = 16) -> dict:  # noqa: ANN001
    """Run the pipeline and search over a one-folder-per-person data set; see the module docstring."""
    if enroll < 1:
        raise EvaluationError("--enroll must be at least 1")
    people = _read_dataset(Path(dataset_dir))
    photos = _embed(pipeline, people, batch)
    found = [p for p in photos if p.vector is not None]
    gallery: list[_Photo] = []
    probes: list[_Photo] = []
    refused = 0
    position: dict[int, int] = {}
    for photo in photos:  # in name order per person
        rank = position[photo.person] = position.get(photo.person, -1) + 1
        if rank < enroll:
            if photo.vector is not None and photo.quality_passed:
                gallery.append(photo)
            else:
                refused += 1  # enrollment would refuse it: no face or failed quality gate
        elif photo.vector is not None:
            probes.append(photo)
    enrolled_people = {p.person for p in gallery}
    scorable = [p for p in probes if p.person in enrolled_people]
    report: dict = {
        "model_id": pipeline.model_id,
        "identities": len(people),
        "photos": len(photos),
        "detection_failures": len(photos) - len(found),
        "detection_failed_photos": [str(p.path) for p in photos if p.vector is None],
        "enroll": enroll,
        "enrolled_templates": len(gallery),
        "enrollment_refused": refused,
        "probes": len(scorable),
        "probes_without_enrollment": len(probes) - len(scorable),
        "thresholds": {
            "accept": settings.accept_threshold,
            "review": settings.review_threshold,
            "margin": settings.match_margin,
        },
        "child_score": settings.child_score,
    }
    by_aggregation = {}
    for aggregation in ("max", "mean2"):
        children = ChildIndex(create_index(settings, pipeline.model_id, pipeline.embedder.dim), aggregation)
        if gallery:
            children.upsert(
                list(range(len(gallery))), [p.person for p in gallery], np.stack([p.vector for p in gallery])
            )
        by_aggregation[aggregation] = _identification(children, scorable, settings)
    report.update(by_aggregation[settings.child_score])
    report["by_child_score"] = by_aggregation
    vectors = np.stack([p.vector for p in found]) if found else np.empty((0, pipeline.embedder.dim))
    genuine, impostor = pair_scores(vectors, np.array([p.person for p in found]))
    report.update(verification_stats(genuine, impostor))
    report["_scores"] = (genuine, impostor)  # for --plot; dropped before printing
    return report


# ---- calibration on the enrolled gallery ------------------------------------------


def _model_for_calibration(session, model_key: str | None) -> tuple[int, str]:  # noqa: ANN001
    if model_key is not None:
        row = session.scalar(select(EmbeddingModel.id).where(EmbeddingModel.key == model_key))
        if row is None:
            raise EvaluationError(f"no embedding model {model_key!r} in the database")
        return row, model_key
    # the model with the most stored embeddings: the one the deployment serves
    row = session.execute(
        select(EmbeddingModel.id, EmbeddingModel.key)
        .join(Embedding, Embedding.model_id == EmbeddingModel.id)
        .group_by(EmbeddingModel.id, EmbeddingModel.key)
        .order_by(func.count(Embedding.id).desc())
        .limit(1)
    ).first()
    if row is None:
        raise EvaluationError("the gallery is empty: enroll children before calibrating")
    return row.id, row.key


def calibrate(
    db: Database, settings: Settings, *, target_far: float = 1e-3, model_key: str | None = None
) -> dict:
    """Genuine/impostor statistics of the enrolled gallery and proposed thresholds (changes nothing)."""
    if not 0.0 < target_far < 1.0:
        raise EvaluationError("the target FAR must be between 0 and 1")
    with db.session() as session:
        model_row, key = _model_for_calibration(session, model_key)
        rows = session.execute(indexable_query(model_row)).all()
    if not rows:
        raise EvaluationError(f"no enrolled faces of model {key!r}")
    vectors = np.stack([np.frombuffer(r.vector, dtype="<f4") for r in rows]).astype(np.float32)
    labels = np.array([r.child_id for r in rows])
    children = len(np.unique(labels))
    genuine, impostor = pair_scores(vectors, labels)
    if children < 2 or len(genuine) == 0:
        raise EvaluationError(
            f"calibration needs two or more children and a child with two or more faces "
            f"({children} children, {len(genuine)} genuine pairs)"
        )
    review_far = min(0.5, 10 * target_far)
    stats = verification_stats(genuine, impostor, (target_far, review_far))
    accept = _ceil4(threshold_at_far(impostor, target_far))
    review = min(_ceil4(threshold_at_far(impostor, review_far)), accept)
    notes = []
    if len(impostor) * target_far < 1:
        notes.append(
            f"only {len(impostor)} impostor pairs: a FAR of {target_far:g} cannot be measured; "
            "the accept threshold is just above the highest impostor score"
        )
    return {
        "model_id": key,
        "children": children,
        "templates": len(rows),
        "target_far": target_far,
        **stats,
        "genuine": _describe(genuine),
        "impostor": _describe(impostor),
        "current": {"accept": settings.accept_threshold, "review": settings.review_threshold},
        "proposed": {  # rounded up, so the FAR stays at or below the target
            "accept": accept,
            "review": review,
            "tar_at_accept": float(np.mean(genuine >= accept)),
            "tar_at_review": float(np.mean(genuine >= review)),
            "review_far": review_far,
        },
        "notes": notes,
        "_scores": (genuine, impostor),
    }


def calibration_page(db: Database, settings: Settings, *, target_far: float = 1e-3) -> tuple[dict, bytes]:
    """For the admin's Settings page: the calibration report (JSON-ready) and its plot as PNG bytes."""
    report = calibrate(db, settings, target_far=target_far)
    genuine, impostor = report.pop("_scores")
    png = plot_png(
        genuine,
        impostor,
        title=f"enrolled gallery: {report['children']} children",
        thresholds={
            "proposed accept": report["proposed"]["accept"],
            "proposed review": report["proposed"]["review"],
        },
    )
    return report, png


def _ceil4(value: float) -> float:
    return math.ceil(value * 10_000) / 10_000


def _describe(scores: np.ndarray) -> dict[str, float]:
    return {
        "mean": round(float(scores.mean()), 4),
        "std": round(float(scores.std()), 4),
        "min": round(float(scores.min()), 4),
        "max": round(float(scores.max()), 4),
    }


def write_env_thresholds(env_file: Path, *, accept: float, review: float) -> None:
    """Set CHILDFACE_ACCEPT_THRESHOLD / CHILDFACE_REVIEW_THRESHOLD in a .env file, keeping other lines."""
    values = {"CHILDFACE_ACCEPT_THRESHOLD": f"{accept:.4f}", "CHILDFACE_REVIEW_THRESHOLD": f"{review:.4f}"}
    lines = env_file.read_text(encoding="utf-8").splitlines() if env_file.exists() else []
    out = []
    for line in lines:
        name = line.split("=", 1)[0].strip().removeprefix("export ").strip()
        if name in values:
            out.append(f"{name}={values.pop(name)}")
        else:
            out.append(line)
    out.extend(f"{name}={value}" for name, value in values.items())
    env_file.write_text("\n".join(out) + "\n", encoding="utf-8")
