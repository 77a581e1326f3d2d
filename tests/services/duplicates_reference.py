"""A brute-force reference for the duplicates report: the definition in services/duplicates.py, loop by loop.

Each searchable template, in face-id order, is scored against each other
child's templates as recognition scores a child (ChildIndex.child_scores:
stable order, best first; 'max' or 'mean2'); a pair keeps the highest score,
the first template to see it on equal scores. Pairs come best first, equal
scores by child ids.
"""

from __future__ import annotations

import numpy as np


def brute_force_pairs(
    templates: list[tuple[int, int, np.ndarray]], *, threshold: float, limit: int, child_score: str = "max"
) -> list[tuple[int, int, float, int, int]]:
    """templates: (face id, child id, unit vector) -> [(child a, child b, score, face a, face b)], a < b."""
    members: dict[int, list[tuple[int, np.ndarray]]] = {}
    for face_id, child_id, vector in sorted(templates, key=lambda t: t[0]):
        members.setdefault(child_id, []).append((face_id, np.asarray(vector, np.float32)))
    best: dict[tuple[int, int], tuple[float, int, int]] = {}
    for face_id, child_id, vector in sorted(templates, key=lambda t: t[0]):
        query = np.asarray(vector, np.float32)
        for other, group in members.items():
            if other == child_id:
                continue
            sims = np.array([float(np.dot(v, query)) for _, v in group], dtype=np.float32)
            order = np.argsort(-sims, kind="stable")
            score = sims[order[0]]
            if child_score == "mean2" and len(group) > 1:
                score = (sims[order[0]] + sims[order[1]]) / np.float32(2)
            if float(score) < threshold:
                continue
            other_face = group[int(order[0])][0]
            if child_id < other:
                key, faces = (child_id, other), (face_id, other_face)
            else:
                key, faces = (other, child_id), (other_face, face_id)
            if key not in best or float(score) > best[key][0]:
                best[key] = (float(score), *faces)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
    return [(a, b, score, fa, fb) for (a, b), (score, fa, fb) in ranked]
