"""Near-duplicate images: a 64-bit perceptual hash per image, and the groups of images within
a Hamming distance of each other, found without comparing all pairs.

The hash is pHash's (Zauner 2010), greyscale, shrunk to 32x32, 2-D DCT, an 8x8 block of
coefficients thresholded at their median, but the block starts at frequency FIRST_FREQUENCY
rather than 0: the lowest frequencies hold an object's outline, which distinct photos of one
class share (on Fashion-MNIST, pHash's own block chained thousands of shoes into one group
at distance 4; see README, Near-duplicates). Low and middle frequencies survive resizing,
re-encoding and brightness shifts, and the median threshold ignores global brightness; crops
are met by hashing crops too (perceptual_hashes). Only PIL and NumPy, so the preprocess
workers can hash as they decode.

Grouping uses multi-index hashing (Norouzi et al. 2012): the hash is cut into BANDS bands
of 16 bits; two hashes within distance d differ by at most d // BANDS bits in some band
(pigeonhole), so each hash of an image (its own and its crops') is only compared with the
own hashes whose band value lies within that radius of its own, looked up in the sorted
band values.
"""
import itertools
from collections.abc import Iterator

import numpy as np
from PIL import Image

from components import configs

SAMPLE = 32  # Side of the greyscale thumbnail the DCT runs on.
FIRST_FREQUENCY = 3
BLOCK = 8  # Side of the block of frequencies kept: BLOCK * BLOCK = 64 bits.
BANDS = 4
BAND_BITS = 64 // BANDS
THUMBNAIL = 128  # The crops are cut from a greyscale thumbnail this size.
_CHUNK = 4096  # Hashes whose neighbour keys are looked up at once (bounds memory).
_BATCH = 1 << 22  # Candidate pairs checked at once (bounds memory).


def _dct_matrix(size: int) -> np.ndarray:
    """Orthonormal DCT-II basis: matrix @ x is the DCT of x."""
    k = np.arange(size)[:, None]
    basis = np.cos(np.pi * (2 * np.arange(size)[None, :] + 1) * k / (2 * size))
    basis[0] /= np.sqrt(2)
    return basis * np.sqrt(2 / size)


def _box_resampling(start: int, stop: int) -> np.ndarray:
    """[SAMPLE, THUMBNAIL]: the pixels start..stop of a thumbnail's row averaged down to
    SAMPLE pixels (area weights), as a matrix."""
    edges = np.linspace(start, stop, SAMPLE + 1)
    pixels = np.arange(THUMBNAIL)
    overlap = np.clip(np.minimum(edges[1:, None], pixels + 1)
                      - np.maximum(edges[:-1, None], pixels), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _span_transforms(crop: float) -> np.ndarray:
    """[spans, BLOCK, THUMBNAIL]: crop a thumbnail's rows to each span, shrink to SAMPLE and
    take the DCT block, in one matrix per span: the whole span, `crop` cut at the start or
    at the end, or half of it at each."""
    cut = round(THUMBNAIL * crop)
    spans = ((0, THUMBNAIL), (cut, THUMBNAIL), (0, THUMBNAIL - cut),
             (cut // 2, THUMBNAIL - cut + cut // 2))
    dct = _dct_matrix(SAMPLE)[FIRST_FREQUENCY:FIRST_FREQUENCY + BLOCK]
    return np.stack([dct @ _box_resampling(*span) for span in spans])


_TRANSFORMS = _span_transforms(configs.NEAR_DUPLICATE_CROP)


def perceptual_hashes(image: Image.Image) -> list[int]:
    """The 64-bit pHash of an image of any mode and size, then those of its 15 crops that
    cut configs.NEAR_DUPLICATE_CROP of the width, the height or both, at one side or half at
    each. A copy cropped so lies near one of them, while its own pHash may be 20-40 bits
    away. Crops, shrinking and DCT are one matrix product per side (about 0.1 ms)."""
    thumbnail = np.asarray(image.convert("L").resize(
        (THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.float64)
    rows = _TRANSFORMS @ thumbnail  # [spans of rows, BLOCK, THUMBNAIL]
    blocks = (rows[:, None] @ _TRANSFORMS.transpose(0, 2, 1)[None]).reshape(-1, BLOCK * BLOCK)
    bits = blocks > np.median(blocks, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().tolist()


def to_hex(value: int) -> str:
    return f"{value:016x}"


def _band_masks(radius: int) -> np.ndarray:
    """Every BAND_BITS-bit mask with at most radius bits set."""
    masks = [0]
    for count in range(1, radius + 1):
        masks += [sum(1 << bit for bit in bits)
                  for bits in itertools.combinations(range(BAND_BITS), count)]
    return np.array(masks, dtype=np.uint64)


def _pair_batches(hashes: np.ndarray, distance: int) -> Iterator[np.ndarray]:
    """The pairs of candidate_pairs, in batches of at most _BATCH candidates each (so a
    bucket of many alike hashes cannot exhaust memory), with repeats."""
    masks = _band_masks(distance // BANDS)
    images = np.repeat(np.arange(len(hashes)), hashes.shape[1])
    queries = hashes.ravel()
    band_mask = np.uint64(2**BAND_BITS - 1)
    for band in range(BANDS):
        values = (hashes[:, 0] >> np.uint64(BAND_BITS * band)) & band_mask
        order = np.argsort(values, kind="stable")
        # Where each band value's run starts in the sorted values: a lookup, not a search.
        bounds = np.searchsorted(values[order], np.arange(2**BAND_BITS + 1, dtype=np.uint64))
        for start in range(0, len(queries), _CHUNK):
            keys = (((queries[start:start + _CHUNK] >> np.uint64(BAND_BITS * band))
                     & band_mask)[:, None] ^ masks).astype(np.int64).ravel()
            low = bounds[keys]
            counts = bounds[keys + 1] - low
            ends = np.cumsum(counts)
            first = 0
            while first < len(counts):  # (query, key) rows first..last: at most _BATCH matches.
                last = max(first + 1, int(np.searchsorted(ends, ends[first] - counts[first]
                                                          + _BATCH, "right")))
                rows = np.repeat(np.arange(first, last), counts[first:last])
                offsets = np.arange(rows.size) - np.repeat(
                    ends[first:last] - counts[first:last] - (ends[first] - counts[first]),
                    counts[first:last])
                query = start + rows // len(masks)
                other = order[low[rows] + offsets]
                near = np.bitwise_count(queries[query] ^ hashes[other, 0]) <= distance
                pair = np.sort(np.stack([images[query[near]], other[near]], axis=1), axis=1)
                yield pair[pair[:, 0] != pair[:, 1]]
                first = last


def candidate_pairs(hashes: np.ndarray, distance: int) -> np.ndarray:
    """Pairs (i, j), i < j, where one of image i's hashes lies within `distance` bits of
    image j's own (first) hash or the other way round. hashes: [images, hashes] uint64.
    Returns [pairs, 2] int64, unique, sorted."""
    return np.unique(np.concatenate([np.empty((0, 2), dtype=np.int64),
                                     *_pair_batches(hashes, distance)]), axis=0)


def _union(parent: np.ndarray, pairs: np.ndarray) -> None:
    """Union-find on arrays, in place: joins the sets of each pair. parent[i] <= i, so a
    set's root is its smallest index; rounds of hooking roots to the smaller root and
    pointer jumping, vectorized, rather than a Python loop over (many) pairs."""
    while pairs.size:
        a, b = parent[pairs[:, 0]], parent[pairs[:, 1]]
        apart = a != b
        low, high = np.minimum(a, b)[apart], np.maximum(a, b)[apart]
        np.minimum.at(parent, high, low)
        while not np.array_equal(parent[parent], parent):
            parent[:] = parent[parent]
        pairs = np.stack([low, high], axis=1)


def group(hashes: list[list[int]], distance: int) -> list[int]:
    """Each image's near-duplicate group, as the index of the group's first image (its own
    index when it has no near-copy): the sets of the pairs candidate_pairs finds. hashes:
    each image's perceptual_hashes."""
    parent = np.arange(len(hashes))
    if distance > 0 and len(hashes) > 1:
        for batch in _pair_batches(np.array(hashes, dtype=np.uint64), distance):
            _union(parent, batch)
    return parent.tolist()
