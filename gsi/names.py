"""UTF-16LE name fields of START_FILE_COPY: 260 units, NUL-terminated inside the field."""

from __future__ import annotations

from .constants import W_MAX_PATH
from .errors import InvalidNameError

NAME_FIELD_SIZE = 2 * W_MAX_PATH


def decode_name(field: bytes | memoryview) -> str:
    """Decode one name field.

    Raises:
        InvalidNameError: the field is not 520 bytes, has no NUL within its 260 units,
            or holds an unpaired surrogate.
    """
    raw = bytes(field)
    if len(raw) != NAME_FIELD_SIZE:
        raise InvalidNameError(f"name field is {len(raw)} bytes, not {NAME_FIELD_SIZE}")
    for unit in range(W_MAX_PATH):
        if raw[2 * unit] == 0 and raw[2 * unit + 1] == 0:
            break
    else:
        raise InvalidNameError(f"name has no NUL terminator within {W_MAX_PATH} UTF-16 units")
    try:
        return raw[: 2 * unit].decode("utf-16-le")
    except UnicodeDecodeError as exc:
        raise InvalidNameError(f"name is not valid UTF-16 ({exc.reason})") from None


def encode_name(name: str) -> bytes:
    """Encode a name into its 520-byte field (NUL-terminated, zero-padded).

    Raises:
        InvalidNameError: the name contains NUL, a lone surrogate, or needs more than
            259 UTF-16 units.
    """
    if "\x00" in name:
        raise InvalidNameError("name contains a NUL character")
    try:
        units = name.encode("utf-16-le")
    except UnicodeEncodeError:
        raise InvalidNameError("name contains a lone surrogate") from None
    if len(units) > NAME_FIELD_SIZE - 2:
        raise InvalidNameError(
            f"name needs {len(units) // 2} UTF-16 units; at most {W_MAX_PATH - 1} fit"
        )
    return units.ljust(NAME_FIELD_SIZE, b"\x00")
