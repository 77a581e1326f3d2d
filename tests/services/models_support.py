"""Helpers for the embedding-model tests: a real ArcFace-architecture network with arbitrary weights, and a
small real gallery enrolled with the default (dlib) model."""

from __future__ import annotations

from pathlib import Path

import torch

from childface.db import Actor
from childface.services.children import create_child
from childface.services.enrollment import Photo, enroll_photos
from childface.services.runtime import Runtime
from childface.vision import arcface

STAFF = Actor("user", "teacher")
#: the ArcFace backbone the tests move to: MobileFaceNet, the smallest (fast on 2 cores)
ARCH = "mbf"


def save_arcface(path: Path, *, seed: int = 7, arch: str = ARCH) -> Path:
    """A real ArcFace backbone (insightface's architecture) with seeded random weights, as a .pth."""
    torch.manual_seed(seed)
    torch.save(arcface.get_backbone(arch).state_dict(), path)
    return path


def arcface_spec(weights: Path, *, flip: bool = False) -> dict:
    return {"embedder": "arcface", "weights": str(weights.resolve()), "arch": ARCH, "flip": flip}


def enroll_children(rt: Runtime, photos, people: int = 4, per_child: int = 2) -> dict[int, int]:  # noqa: ANN001
    """`people` children, each enrolled from `per_child` variations of one real person; child id -> person."""
    children = {}
    for person in range(people):
        child = create_child(db=rt.db, actor=STAFF, external_id=f"C{person:03d}", name=f"Child {person}")
        outcomes = enroll_photos(runtime=rt, actor=STAFF, child_id=child.id, confirm=True,
                                 photos=[Photo(data=photos.person(person, n)) for n in range(per_child)])
        assert [o.status for o in outcomes] == ["enrolled"] * per_child, [o.reasons for o in outcomes]
        children[child.id] = person
    rt.catch_up()
    return children
