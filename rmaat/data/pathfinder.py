"""Pathfinder 32x32: the LRA-layout loader and a generator written from the published rules.

**Layout** (LRA release, ``pathfinder32/curv_contour_length_14``): ``imgs/<batch>/sample_<i>.png``
(8-bit grayscale 32 x 32) and ``metadata/<batch>.npy``. Despite the suffix, LRA's metadata files
are text, one image per line, space-separated: ``imgs/<batch> sample_<i>.png <i> <label> ...``
(the remaining fields record generation parameters); LRA reads fields 0, 1 and 3. NumPy-format
metadata (``np.save`` of a string array, as the original Pathfinder code writes) is read too.

**Splits.** LRA slices one ordered list 80/10/10 (``hard[:80%]``, ``[80%:90%]``, ``[90%:]``) but
builds that list with an unordered glob and Apache Beam, so its order is not reproducible. Here
the metadata files are sorted by batch number (numerically), lines kept in file order, and the
list is cut at ``n*8//10`` and ``n*9//10``. Empty image files are skipped after splitting, as LRA
filters them after slicing.

**Generator** (Linsley et al. 2018; LRA's parameters: contour length 14 paddles, paddle length
2, margin 1, continuity 1.0, seed distance 7, marker radius 1.5, 20 // 4 = 5 distractor contours
of 14 // 3 = 4 paddles, then single paddles until the image is full). Each contour is a chain of
straight ``paddle_length``-pixel paddles separated by ``paddle_gap`` unlit pixels; each paddle
turns from the previous one by an angle drawn with density proportional to
``cos^2(continuity * dtheta)`` on ``|continuity * dtheta| < pi/2`` (the original's continuity
weighting); a contour never overlaps itself. Two target contours start ``seed_distance``
apart near the centre (the original grows them alternately; here the second's start is
reserved, then each is grown whole by a depth-first search that backtracks at dead ends). A
sample's label is drawn first (``P(1) = 0.5``, as LRA's ``randint``); one marker (a disc of
radius 1.5) goes on the start of one target contour and the other on the far end of the same
contour (label 1) or of the other target (label 0). Distractors never cover a marker.
About 5 ms of CPU per image: the full 200,000 take roughly a quarter of an hour on one core.

The generator guarantees what makes the label checkable from pixels alone: consecutive pixels of
one contour are within Chebyshev distance ``paddle_gap + 1`` (the jump over a gap), and pixels of
different contours (markers included) are at least ``paddle_gap + 2`` apart. So on the rendered
image, flood fill that may step ``paddle_gap + 1`` pixels connects the two markers exactly when
the label is 1 (tested). Differences from the original, which draws anti-aliased paddles at
varied contrast: pixels here are 0 or 255, and contours keep this clearance (the original only
avoids overlap), which makes images a little sparser.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmaat.data.tasks import TaskSpec, check_split
from rmaat.errors import DataError

_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class PathfinderConfig:
    """Generation parameters; defaults are LRA's Pathfinder-32 "hard" (contour length 14)."""

    size: int = 32                 # image side, pixels
    contour_length: int = 14       # paddles per target contour
    distractor_length: int = 4     # paddles per distractor contour (contour_length // 3)
    n_distractors: int = 5         # distractor contours (20 // distractor_length)
    paddle_length: int = 2         # lit pixels per paddle
    paddle_gap: int = 1            # unlit pixels between consecutive paddles (LRA margin)
    continuity: float = 1.0        # turn weight cos^2(continuity * dtheta); larger = straighter
    n_directions: int = 36         # paddle orientations on a 10-degree grid
    seed_distance: int = 7         # distance between the two target contours' starts
    marker_radius: float = 1.5
    padding: int = 1               # border rows/columns kept free of contours
    search_budget: int = 200       # paddles tried (with backtracking) per contour attempt
    max_start_trials: int = 8      # start directions tried per contour
    max_sample_trials: int = 200   # restarts of a whole image before giving up
    max_fill_failures: int = 30    # consecutive failed single-paddle placements that end filling
    intensity: int = 255
    images_per_batch: int = 1000   # images per imgs/<batch>/ folder and metadata file

    @property
    def reach(self) -> int:
        """Largest step between consecutive pixels of one contour (Chebyshev)."""
        return self.paddle_gap + 1


@dataclass
class PathfinderSample:
    """One generated image with its label and the two marker centres ((y, x), (y, x))."""

    image: np.ndarray  # (size, size) uint8
    label: int
    markers: tuple[tuple[int, int], tuple[int, int]]


def _round(v: float) -> int:
    # floor(v + 0.5): points less than d + 1 apart round to pixels at most d apart, which the
    # contour-connectivity guarantee relies on (Python's round() rounds halves to even).
    return math.floor(v + 0.5)


class _Geometry:
    """Paddle and step offsets per direction, as flat indices into a bordered canvas.

    Paddles start on whole pixels and point in one of ``n_directions`` directions, so every
    paddle is a table lookup. Within a paddle pixels are <= 1 apart; from the last pixel
    ``round((L-1) u)`` to the next start ``round((L+g) u)`` the distance is < g + 2, hence
    <= g + 1 = ``reach`` on the pixel grid (Chebyshev).

    The canvas is the image plus a ``border`` of never-valid pixels on every side, wide enough
    that any candidate paddle lands inside the array: no bounds checks in the search loop.
    """

    def __init__(self, cfg: PathfinderConfig):
        k, n = cfg.n_directions, cfg.size
        step = cfg.paddle_length + cfg.paddle_gap
        self.border = b = 2 * step + cfg.reach + 1
        self.width = w = n + 2 * b
        self.paddle: list[tuple[int, ...]] = []
        self.step: list[int] = []
        for d in range(k):
            sy, sx = math.sin(2 * math.pi * d / k), math.cos(2 * math.pi * d / k)
            self.paddle.append(tuple(_round(s * sy) * w + _round(s * sx)
                                     for s in range(cfg.paddle_length)))
            self.step.append(_round(step * sy) * w + _round(step * sx))
        # Turns j (in direction-grid units) with weight cos^2(continuity * angle), |.| < pi/2;
        # stored as exponents 1/w for weighted random orders (key = u ** (1/w)).
        unit = 2 * math.pi / k
        self.turns: list[tuple[int, float]] = []
        j = 0
        while cfg.continuity * j * unit < math.pi / 2:
            inv_w = 1.0 / math.cos(cfg.continuity * j * unit) ** 2
            self.turns += [(j, inv_w)] if j == 0 else [(j, inv_w), (-j, inv_w)]
            j += 1
        # inner[p]: a contour pixel may go there (inside the image, off the padding ring);
        # image[p]: inside the image (markers may touch the padding ring).
        self.inner = [False] * (w * w)
        self.image = [False] * (w * w)
        for y in range(n):
            for x in range(n):
                p = (y + b) * w + x + b
                self.image[p] = True
                lo, hi = cfg.padding, n - cfg.padding
                self.inner[p] = lo <= y < hi and lo <= x < hi
        self.neighbourhood = tuple(dy * w + dx for dy in range(-cfg.reach, cfg.reach + 1)
                                   for dx in range(-cfg.reach, cfg.reach + 1))

    def index(self, y: int, x: int) -> int:
        return (y + self.border) * self.width + x + self.border

    def coords(self, p: int) -> tuple[int, int]:
        y, x = divmod(p, self.width)
        return y - self.border, x - self.border


class _Canvas:
    """Pixel ownership plus the clearance zone around every contour (flat bordered arrays)."""

    def __init__(self, cfg: PathfinderConfig, geometry: _Geometry):
        self.cfg, self.geo = cfg, geometry
        size = geometry.width * geometry.width
        self.lit = [-1] * size   # contour id owning each lit pixel
        self.zone = [-1] * size  # -1 free, id: near that contour only, -2: near several
        self.next_id = 0

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def ok(self, p: int, cid: int) -> bool:
        """Pixel ``p`` may belong to contour ``cid``: off the padding and clear of others."""
        z = self.zone[p]
        return self.geo.inner[p] and (z == -1 or z == cid)

    def claim(self, pixels, cid: int) -> None:
        """Light ``pixels`` for contour ``cid`` and mark the clearance zone around them."""
        lit, zone = self.lit, self.zone
        for p in pixels:
            lit[p] = cid
            for off in self.geo.neighbourhood:
                z = zone[p + off]
                if z == -1:
                    zone[p + off] = cid
                elif z != cid:
                    zone[p + off] = -2

    def render(self) -> np.ndarray:
        """(size, size) uint8 image: lit pixels at ``intensity``, the rest 0."""
        geo, n = self.geo, self.cfg.size
        full = np.asarray(self.lit, dtype=np.int64).reshape(geo.width, geo.width)
        crop = full[geo.border:geo.border + n, geo.border:geo.border + n]
        return np.where(crop >= 0, self.cfg.intensity, 0).astype(np.uint8)

    def grow(self, cid: int, start: int, direction: int, n_paddles: int,
             rng: random.Random) -> list[int] | None:
        """Pixels of a contour of ``n_paddles`` paddles from ``start``, or None (dead end).

        Depth-first: at each paddle the turns are visited in a weighted random order (weights
        cos^2, Efraimidis-Spirakis keys), so the first valid turn follows the rejection-sampling
        law restricted to valid turns, and a dead end backtracks instead of discarding the
        contour. A contour never overlaps its own earlier pixels (as in the original code).
        """
        geo, k = self.geo, self.cfg.n_directions
        zone, inner = self.zone, geo.inner
        budget = [self.cfg.search_budget]
        own: set[int] = set()

        def valid(p: int, d: int) -> bool:
            for off in geo.paddle[d]:
                q = p + off
                z = zone[q]
                if q in own or not inner[q] or (z != -1 and z != cid):
                    return False
            return True

        def visit(p: int, d: int, left: int) -> list[int] | None:
            pixels = [p + off for off in geo.paddle[d]]
            if left == 1:
                return pixels
            new = [q for q in pixels if q not in own]
            own.update(new)
            nxt = p + geo.step[d]
            order = sorted([(rng.random() ** inv_w, nd) for j, inv_w in geo.turns
                            if valid(nxt, nd := (d + j) % k)], reverse=True)
            for _, nd in order:
                budget[0] -= 1
                if budget[0] < 0:
                    break
                rest = visit(nxt, nd, left - 1)
                if rest is not None:
                    return pixels + rest
            own.difference_update(new)
            return None

        if not valid(start, direction):
            return None
        return visit(start, direction, n_paddles)

    def place(self, cid: int, start: int, n_paddles: int, rng: random.Random) -> list[int] | None:
        """Grow and claim a contour from ``start``, trying a few start directions."""
        for _ in range(self.cfg.max_start_trials):
            pixels = self.grow(cid, start, rng.randrange(self.cfg.n_directions), n_paddles, rng)
            if pixels is not None:
                self.claim(pixels, cid)
                return pixels
        return None


def _marker_pixels(canvas: _Canvas, tip: int) -> list[int]:
    r = canvas.cfg.marker_radius
    k, w = int(math.floor(r)), canvas.geo.width
    return [tip + dy * w + dx for dy in range(-k, k + 1) for dx in range(-k, k + 1)
            if dy * dy + dx * dx <= r * r]


def _target_pair(canvas: _Canvas, rng: random.Random):
    """Two target contours from seeds ``seed_distance`` apart near the centre (LRA's rule)."""
    cfg, n, geo = canvas.cfg, canvas.cfg.size, canvas.geo
    lo, hi = 2 * cfg.seed_distance, n - 2 * cfg.seed_distance
    if hi <= lo:  # small images: seed anywhere inside the padding
        lo, hi = cfg.padding, n - cfg.padding
    ya, xa = rng.randrange(lo, hi), rng.randrange(lo, hi)
    phi = rng.uniform(0.0, 2 * math.pi)
    yb = _round(ya + cfg.seed_distance * math.sin(phi))
    xb = _round(xa + cfg.seed_distance * math.cos(phi))
    if not (0 <= yb < n and 0 <= xb < n):
        return None
    a, b = canvas.new_id(), canvas.new_id()
    seed_a, seed_b = geo.index(ya, xa), geo.index(yb, xb)
    if not canvas.ok(seed_b, b):
        return None
    canvas.claim([seed_b], b)  # keep contour a clear of b's start
    path_a = canvas.place(a, seed_a, cfg.contour_length, rng)
    path_b = canvas.place(b, seed_b, cfg.contour_length, rng) if path_a else None
    if path_b is None:
        return None
    return (a, path_a), (b, path_b)


def _distractor(canvas: _Canvas, rng: random.Random, n_paddles: int, starts: int) -> bool:
    """Place one complete distractor contour from a random free start (``starts`` tries)."""
    cfg, geo = canvas.cfg, canvas.geo
    span = cfg.size - 2 * cfg.padding
    cid = canvas.new_id()
    for _ in range(starts):
        start = geo.index(cfg.padding + int(rng.random() * span),
                          cfg.padding + int(rng.random() * span))
        if not canvas.ok(start, cid):
            continue
        pixels = canvas.grow(cid, start, int(rng.random() * cfg.n_directions), n_paddles, rng)
        if pixels is not None:
            canvas.claim(pixels, cid)
            return True
    return False


_GEOMETRY_CACHE: dict[PathfinderConfig, _Geometry] = {}


def generate_sample(rng: random.Random,
                    cfg: PathfinderConfig = PathfinderConfig()) -> PathfinderSample:
    """Draw one Pathfinder image (see module docstring for the rules)."""
    geometry = _GEOMETRY_CACHE.get(cfg) or _GEOMETRY_CACHE.setdefault(cfg, _Geometry(cfg))
    label = rng.randrange(2)
    for _ in range(cfg.max_sample_trials):
        canvas = _Canvas(cfg, geometry)
        pair = _target_pair(canvas, rng)
        if pair is None:
            continue
        first = rng.randrange(2)
        other = first if label == 1 else 1 - first
        # Markers: the start of one target contour and the far end of the same or the other.
        tips = ((pair[first][1][0], pair[first][0]), (pair[other][1][-1], pair[other][0]))
        placed = True
        for tip, cid in tips:  # one by one: the second must also clear the first's zone
            pixels = _marker_pixels(canvas, tip)
            placed = all(geometry.image[p] and canvas.zone[p] in (-1, cid) for p in pixels)
            if not placed:
                break
            canvas.claim(pixels, cid)
        if not placed:
            continue
        for _ in range(cfg.n_distractors):
            _distractor(canvas, rng, cfg.distractor_length, cfg.max_start_trials)
        failures = 0
        while failures < cfg.max_fill_failures:  # single paddles until the image is full
            failures = 0 if _distractor(canvas, rng, 1, 1) else failures + 1
        markers = (geometry.coords(tips[0][0]), geometry.coords(tips[1][0]))
        return PathfinderSample(canvas.render(), label, markers)
    raise RuntimeError("could not place two target contours in the image; reduce "
                       "contour_length or seed_distance for this image size")


def _metadata_line(batch: int, index: int, label: int, cfg: PathfinderConfig) -> str:
    # LRA-release field order: subpath, file, index, label, continuity, contour length,
    # distractor length, paddle length, paddle thickness, paddle margin, number of contrasts.
    return (f"imgs/{batch} sample_{index}.png {index} {label} {cfg.continuity:g} "
            f"{cfg.contour_length} {cfg.distractor_length} {cfg.paddle_length} 1 "
            f"{cfg.paddle_gap} 1")


def generate_pathfinder(out_dir: str | Path, size: int = 200_000, seed: int = 0,
                        progress: bool = True,
                        cfg: PathfinderConfig = PathfinderConfig()) -> dict[str, int]:
    """Write ``size`` images in LRA's layout, ``out_dir/pathfinder32/curv_contour_length_14``.

    Image ``k`` is drawn from its own stream seeded by ``(seed, k)``, so the output does not
    depend on batching. Returns the split sizes the loader will use (80/10/10 by file order).
    ``out_dir`` is written in place; ``pipeline data generate`` passes a temporary directory.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    if size < 10:
        raise ValueError("Pathfinder needs at least 10 images (80/10/10 split)")
    root = Path(out_dir) / "pathfinder32" / "curv_contour_length_14"
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for k in tqdm(range(size), desc="pathfinder", unit="img", disable=not progress):
        batch, index = divmod(k, cfg.images_per_batch)
        sample = generate_sample(random.Random(f"pathfinder32-{seed}-{k}"), cfg)
        folder = root / "imgs" / str(batch)
        if index == 0:
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.image, mode="L").save(folder / f"sample_{index}.png")
        lines.append(_metadata_line(batch, index, sample.label, cfg))
        if index == cfg.images_per_batch - 1 or k == size - 1:
            (root / "metadata" / f"{batch}.npy").write_text("\n".join(lines) + "\n")
            lines = []
    return dict(zip(("train", "val", "test"), _split_bounds(size)[1]))


def _split_bounds(n: int) -> tuple[dict[str, slice], list[int]]:
    a, b = n * 8 // 10, n * 9 // 10
    slices = {"train": slice(0, a), "val": slice(a, b), "test": slice(b, n)}
    return slices, [a, b - a, n - b]


def _metadata_rows(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    if raw.startswith(_NPY_MAGIC):
        import io

        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as e:
            raise DataError(f"{path}: unreadable NumPy metadata ({e})") from None
        return [[str(v) for v in row] for row in np.atleast_2d(array)]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: metadata is neither text nor a NumPy array") from None
    return [line.split() for line in text.split("\n")]


def read_metadata(root: Path) -> list[tuple[Path, int, str]]:
    """All (image path, label, "metafile:line") records in split order."""
    folder = root / "metadata"
    files = [p for p in folder.glob("*.npy") if p.is_file()] if folder.is_dir() else []
    if not files:
        raise DataError(f"no metadata/*.npy under {root}; expected the LRA layout "
                        "pathfinder32/curv_contour_length_14/{metadata,imgs} (download the LRA "
                        "release or run: pipeline data generate --task pathfinder --out DIR)")
    files.sort(key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))
    records = []
    for path in files:
        for number, fields in enumerate(_metadata_rows(path), start=1):
            if not fields:
                continue
            where = f"{path}:{number}"
            if len(fields) < 4:
                raise DataError(f"{where}: expected '<subdir> <file> <index> <label> ...', "
                                f"got {len(fields)} fields")
            if fields[3] not in ("0", "1"):
                raise DataError(f"{where}: label {fields[3]!r} is not 0 or 1")
            records.append((root / fields[0] / fields[1], int(fields[3]), where))
    return records


def _decode(path: Path, where: str, size: int) -> np.ndarray | None:
    """PNG -> (size*size,) uint8 grayscale; None for an empty file (LRA skips those)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return None
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise DataError(f"{where}: image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{where}: image {path} cannot be read ({e})") from None
    if pixels.shape != (size, size):
        raise DataError(f"{where}: image {path} is {pixels.shape[1]}x{pixels.shape[0]}, "
                        f"expected {size}x{size}")
    return pixels.reshape(-1)


def load_pathfinder(spec: TaskSpec, root: Path, split: str):
    """Pathfinder-32 split as a :class:`SequenceDataset` of 1024 pixels."""
    from rmaat.data.tokenize import Ragged, SequenceDataset

    records = read_metadata(root)
    if len(records) < 10:
        raise DataError(f"{root}: only {len(records)} images listed; the 80/10/10 split needs 10")
    chosen = records[_split_bounds(len(records))[0][check_split(split)]]
    side = int(math.isqrt(spec.seq_len))
    rows, labels = [], []
    for path, label, where in chosen:
        pixels = _decode(path, where, side)
        if pixels is not None:
            rows.append(pixels)
            labels.append(label)
    if not rows:
        raise DataError(f"{root}: every image of split {split!r} is empty")
    return SequenceDataset(spec, split, Ragged.from_fixed(np.stack(rows)), np.asarray(labels),
                           str(root))
