"""Label Studio's brush RLE, written with numpy: the same bytes as label_studio_sdk's `brush.mask2rle`, which
builds a string of '0' and '1' characters run by run in Python (about 3 ms a click on a 400 x 600 mask, the
largest cost of an interactive answer after the tool's own).

The format (label_studio_sdk.converter.brush.encode_rle): a 32-bit count of values (4 per pixel: RGBA), a 5-bit
word size less one (7), four 4-bit run-size classes less one (3, 4, 8, 16), then one token per run of equal
values: a flag bit (0 alone, 1 a series), a 2-bit class, the run length less one in that class's width (a single
value: 3 zero bits) and the 8-bit value; a run longer than 2^16 is cut into tokens of 2^16, the last one too in
the 16-bit class whatever its length. The bits are padded
with zeros to the next whole byte, and by a whole byte when they already end on one."""
from __future__ import annotations

import numpy as np

HEADER = "{:032b}" + f"{7:05b}" + "".join(f"{size - 1:04b}" for size in (3, 4, 8, 16))
LONGEST = 2 ** 16
TOKEN_BITS = 27  # the widest token: 1 + 2 + 16 + 8


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """A boolean (H, W) mask as Label Studio's brush RLE (every channel 255 inside the mask, 0 outside)."""
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    count = 4 * flat.size
    header = np.frombuffer(HEADER.format(count).encode(), np.uint8) - ord("0")
    if flat.size == 0:
        return _packed(header)
    ends = np.append(np.flatnonzero(flat[1:] != flat[:-1]), flat.size - 1)
    lengths = 4 * np.diff(np.append(-1, ends))
    values = np.where(flat[ends], 255, 0).astype(np.int64)
    # runs longer than 2^16 become several tokens: all but the last of 2^16 each
    pieces = np.maximum(1, -(-lengths // LONGEST))
    token_values = np.repeat(values, pieces)
    token_runs = np.repeat(lengths, pieces)  # the run a token belongs to sets its class
    token_lengths = np.full(int(pieces.sum()), LONGEST, np.int64)
    token_lengths[np.cumsum(pieces) - 1] = lengths - LONGEST * (pieces - 1)
    return _packed(np.concatenate([header, _token_bits(token_runs, token_lengths, token_values)]))


def _token_bits(runs: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> np.ndarray:
    widths = np.select([runs <= 8, runs <= 16, runs <= 256], [3, 4, 8], 16)
    classes = np.select([runs <= 8, runs <= 16, runs <= 256], [0, 1, 2], 3)
    flags = (lengths > 1).astype(np.int64)
    run = np.where(lengths > 1, lengths - 1, 0)
    codes = (((flags << 2 | classes) << widths | run) << 8) | values
    sizes = 3 + widths + 8
    shifts = sizes[:, None] - 1 - np.arange(TOKEN_BITS)[None, :]
    bits = (codes[:, None] >> np.maximum(shifts, 0)) & 1
    return bits[shifts >= 0].astype(np.uint8)


def _packed(bits: np.ndarray) -> list[int]:
    padded = np.concatenate([bits, np.zeros(8 - bits.size % 8, np.uint8)])
    return np.packbits(padded).tolist()


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """A brush RLE read straight into its (height, width) bool mask (a pixel is in it when its alpha value is
    not 0): only the mask is allocated, where label_studio_sdk's `decode_rle` first makes every RGBA value (four
    bytes a pixel) and a text of one character per bit. Raises ValueError when the bits end before the values."""
    bits = (np.unpackbits(np.frombuffer(bytes(rle), np.uint8)) + ord("0")).tobytes().decode("ascii")
    position = 0

    def read(size: int) -> int:
        nonlocal position
        if position + size > len(bits):
            raise ValueError("the RLE ends before its values")
        position += size
        return int(bits[position - size:position], 2)

    count = min(read(32), 4 * height * width)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    mask = np.zeros(height * width, bool)
    start = 0
    while start < count:
        series = read(1)
        end = start + 1 + read(sizes[read(2)])
        if series:
            mask[start // 4:end // 4] = read(word) > 0  # the alpha values of [start, end) are at 4p + 3
        else:
            for index in range(start, min(end, count)):
                if read(word) and index % 4 == 3:
                    mask[index // 4] = True
        start = end
    return mask.reshape(height, width)
