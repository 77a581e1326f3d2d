"""Zips damaged the way broken or hostile archives are: built with `zipfile`, then patched byte by byte."""

from __future__ import annotations

import io
import struct
import zipfile


def _local(data: bytearray, info: zipfile.ZipInfo) -> int:
    assert data[info.header_offset : info.header_offset + 4] == b"PK\x03\x04"
    return info.header_offset


def _central(data: bytearray, name: str) -> int:
    at = data.find(b"PK\x01\x02")
    while at != -1:
        length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + length] == name.encode():
            return at
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(name)


def damaged_zip(photo: bytes) -> bytes:
    """One good member and one of each kind of damage, all copies of `photo`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("good.jpg", photo, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("bad-crc.jpg", photo, compress_type=zipfile.ZIP_STORED)
        archive.writestr("short-size.jpg", photo, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("long-size.jpg", photo, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("encrypted.jpg", photo, compress_type=zipfile.ZIP_STORED)
        archive.writestr("deflate64.jpg", photo, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("corrupt-deflate.jpg", photo, compress_type=zipfile.ZIP_DEFLATED)
        infos = {info.filename: info for info in archive.infolist()}
    data = bytearray(buffer.getvalue())

    def body(name: str) -> int:
        local = _local(data, infos[name])
        name_len, extra_len = struct.unpack_from("<HH", data, local + 26)
        return local + 30 + name_len + extra_len

    data[body("bad-crc.jpg") + len(photo) // 2] ^= 0xFF  # one flipped byte: the checksum disagrees
    for name, size in (("short-size.jpg", len(photo) // 2), ("long-size.jpg", len(photo) + 5000)):
        struct.pack_into("<I", data, _central(data, name) + 24, size)  # the directory lies about the size
        struct.pack_into("<I", data, _local(data, infos[name]) + 22, size)
    for offset in (_central(data, "encrypted.jpg") + 8, _local(data, infos["encrypted.jpg"]) + 6):
        struct.pack_into("<H", data, offset, struct.unpack_from("<H", data, offset)[0] | 0x1)
    for offset in (_central(data, "deflate64.jpg") + 10, _local(data, infos["deflate64.jpg"]) + 8):
        struct.pack_into("<H", data, offset, 9)  # Deflate64
    start = body("corrupt-deflate.jpg") + 200
    data[start : start + 64] = bytes(range(64)) * 1  # garbage in the middle of the deflate stream
    return bytes(data)


ZIP_ROWS = ("good", "bad-crc", "short-size", "long-size", "encrypted", "deflate64", "corrupt-deflate")
