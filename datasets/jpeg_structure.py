"""The marker structure of a JPEG file, checked without decoding.

Pillow decodes a JPEG whose end was cut off or overwritten (a partly copied or partly written file, a zero-filled
tail) without a word when its decoder finds enough bytes to fill every block: the missing part becomes garbage or
grey. The structure tells: a complete file has every marker segment inside the file and, after its image data, the
end-of-image marker. Corruption that keeps the structure (bits flipped inside the compressed data) cannot be seen
here; the decoder would need to report its warnings, which Pillow's does not.
"""

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
RESTARTS = range(0xD0, 0xD8)
# Start-of-frame markers (0xC0-0xCF except DHT 0xC4, JPG 0xC8 and DAC 0xCC).
FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Segments that may come between the start and the end of a JPEG stream (tables, restart intervals, metadata).
SEGMENTS = frozenset({0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xFE, *range(0xE0, 0xF0)}) | FRAMES


def jpeg_structure_error(data: bytes) -> str | None:
    """Why ``data`` is not a complete JPEG stream, or None when it is.

    Checked: the start-of-image marker; each marker segment known to JPEG and inside the file; one frame header
    before the first scan; each scan's compressed data running up to the next marker (only stuffed FF 00 bytes,
    restart markers and fill bytes inside); the end-of-image marker after the last scan. Bytes after the
    end-of-image marker are ignored, as every decoder does.
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != SOI:
        return "does not start with a JPEG start-of-image marker"
    pos, frames, scans = 2, 0, 0
    while True:
        if pos >= len(data):
            return "ends before its end-of-image marker (truncated or partly written)"
        if data[pos] != 0xFF:
            return f"has no marker at byte {pos}, where one must start (corrupt data)"
        while pos < len(data) and data[pos] == 0xFF:  # a marker may be preceded by fill bytes
            pos += 1
        if pos >= len(data):
            return "ends before its end-of-image marker (truncated or partly written)"
        marker, pos = data[pos], pos + 1
        if marker == EOI:
            return None if scans else "ends before any image data"
        if marker != SOS and marker not in SEGMENTS:
            return f"has an invalid marker 0xFF{marker:02X} at byte {pos - 2} (corrupt data)"
        if pos + 2 > len(data):
            return "ends inside a marker segment (truncated)"
        length = data[pos] << 8 | data[pos + 1]
        if length < 2 or pos + length > len(data):
            return f"has a marker segment 0xFF{marker:02X} at byte {pos - 2} that runs past the end of the file " \
                   "(truncated or corrupt)"
        pos += length
        if marker in FRAMES:
            frames += 1
            if frames > 1:
                return f"has a second frame header at byte {pos - length - 2} (corrupt data)"
        if marker == SOS:
            if not frames:
                return "has image data before its frame header (corrupt data)"
            scans += 1
            pos = _end_of_compressed_data(data, pos)


def _end_of_compressed_data(data: bytes, pos: int) -> int:
    """Index of the marker that ends the compressed data starting at ``pos`` (len(data) when none does)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        following = data[pos + 1]
        if following == 0x00 or following in RESTARTS:  # a stuffed FF byte, a restart marker: still data
            pos += 2
        elif following == 0xFF:  # fill bytes before the next marker
            pos += 1
        else:
            return pos
