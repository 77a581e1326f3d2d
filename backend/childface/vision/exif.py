"""When a photo was taken: EXIF DateTimeOriginal, checked for plausibility, else the upload time.

`photo_date(data, local_zone=..., now=...)` reads DateTimeOriginal (tag 36867
in the Exif IFD) from the header with Pillow, without decoding any pixel; HEIC
photos are read the same way through `pillow-heif`'s plugin. EXIF times carry
no zone: OffsetTimeOriginal (tag 36881, e.g. "+02:00") gives it when the camera
wrote one, otherwise the time is taken as local time in `local_zone` (the
deployment's `attendance_timezone`). The result is a `PhotoDate` in UTC with
its source:

- `exif`: the camera's date, when it is parseable and plausible: not in the
  future (one day of clock skew allowed) and not before 2000-01-01 (no photo
  of a child enrolled today was taken earlier; a camera whose clock was never
  set says 1970 or 2000-01-01 00:00);
- `upload`: `now` (the time the photo reached us), for everything else:
  no EXIF, no date, a garbled or implausible date, a file Pillow cannot read.

A bad date never refuses a photo: it only falls back to the upload time. The
module knows nothing of the database (vision), callers store the result.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

from PIL import Image

from childface.vision.decode import ACCEPTED_FORMATS  # importing decode registers the HEIF opener

EXIF_IFD = 0x8769
DATETIME_ORIGINAL = 36867
OFFSET_TIME_ORIGINAL = 36881
#: no plausible photo is older (see the module docstring)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
#: a camera clock may run this far ahead of ours
CLOCK_SKEW = timedelta(days=1)

Source = Literal["exif", "upload"]

# "2024:05:17 14:03:59"; some writers use '-' or '/' in the date, or 'T' between date and time
_DATE = re.compile(r"^(\d{4})[:\-/](\d{2})[:\-/](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


@dataclass(frozen=True)
class PhotoDate:
    """When a photo was taken (timezone-aware, UTC) and where that came from."""

    at: datetime
    source: Source


def photo_date(data: bytes, *, local_zone: tzinfo | str = UTC, now: datetime | None = None) -> PhotoDate:
    """The photo's EXIF date when plausible, else `now` (default: the current time) as "upload"."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    zone = ZoneInfo(local_zone) if isinstance(local_zone, str) else local_zone
    taken = exif_taken_at(data, zone)
    if taken is not None and EARLIEST <= taken <= now + CLOCK_SKEW:
        return PhotoDate(taken, "exif")
    return PhotoDate(now, "upload")


def exif_taken_at(data: bytes, local_zone: tzinfo = UTC) -> datetime | None:
    """DateTimeOriginal in UTC, as written (no plausibility check); None when absent or unreadable."""
    raw = _exif_tags(data)
    if raw is None:
        return None
    stamp, offset = raw
    match = _DATE.match(stamp.strip())
    if match is None:
        return None
    try:
        naive = datetime(*(int(part) for part in match.groups()))  # type: ignore[misc]
    except ValueError:  # month 13, day 0, "0000:00:00 00:00:00"
        return None
    zone = _offset_zone(offset) or local_zone
    try:
        return naive.replace(tzinfo=zone).astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _exif_tags(data: bytes) -> tuple[str, str | None] | None:
    """(DateTimeOriginal, OffsetTimeOriginal) strings from the header, without decoding pixels."""
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd tags and large canvases
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                if image.format == "PNG" and "exif" not in image.info:
                    return None  # an eXIf chunk after the pixels: Pillow would decode them all to find it
                ifd = image.getexif().get_ifd(EXIF_IFD)
    except Exception:  # noqa: BLE001 - any unreadable header is "no date", never a refusal
        return None
    stamp, offset = ifd.get(DATETIME_ORIGINAL), ifd.get(OFFSET_TIME_ORIGINAL)
    stamp, offset = _text(stamp), _text(offset)
    return None if stamp is None else (stamp, offset)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if not isinstance(value, str):
        return None
    return value.strip("\x00 ") or None


def _offset_zone(offset: str | None) -> tzinfo | None:
    """'+02:00' -> a fixed-offset zone; None when absent or malformed (then the local zone applies)."""
    match = _OFFSET.match(offset or "")
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if delta > timedelta(hours=14) or int(minutes) >= 60:
        return None
    return timezone(-delta if sign == "-" else delta)
