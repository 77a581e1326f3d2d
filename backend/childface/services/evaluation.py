"""How good are the decisions? `childface eval` on a labelled folder, `childface calibrate` on the gallery.

Evaluation (`evaluate`): DATASET_DIR holds one sub-folder per person. Photos
are read in name order (taken as time order); each photo's largest face is
that person. A share of the people (`strangers`, default 0.2, drawn with
`seed`) is left out of the gallery: all their photos are stranger probes. Of
the others, the first `enroll` photos whose face passes the quality gate are
enrolled (as enrollment would), the rest are genuine probes. It runs the real
pipeline and the real search (an exact in-memory index + `identify`, the
API's decision) and reports:

- rank-1 identification accuracy over genuine probes;
- open-set rates at the current thresholds (`Settings.accept_threshold`,
  `review_threshold`, `match_margin`): genuine probes end in correct match,
  wrong match, review or unknown; strangers in wrong match (any match),
  review or unknown;
- the same per number of templates per person (`enroll` as a list, e.g.
  1, 2, 3, 5; the first gives the headline figures);
- the automatic template policies replayed over the probes in time order
  (`simulate_auto_templates`, with `templates.template_verdict`);
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
the threshold for ten times that FAR. Or, with a target wrong-match rate, the
open-set view: every template searched against the rest of the gallery
(`leave_out_probes`: itself left out = a genuine probe, its whole child left
out = an impostor probe), accept = the lowest threshold at which at most that
share of impostor probes ends in a match at the current margin, with the
review and unknown rates this costs genuine probes. It changes nothing;
`write_env_thresholds` is what `--apply` calls.

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
from childface.db.models import Embedding, EmbeddingModel, ModelState
from childface.db.session import Database
from childface.index import FaissIndex
from childface.services.gallery import ChildIndex, ChildScore, indexable_query
from childface.services.recognition import Identification, decide, identify
from childface.services.templates import TEMPLATE_CAP, template_verdict

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
FARS = (1e-2, 1e-3)
#: share of the people in a data set left out of the gallery as strangers (`--strangers`)
DEFAULT_STRANGERS = 0.2
#: impostor pairs above this count are sampled (calibration on large galleries)
MAX_IMPOSTOR_PAIRS = 2_000_000
#: genuine and impostor leave-out searches above this count each are sampled (--target-wrong-match)
MAX_LEAVE_OUT_PROBES = 5_000
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

#: genuine probes end in one of these; a stranger's match is always wrong
OUTCOMES = ("correct_match", "wrong_match", "review", "unknown")
STRANGER_OUTCOMES = ("wrong_match", "review", "unknown")
#: the automatic template policies the evaluation simulates (`Settings.auto_templates`)
SIMULATED_POLICIES = ("confirmed", "confident")


@dataclass
class _Photo:
    person: int
    rank: int  # position among the person's photos (name order: time order)
    path: Path
    vector: np.ndarray | None  # the largest face's embedding; None when no face was found
    quality_passed: bool


@dataclass
class _Split:
    """One enrollment size: the gallery and the probes searched against it."""

    enroll: int
    gallery: list[_Photo]
    refused: int  # enrollment photos enrollment would refuse (no face, quality gate)
    genuine: list[_Photo]  # later photos of people with at least one template
    without_enrollment: int  # later photos of enrolled people none of whose photos passed
    strangers: list[_Photo]  # every photo with a face of a person left out of the gallery


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


def pick_strangers(n_people: int, fraction: float, seed: int = 0) -> list[int]:
    """The people (indices in name order) left out of the gallery: round(fraction x n), at least one
    when fraction > 0, drawn with `seed`; at least two people must stay enrolled."""
    if not 0.0 <= fraction < 1.0:
        raise EvaluationError("--strangers must be at least 0 and below 1")
    count = 0 if fraction == 0 else max(1, round(fraction * n_people))
    if n_people - count < 2:
        raise EvaluationError(
            f"--strangers {fraction:g} leaves {n_people - count} of {n_people} people to enroll; "
            "at least two are needed"
        )
    return sorted(np.random.default_rng(seed).choice(n_people, count, replace=False).tolist())


def _embed(pipeline, people: list[tuple[str, list[Path]]], batch: int) -> list[_Photo]:  # noqa: ANN001
    jobs = [(i, rank, path) for i, (_, paths) in enumerate(people) for rank, path in enumerate(paths)]
    photos = []
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        for (person, rank, path), faces in zip(
            chunk, pipeline.process([p.read_bytes() for _, _, p in chunk]), strict=True
        ):
            if not faces:
                photos.append(_Photo(person, rank, path, None, False))
                continue
            face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            photos.append(_Photo(person, rank, path, face.embedding, face.quality.passed))
    return photos


def _split(photos: list[_Photo], enroll: int, strangers: set[int]) -> _Split:
    gallery: list[_Photo] = []
    later: list[_Photo] = []
    refused = 0
    for photo in photos:
        if photo.person in strangers:
            continue
        if photo.rank < enroll:
            if photo.vector is not None and photo.quality_passed:
                gallery.append(photo)
            else:
                refused += 1  # enrollment would refuse it: no face or failed quality gate
        elif photo.vector is not None:
            later.append(photo)
    enrolled = {p.person for p in gallery}
    genuine = [p for p in later if p.person in enrolled]
    return _Split(
        enroll=enroll,
        gallery=gallery,
        refused=refused,
        genuine=genuine,
        without_enrollment=len(later) - len(genuine),
        strangers=[p for p in photos if p.person in strangers and p.vector is not None],
    )


def _memory_gallery(dim: int, aggregation: ChildScore, gallery: list[_Photo]) -> ChildIndex:
    """An exact in-memory child index of these templates (face id = position): never the
    deployment's own index or collections, whatever backend it is configured with."""
    children = ChildIndex(FaissIndex("evaluation", dim), aggregation)
    if gallery:
        children.upsert(
            list(range(len(gallery))), [p.person for p in gallery], np.stack([p.vector for p in gallery])
        )
    return children


def _rates(counts: dict[str, int]) -> dict:
    """{"probes": n, outcome: share of n (4 decimals; None without probes), ..., "counts": counts}."""
    n = sum(counts.values())
    return {"probes": n, **{k: round(v / n, 4) if n else None for k, v in counts.items()}, "counts": counts}


def _outcome(result: Identification, person: int) -> str:
    if result.decision == "match":
        return "correct_match" if result.child_id == person else "wrong_match"
    return result.decision


def _identification(
    children: ChildIndex, probes: list[_Photo], strangers: list[_Photo], settings: Settings
) -> dict:
    """Rank-1, open-set rates of genuine probes and of strangers (decisions by `identify`, the
    API's), and separation: the probe's own child's score minus the best other child's."""
    genuine = dict.fromkeys(OUTCOMES, 0)
    hits = 0
    separation = []
    if probes:
        for probe, result in zip(probes, identify(children, np.stack([p.vector for p in probes]), settings),
                                 strict=True):
            hits += bool(result.candidates) and result.candidates[0].child_id == probe.person
            genuine[_outcome(result, probe.person)] += 1
            own = children.child_scores(probe.vector, [probe.person])[0].score
            others = [c.score for c in result.candidates if c.child_id != probe.person]
            if others:
                separation.append(own - others[0])
    unknown_people = dict.fromkeys(STRANGER_OUTCOMES, 0)
    if strangers:
        for result in identify(children, np.stack([p.vector for p in strangers]), settings):
            unknown_people["wrong_match" if result.decision == "match" else result.decision] += 1
    return {
        "rank1": round(hits / len(probes), 4) if probes else None,
        "open_set": {"genuine": _rates(genuine), "strangers": _rates(unknown_people)},
        "separation_mean": round(float(np.mean(separation)), 4) if separation else None,
        "separation_min": round(float(np.min(separation)), 4) if separation else None,
    }


def _by_templates(split: _Split, figures: dict) -> dict:
    """One row of the per-enrollment-size table."""
    genuine, strangers = figures["open_set"]["genuine"], figures["open_set"]["strangers"]
    return {
        "enroll": split.enroll,
        "templates": len(split.gallery),
        "probes": genuine["probes"],
        "rank1": figures["rank1"],
        **{k: genuine[k] for k in OUTCOMES},
        "strangers": {k: strangers[k] for k in STRANGER_OUTCOMES},
    }


def simulate_auto_templates(split: _Split, settings: Settings, dim: int) -> dict:
    """The automatic template policies replayed over the probes in time order.

    Probes come in rounds (every person's next photo, strangers included), each searched against
    the gallery as it stands then. After each decision the policy (`templates.template_verdict`,
    the function the service uses) may add the probe as a template: a genuine probe ending in
    review is confirmed by staff under its true person; a stranger in review is dismissed; a match
    is a recognition ('confident' only) and goes to the child it matched, right or wrong. Beyond
    `max_templates_per_child` the child's oldest added template is retired; the enrolled photos
    are never retired (staff enrollments younger than `stale_template_days`). No relatives.
    """
    probes = sorted(split.genuine + split.strangers, key=lambda p: (p.rank, p.person))
    stranger_ids = {p.person for p in split.strangers}
    out: dict[str, dict] = {}
    for policy in SIMULATED_POLICIES:
        policy_settings = settings.model_copy(update={"auto_templates": policy})
        children = _memory_gallery(dim, settings.child_score, split.gallery)
        vectors = {i: p.vector for i, p in enumerate(split.gallery)}
        added: dict[int, list[int]] = {}  # child -> its added templates, oldest first
        genuine = dict.fromkeys(OUTCOMES, 0)
        strangers = dict.fromkeys(STRANGER_OUTCOMES, 0)
        refused: dict[str, int] = {}
        right = wrong = retired = 0
        for probe in probes:
            (result,) = identify(children, probe.vector[None, :], policy_settings)
            if probe.person in stranger_ids:
                strangers["wrong_match" if result.decision == "match" else result.decision] += 1
            else:
                genuine[_outcome(result, probe.person)] += 1
            if result.decision == "match":
                child, confirmed = result.child_id, False
            elif result.decision == "review" and probe.person not in stranger_ids:
                child, confirmed = probe.person, True
            else:
                continue
            own = [c.score for c in result.candidates if c.child_id == child]
            templates = [f for f, owner in zip(*children.faces(), strict=True) if owner == child]
            best = float(max(vectors[f] @ probe.vector for f in templates)) if templates else None
            ok, reason = template_verdict(
                confirmed=confirmed, score=own[0] if own else None, margin=result.margin,
                quality_ok=probe.quality_passed, best_similarity_to_child_templates=best,
                settings=policy_settings,
            )
            if ok and len(templates) >= settings.max_templates_per_child:
                ok, reason = bool(added.get(child)), TEMPLATE_CAP
                if ok:  # the oldest template the policy added makes room
                    children.remove([added[child].pop(0)])
                    retired += 1
            if not ok:
                refused[reason] = refused.get(reason, 0) + 1
                continue
            face_id = len(vectors)
            vectors[face_id] = probe.vector
            children.upsert([face_id], [child], probe.vector[None, :])
            added.setdefault(child, []).append(face_id)
            right, wrong = (right + 1, wrong) if child == probe.person else (right, wrong + 1)
        out[policy] = {
            "genuine": _rates(genuine),
            "strangers": _rates(strangers),
            "templates_added": right + wrong,
            "templates_added_to_wrong_child": wrong,
            "templates_retired": retired,
            "not_added": dict(sorted(refused.items())),
        }
    return {"enroll": split.enroll, "configured": settings.auto_templates, "probes": len(probes), **out}


def _enroll_sizes(enroll: int | Sequence[int]) -> list[int]:
    sizes = [enroll] if isinstance(enroll, int) else list(dict.fromkeys(enroll))
    if not sizes or min(sizes) < 1:
        raise EvaluationError("--enroll must be at least 1")
    return sizes


def evaluate(
    dataset_dir: Path,
    *,
    settings: Settings,
    pipeline,  # noqa: ANN001 - FacePipeline is imported late (torch)
    enroll: int | Sequence[int] = 1,
    strangers: float = DEFAULT_STRANGERS,
    seed: int = 0,
    batch: int = 16,
) -> dict:
    """Run the pipeline and search over a one-folder-per-person data set; see the module docstring."""
    sizes = _enroll_sizes(enroll)
    people = _read_dataset(Path(dataset_dir))
    held_out = pick_strangers(len(people), strangers, seed)
    photos = _embed(pipeline, people, batch)
    found = [p for p in photos if p.vector is not None]
    dim = pipeline.embedder.dim
    splits = [_split(photos, size, set(held_out)) for size in sizes]
    main = splits[0]
    report: dict = {
        "model_id": pipeline.model_id,
        "identities": len(people),
        "photos": len(photos),
        "detection_failures": len(photos) - len(found),
        "detection_failed_photos": [str(p.path) for p in photos if p.vector is None],
        "held_out": {"fraction": strangers, "seed": seed, "people": [people[i][0] for i in held_out]},
        "enroll": main.enroll,
        "enrolled_templates": len(main.gallery),
        "enrollment_refused": main.refused,
        "probes": len(main.genuine),
        "probes_without_enrollment": main.without_enrollment,
        "stranger_probes": len(main.strangers),
        "thresholds": {
            "accept": settings.accept_threshold,
            "review": settings.review_threshold,
            "margin": settings.match_margin,
        },
        "child_score": settings.child_score,
    }
    by_aggregation = {
        aggregation: _identification(
            _memory_gallery(dim, aggregation, main.gallery), main.genuine, main.strangers, settings
        )
        for aggregation in ("max", "mean2")
    }
    report.update(by_aggregation[settings.child_score])
    report["by_child_score"] = by_aggregation
    rows = [_by_templates(main, by_aggregation[settings.child_score])]
    for split in splits[1:]:
        children = _memory_gallery(dim, settings.child_score, split.gallery)
        rows.append(_by_templates(split, _identification(children, split.genuine, split.strangers, settings)))
    report["by_templates"] = rows
    report["auto_templates"] = simulate_auto_templates(main, settings, dim)
    vectors = np.stack([p.vector for p in found]) if found else np.empty((0, dim))
    genuine, impostor = pair_scores(vectors, np.array([p.person for p in found]))
    report.update(verification_stats(genuine, impostor))
    report["_scores"] = (genuine, impostor)  # for --plot; dropped before printing
    return report


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _outcomes(rates: dict, outcomes: Sequence[str]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {_share(rates[k])}" for k in outcomes)


def report_lines(report: dict) -> list[str]:
    """`evaluate`'s report in a few lines for people (--json prints all of it)."""
    held = report["held_out"]["people"]
    thresholds = report["thresholds"]
    genuine, strangers = report["open_set"]["genuine"], report["open_set"]["strangers"]
    lines = [
        f"{report['identities']} people ({len(held)} left out as strangers: {', '.join(held) or 'none'}), "
        f"{report['photos']} photos, {report['detection_failures']} without a face ({report['model_id']})",
        f"enroll {report['enroll']}: {report['enrolled_templates']} templates, {report['probes']} genuine "
        f"probes, {report['stranger_probes']} stranger probes",
        "rank-1: " + ("-" if report["rank1"] is None else f"{report['rank1']:.4f}")
        + f" (child score {report['child_score']}; "
        + ", ".join(f"{k}: {_share(v['rank1'])}" for k, v in report["by_child_score"].items()) + ")",
        f"at accept {thresholds['accept']} / review {thresholds['review']} / margin {thresholds['margin']}:",
        f"  genuine probes ({genuine['probes']}): {_outcomes(genuine, OUTCOMES)}",
        f"  strangers ({strangers['probes']}): {_outcomes(strangers, STRANGER_OUTCOMES)}",
        "templates per person:",
    ]
    for row in report["by_templates"]:
        lines.append(
            f"  {row['enroll']}: {row['probes']} probes, rank-1 {_share(row['rank1'])}, "
            f"{_outcomes(row, OUTCOMES)}; strangers {_outcomes(row['strangers'], STRANGER_OUTCOMES)}"
        )
    auto = report["auto_templates"]
    lines.append(f"automatic templates from enroll {auto['enroll']}, {auto['probes']} probes in time order "
                 f"(configured: {auto['configured']}):")
    for policy in SIMULATED_POLICIES:
        sim = auto[policy]
        lines.append(
            f"  {policy}: {_outcomes(sim['genuine'], OUTCOMES)}; strangers "
            f"{_outcomes(sim['strangers'], STRANGER_OUTCOMES)}; {sim['templates_added']} templates added "
            f"({sim['templates_added_to_wrong_child']} to the wrong child)"
        )
    lines.append(
        f"verification over {report['genuine_pairs']} genuine / {report['impostor_pairs']} impostor pairs: "
        f"TAR {report['tar_at_far_1e-2']:.4f} at FAR 1e-2 (threshold {report['threshold_at_far_1e-2']:.4f}), "
        f"{report['tar_at_far_1e-3']:.4f} at FAR 1e-3 (threshold {report['threshold_at_far_1e-3']:.4f}), "
        f"EER {report['eer']:.4f} at {report['eer_threshold']}"
    )
    return lines


# ---- calibration on the enrolled gallery ------------------------------------------


def _model_for_calibration(session, model_key: str | None) -> tuple[int, str]:  # noqa: ANN001
    if model_key is not None:
        row = session.scalar(select(EmbeddingModel.id).where(EmbeddingModel.key == model_key))
        if row is None:
            raise EvaluationError(f"no embedding model {model_key!r} in the database")
        return row, model_key
    current = session.execute(
        select(EmbeddingModel.id, EmbeddingModel.key).where(EmbeddingModel.state == ModelState.current)
    ).first()
    if current is not None:  # the model the deployment serves
        return current.id, current.key
    # none marked yet (before the first start): the model with the most stored embeddings
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


@dataclass(frozen=True)
class LeaveOutProbes:
    """The enrolled gallery searched with itself: each genuine probe is a template searched with that
    template left out (its child keeps the others), each impostor probe a template searched with its
    whole child left out. Results come from `identify`, so decisions at other thresholds are
    `decide(score, margin, ...)` of the same searches."""

    genuine: list[tuple[int, Identification]]  # (the probe's own child, its search)
    impostor: list[Identification]

    def rates(self, settings: Settings) -> dict[str, dict]:
        """Open-set rates at these settings' thresholds: genuine and impostor probes."""
        genuine = dict.fromkeys(OUTCOMES, 0)
        for child, result in self.genuine:
            decision = decide(result.score, result.margin, settings)
            if decision == "match":
                genuine["correct_match" if result.candidates[0].child_id == child else "wrong_match"] += 1
            else:
                genuine[decision] += 1
        impostor = dict.fromkeys(STRANGER_OUTCOMES, 0)
        for result in self.impostor:
            decision = decide(result.score, result.margin, settings)
            impostor["wrong_match" if decision == "match" else decision] += 1
        return {"genuine": _rates(genuine), "impostor": _rates(impostor)}

    def accept_for_wrong_match(self, rate: float, settings: Settings) -> float | None:
        """The lowest accept threshold at which at most `rate` of the impostor probes end in match at
        the settings' margin; None when the margin alone keeps every impostor probe from a match."""
        anything = settings.model_copy(update={"accept_threshold": -1.0, "review_threshold": -1.0})
        margin_passed = [
            r.score for r in self.impostor if r.candidates and decide(r.score, r.margin, anything) == "match"
        ]
        could_match = np.sort(np.array(margin_passed, dtype=np.float32))[::-1]
        allowed = int(math.floor(rate * len(self.impostor)))
        if allowed >= len(could_match):
            return None
        # scores are float32: the next float32 up, so the threshold survives the comparison's cast
        return float(np.nextafter(could_match[allowed], np.float32(np.inf)))


def leave_out_probes(
    vectors: np.ndarray, labels: np.ndarray, settings: Settings, *, limit: int = MAX_LEAVE_OUT_PROBES,
    seed: int = 0,
) -> LeaveOutProbes:
    """`LeaveOutProbes` of a gallery (at most `limit` of each kind, drawn with `seed`)."""
    rng = np.random.default_rng(seed)
    children = ChildIndex(FaissIndex("calibration", vectors.shape[1]), settings.child_score)
    children.upsert(list(range(len(vectors))), labels.tolist(), vectors)
    impostor: list[Identification] = []
    for child in rng.permutation(np.unique(labels)):
        if len(impostor) >= limit:
            break
        everyone = np.flatnonzero(labels == child)
        children.remove(everyone.tolist())
        impostor += identify(children, vectors[everyone[: limit - len(impostor)]], settings)
        children.upsert(everyone.tolist(), [int(child)] * len(everyone), vectors[everyone])
    sizes = dict(zip(*np.unique(labels, return_counts=True), strict=True))
    eligible = np.array([i for i, label in enumerate(labels) if sizes[label] > 1], dtype=np.int64)
    if len(eligible) > limit:
        eligible = np.sort(rng.choice(eligible, limit, replace=False))
    genuine: list[tuple[int, Identification]] = []
    for i in eligible.tolist():
        children.remove([i])
        genuine.append((int(labels[i]), identify(children, vectors[i : i + 1], settings)[0]))
        children.upsert([i], [int(labels[i])], vectors[i : i + 1])
    return LeaveOutProbes(genuine, impostor)


def calibrate(
    db: Database,
    settings: Settings,
    *,
    target_far: float = 1e-3,
    target_wrong_match: float | None = None,
    model_key: str | None = None,
) -> dict:
    """Genuine/impostor statistics of the enrolled gallery and proposed thresholds (changes nothing).

    With `target_wrong_match` the accept threshold is the lowest at which at most that share of the
    impostor probes (`leave_out_probes`) ends in a match at the current margin; the review threshold
    stays the current one (at most the accept), and the report adds the open-set rates of genuine and
    impostor probes at the current and the proposed thresholds (`wrong_match`, `proposed.open_set`).
    """
    if not 0.0 < target_far < 1.0:
        raise EvaluationError("the target FAR must be between 0 and 1")
    if target_wrong_match is not None and not 0.0 <= target_wrong_match < 1.0:
        raise EvaluationError("the target wrong-match rate must be at least 0 and below 1")
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
    notes = []
    extra: dict[str, object] = {}
    if target_wrong_match is None:
        accept = _ceil4(threshold_at_far(impostor, target_far))
        review = min(_ceil4(threshold_at_far(impostor, review_far)), accept)
        basis: dict[str, object] = {"review_far": review_far}
    else:
        probes = leave_out_probes(vectors[keep], labels[keep], settings)
        lowest = probes.accept_for_wrong_match(target_wrong_match, settings)
        if lowest is None:
            notes.append("the margin alone keeps every impostor probe from a match: the accept threshold "
                         "stays the current one")
        accept = settings.accept_threshold if lowest is None else min(1.0, _ceil4(lowest))
        review = min(settings.review_threshold, accept)
        if len(probes.impostor) * target_wrong_match < 1:
            notes.append(
                f"only {len(probes.impostor)} impostor probes: a wrong-match rate of {target_wrong_match:g} "
                "cannot be measured; the accept threshold is just above the highest impostor probe that "
                "would end in a match"
            )
        proposed = settings.model_copy(update={"accept_threshold": accept, "review_threshold": review})
        basis = {"open_set": probes.rates(proposed)}
        extra["wrong_match"] = {
            "target": target_wrong_match,
            "margin": settings.match_margin,
            "resolution": 1.0 / len(probes.impostor),
            "current": probes.rates(settings),
        }
    if suspects:
        notes.append(
            f"{len(suspects)} face(s) look more like another child than like their own child's other faces "
            "and were left out (listed under suspect faces): check that they are enrolled under the right "
            "child"
        )
    if target_wrong_match is None and len(impostor) * target_far < 1:
        notes.append(
            f"only {len(impostor)} impostor pairs: a FAR of {target_far:g} cannot be measured; "
            "the accept threshold is just above the highest impostor score"
        )
    return {
        "model_id": key,
        "children": children,
        "templates": len(rows),
        "target_far": target_far,
        **extra,
        **stats,
        "genuine": _describe(genuine),
        "impostor": _describe(impostor),
        "current": {"accept": settings.accept_threshold, "review": settings.review_threshold},
        "proposed": {  # rounded up, so the FAR stays at or below the target
            "accept": accept,
            "review": review,
            "tar_at_accept": float(np.mean(genuine >= accept)),
            "tar_at_review": float(np.mean(genuine >= review)),
            **basis,
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


def proposal_lines(report: dict) -> list[str]:
    """`calibrate`'s proposal in a line or three for people."""
    proposed, current = report["proposed"], report["current"]
    now = f"current accept {current['accept']}, review {current['review']}"
    if "wrong_match" not in report:
        return [
            f"proposed accept {proposed['accept']} (FAR {report['target_far']:g}, TAR "
            f"{proposed['tar_at_accept']:.4f}), review {proposed['review']} (FAR {proposed['review_far']:g}, "
            f"TAR {proposed['tar_at_review']:.4f}); {now}"
        ]
    target = report["wrong_match"]

    def described(rates: dict) -> str:
        return (f"genuine probes ({rates['genuine']['probes']}) {_outcomes(rates['genuine'], OUTCOMES)}; "
                f"impostor probes ({rates['impostor']['probes']}) "
                f"{_outcomes(rates['impostor'], STRANGER_OUTCOMES)}")

    return [
        f"proposed accept {proposed['accept']} (wrong match at most {target['target']:g} at margin "
        f"{target['margin']}), review {proposed['review']}: {described(proposed['open_set'])}",
        f"{now}: {described(target['current'])}",
    ]


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
