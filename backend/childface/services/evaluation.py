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

A mislabelled face (another child's face enrolled under this child) would make
the proposal worthless: its pairs with the real child's templates are
"impostor" pairs that score like the same person, and on a small gallery the
single highest impostor pair sets the accept threshold (one such face once
proposed 0.9968). So faces that look more like another child than like their
own child's other templates are set aside first (`suspect_faces`, greedily,
worst first: once the mislabelled face is out, the real child's faces no longer
look suspicious), and the report names them, with the impostor pairs that
drive the accept threshold and the weakest genuine pairs, by face id, so staff
can check and correct them.
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
#: at most this share of the gallery's faces (at least one) is set aside as suspected mislabels
MAX_SUSPECT_SHARE = 0.05
#: pairs listed in the report as driving the proposal (highest impostor, lowest genuine)
DRIVER_PAIRS = 5


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
    face_ids = np.array([r.id for r in rows])
    near = nearest_faces(vectors, labels) if len(rows) > 1 else None
    suspects = suspect_faces(vectors, labels, nearest=near) if near is not None else []
    keep = np.ones(len(rows), dtype=bool)
    keep[[s.index for s in suspects]] = False
    children = len(np.unique(labels[keep]))
    genuine, impostor = pair_scores(vectors[keep], labels[keep])
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
    if suspects:
        notes.append(
            f"{len(suspects)} face(s) look more like another child than like their own child's other faces "
            "and were left out (listed under suspect faces): check that they are enrolled under the right "
            "child"
        )
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
        "suspect_faces": [
            {"face_id": int(face_ids[s.index]), "child_id": int(labels[s.index]),
             "own_score": s.own_score, "other_face_id": int(face_ids[s.other_index]),
             "other_child_id": int(labels[s.other_index]), "other_score": s.other_score}
            for s in suspects
        ],
        "drivers": _drivers(vectors, labels, face_ids, near, keep),
        "_scores": (genuine, impostor),
    }


@dataclass(frozen=True)
class Suspect:
    """A face that looks more like another child's face than like its own child's other faces."""

    index: int
    own_score: float  # best score with its own child's other faces
    other_index: int
    other_score: float  # best score with another child's face


@dataclass(frozen=True)
class Nearest:
    """Per face, its best faces of the same child and of other children (indices and scores, best first;
    score -inf where there are fewer)."""

    own_index: np.ndarray
    own_score: np.ndarray
    other_index: np.ndarray
    other_score: np.ndarray


def nearest_faces(vectors: np.ndarray, labels: np.ndarray, k: int = 8, *, block: int = 1024) -> Nearest:
    """Each face's k best faces of its own child and of other children, in one blockwise pass
    (memory grows with the gallery, not its square)."""
    n = len(vectors)
    k = max(1, min(k, n - 1))
    out = [np.empty((n, k), dtype=dtype) for dtype in (np.int64, np.float32, np.int64, np.float32)]
    for start in range(0, n, block):
        sims = vectors[start : start + block] @ vectors.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # never itself
        same = labels[start : start + block, None] == labels[None, :]
        own = np.where(same, sims, -np.inf)
        sims[same] = -np.inf  # what is left: other children's faces (in place: no second copy)
        for offset, masked in ((0, own), (2, sims)):
            top = np.argpartition(-masked, k - 1, axis=1)[:, :k]
            scores = np.take_along_axis(masked, top, axis=1)
            order = np.argsort(-scores, axis=1)
            out[offset][start : start + block] = np.take_along_axis(top, order, axis=1)
            out[offset + 1][start : start + block] = np.take_along_axis(scores, order, axis=1)
    return Nearest(*out)


def suspect_faces(
    vectors: np.ndarray, labels: np.ndarray, *, max_share: float = MAX_SUSPECT_SHARE,
    nearest: Nearest | None = None,
) -> list[Suspect]:
    """Faces to leave out of calibration (likely mislabelled), worst first.

    A face is suspect when its best score with another child's face exceeds its
    best score with its own child's other faces (a face without a sibling
    template gives no evidence). Greedy: the face with the largest excess goes
    first, then scores are read again without it, so the real owner's faces,
    which looked like the mislabelled one, are cleared. At most `max_share` of
    the faces (at least one) are set aside.
    """
    n = len(vectors)
    limit = max(1, int(max_share * n)) if max_share > 0 else 0  # a small gallery may hold one mislabel
    if limit < 1 or n < 3:
        return []
    near = nearest if nearest is not None else nearest_faces(vectors, labels)
    removed = np.zeros(n, dtype=bool)
    out: list[Suspect] = []
    while len(out) < limit:
        mine, _ = _first_alive(near.own_index, near.own_score, removed)
        theirs, theirs_at = _first_alive(near.other_index, near.other_score, removed)
        excess = np.where(removed | ~np.isfinite(mine) | ~np.isfinite(theirs), -np.inf, theirs - mine)
        worst = int(np.argmax(excess))
        if not excess[worst] > 0:
            break
        removed[worst] = True
        out.append(Suspect(worst, round(float(mine[worst]), 4), int(theirs_at[worst]),
                           round(float(theirs[worst]), 4)))
    return out


def _first_alive(index: np.ndarray, score: np.ndarray, removed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per face, the score and index of its best neighbour not removed (-inf, -1 when none is left)."""
    alive = ~removed[index] & np.isfinite(score)
    first = np.argmax(alive, axis=1)
    rows = np.arange(len(index))
    has = alive[rows, first]
    return np.where(has, score[rows, first], -np.inf), np.where(has, index[rows, first], -1)


def _drivers(
    vectors: np.ndarray, labels: np.ndarray, face_ids: np.ndarray, near: Nearest, keep: np.ndarray
) -> dict[str, list[dict]]:
    """The pairs that set the proposal among the kept faces: the highest impostor scores (from each
    face's nearest faces of other children) and the lowest genuine scores, by face id."""
    k = near.other_index.shape[1]
    a = np.repeat(np.arange(len(vectors)), k)
    b = near.other_index.ravel()
    score = near.other_score.ravel()
    valid = np.isfinite(score) & keep[a] & keep[b]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)[valid]
    pairs, first = np.unique(pairs, axis=0, return_index=True)  # each pair is found from both sides
    impostor_scores = score[valid][first]
    top = np.argsort(-impostor_scores)[:DRIVER_PAIRS]
    genuine_pairs: list[np.ndarray] = []
    genuine_scores: list[np.ndarray] = []
    kept_labels = np.where(keep, labels, -1)
    for label in np.unique(labels[keep]):
        members = np.flatnonzero(kept_labels == label)
        if len(members) > 1:
            x, y = np.triu_indices(len(members), 1)
            genuine_pairs.append(np.stack([members[x], members[y]], axis=1))
            genuine_scores.append(np.einsum("ij,ij->i", vectors[members[x]], vectors[members[y]]))
    same = np.concatenate(genuine_pairs) if genuine_pairs else np.empty((0, 2), dtype=np.int64)
    same_scores = np.concatenate(genuine_scores) if genuine_scores else np.empty(0)
    low = np.argsort(same_scores)[:DRIVER_PAIRS]

    def described(i: int, j: int, value: float) -> dict:
        return {"face_a": int(face_ids[i]), "child_a": int(labels[i]), "face_b": int(face_ids[j]),
                "child_b": int(labels[j]), "score": round(float(value), 4)}

    return {
        "top_impostor": [described(*pairs[t], impostor_scores[t]) for t in top],
        "lowest_genuine": [described(*same[g], same_scores[g]) for g in low],
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
