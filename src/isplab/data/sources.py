"""Source images for synthetic raw data that need no download.

Two kinds: the colour photographs shipped inside scikit-image's wheel (and scikit-learn's, when it
is installed), and generated scenes (dead-leaves scenes, :mod:`isplab.data.deadleaves`; a
colour-checker-like chart, smooth gradients, band-limited textures). Every source returns an sRGB
float32 image ``(H, W, 3)`` in [0, 1].

The photographs are the **held-out set** (:data:`HELDOUT`, :func:`heldout_photos`): training data
should come only from generated scenes (:data:`TRAINING_SOURCES`), so that a model is scored on
scenes it never saw. :data:`SOURCES` is the original round-robin of photographs and procedural
scenes, kept for the workflows that use it; each name stays usable on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from isplab.data.deadleaves import dead_leaves
from isplab.errors import IsplabError

# Colour photographs bundled in scikit-image's package data (no pooch download needed).
SKIMAGE_PHOTOS = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "hubble": "hubble_deep_field.jpg",
}
#: scikit-learn's sample photographs (``sklearn.datasets.load_sample_image``), used only when
#: scikit-learn is installed (it is not a dependency of isplab)
SKLEARN_PHOTOS = {"china": "china.jpg", "flower": "flower.jpg"}

# The 24 patches of the ColorChecker Classic, 8-bit sRGB (D65), as published by X-Rite/BabelColor.
COLOR_CHECKER_SRGB = np.array(
    [
        [115, 82, 68], [194, 150, 130], [98, 122, 157], [87, 108, 67], [133, 128, 177], [103, 189, 170],
        [214, 126, 44], [80, 91, 166], [193, 90, 99], [94, 60, 108], [157, 188, 64], [224, 163, 46],
        [56, 61, 150], [70, 148, 73], [175, 54, 60], [231, 199, 31], [187, 86, 149], [8, 133, 161],
        [243, 243, 242], [200, 200, 200], [160, 160, 160], [122, 122, 121], [85, 85, 85], [52, 52, 52],
    ],
    dtype=np.float32,
) / 255.0


def skimage_photo(name: str) -> np.ndarray:
    """Load one of :data:`SKIMAGE_PHOTOS` from scikit-image's bundled data as float32 sRGB."""
    import skimage.data

    if name not in SKIMAGE_PHOTOS:
        raise IsplabError(f"unknown scikit-image photo {name!r}: expected one of {', '.join(SKIMAGE_PHOTOS)}")
    path = Path(skimage.data.data_dir) / SKIMAGE_PHOTOS[name]
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise IsplabError(f"{path}: scikit-image's bundled photo is missing or unreadable")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def sklearn_photo(name: str) -> np.ndarray:
    """Load one of :data:`SKLEARN_PHOTOS` as float32 sRGB (needs scikit-learn)."""
    if name not in SKLEARN_PHOTOS:
        raise IsplabError(f"unknown scikit-learn photo {name!r}: expected one of {', '.join(SKLEARN_PHOTOS)}")
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        raise IsplabError(f"source {name!r} needs scikit-learn, which is not installed") from None
    return np.asarray(load_sample_image(SKLEARN_PHOTOS[name]), dtype=np.float32)[..., :3] / 255.0


def sklearn_available() -> bool:
    """Whether scikit-learn (and so :data:`SKLEARN_PHOTOS`) can be imported."""
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError:
        return False
    return True


def heldout_photos() -> tuple[str, ...]:
    """The held-out photographs available here: scikit-image's, then scikit-learn's if installed."""
    return tuple(SKIMAGE_PHOTOS) + (tuple(SKLEARN_PHOTOS) if sklearn_available() else ())


def color_chart(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A 6x4 colour-checker-like chart on a grey surround, randomly scaled and shifted.

    Args:
        size: output ``(width, height)``.
    """
    w, h = size
    image = np.full((h, w, 3), 0.45 + 0.1 * rng.random(), np.float32)
    chart_w = int(w * rng.uniform(0.6, 0.95))
    chart_h = min(int(chart_w * 4 / 6), int(h * 0.95))
    x0 = int(rng.integers(0, w - chart_w + 1))
    y0 = int(rng.integers(0, h - chart_h + 1))
    pw, ph = chart_w / 6, chart_h / 4
    image[y0 : y0 + chart_h, x0 : x0 + chart_w] = 0.05
    for i, colour in enumerate(COLOR_CHECKER_SRGB):
        r, c = divmod(i, 6)
        ys, xs = int(y0 + (r + 0.1) * ph), int(x0 + (c + 0.1) * pw)
        image[ys : ys + int(0.8 * ph), xs : xs + int(0.8 * pw)] = colour
    return image


def gradient(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth two-colour gradient at a random angle, with a soft vignette."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1) / 2
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    a, b = rng.uniform(0.05, 0.95, size=(2, 3)).astype(np.float32)
    image = a * (1 - t[..., None]) + b * t[..., None]
    r2 = ((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2
    return (image * (1 - 0.6 * r2[..., None])).astype(np.float32)


def texture(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Band-limited coloured noise (blurred at two scales) with a few sinusoidal gratings."""
    w, h = size
    coarse = cv2.GaussianBlur(rng.random((h, w, 3), dtype=np.float32), (0, 0), sigmaX=max(w, h) / 16)
    fine = cv2.GaussianBlur(rng.random((h, w, 3), dtype=np.float32), (0, 0), sigmaX=2.0)
    coarse = (coarse - coarse.min()) / max(float(np.ptp(coarse)), 1e-6)
    fine = (fine - fine.mean()) / max(float(fine.std()), 1e-6)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    freq, angle = rng.uniform(0.02, 0.12), rng.uniform(0, np.pi)
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    image = 0.7 * coarse + 0.08 * fine + 0.2 * grating[..., None] * rng.uniform(0.2, 1.0, 3)
    return np.clip(image, 0, 1).astype(np.float32)


PROCEDURAL: dict[str, Callable[[tuple[int, int], np.random.Generator], np.ndarray]] = {
    "deadleaves": dead_leaves,
    "chart": color_chart,
    "gradient": gradient,
    "texture": texture,
}

# Round-robin order used by the dataset writer: photographs and procedural scenes interleaved.
SOURCES = ("chart", "astronaut", "texture", "coffee", "gradient", "chelsea", "rocket", "motorcycle", "hubble")
#: Round-robin of generated scenes only, for training: half dead-leaves, then the procedural ones.
TRAINING_SOURCES = ("deadleaves", "chart", "deadleaves", "texture", "deadleaves", "gradient")
#: Source name that stands for every held-out photograph (:func:`heldout_photos`).
HELDOUT = "heldout"
#: Source name that stands for :data:`TRAINING_SOURCES`.
TRAINING = "training"
#: Every built-in source name, for messages and help.
KNOWN_SOURCES = (TRAINING, HELDOUT, *PROCEDURAL, *SKIMAGE_PHOTOS, *SKLEARN_PHOTOS)


def random_crop_resized(image: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Crop ``image`` to the aspect of ``size`` at a random scale/offset and resize to ``(width, height)``."""
    w, h = size
    ih, iw = image.shape[:2]
    scale = min(iw / w, ih / h) * rng.uniform(0.6, 1.0)
    cw, ch = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    x0 = int(rng.integers(0, iw - cw + 1))
    y0 = int(rng.integers(0, ih - ch + 1))
    crop = image[y0 : y0 + ch, x0 : x0 + cw]
    interpolation = cv2.INTER_AREA if cw >= w else cv2.INTER_CUBIC
    return np.clip(cv2.resize(crop, (w, h), interpolation=interpolation), 0, 1).astype(np.float32)


def check_sources(names: Sequence[str]) -> tuple[str, ...]:
    """Check source names before any work: each is a built-in source or an existing image file.

    Only names and paths are checked here (cheap); an image file that cannot be decoded is
    reported when its sample is made.

    Returns:
        The names as a tuple.

    Raises:
        IsplabError: no names, an unknown name, or a path that is a folder.
    """
    names = expand_sources(names)
    if not names:
        raise IsplabError(f"no source images given: expected one or more of {', '.join(KNOWN_SOURCES)} or image files")
    for name in names:
        if name in PROCEDURAL or name in SKIMAGE_PHOTOS:
            continue
        if name in SKLEARN_PHOTOS:
            if not sklearn_available():
                raise IsplabError(f"source {name!r} needs scikit-learn, which is not installed")
            continue
        path = Path(name)
        if path.is_dir():
            raise IsplabError(f"source {path} is a folder: expected an image file or one of {', '.join(KNOWN_SOURCES)}")
        if not path.is_file():
            raise IsplabError(f"unknown source {name!r}: expected one of {', '.join(KNOWN_SOURCES)} or an image file")
    return names


def expand_sources(names: Sequence[str]) -> tuple[str, ...]:
    """Replace the group names :data:`TRAINING` and :data:`HELDOUT` by their members."""
    expanded: list[str] = []
    for name in (str(name) for name in names):
        if name == TRAINING:
            expanded.extend(TRAINING_SOURCES)
        elif name == HELDOUT:
            expanded.extend(heldout_photos())
        else:
            expanded.append(name)
    return tuple(expanded)


def is_heldout_photo(name: str) -> bool:
    """Whether ``name`` is one of the held-out photographs (which training data should not use)."""
    return name in SKIMAGE_PHOTOS or name in SKLEARN_PHOTOS


def load_source(name: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Produce an sRGB float32 ``(height, width, 3)`` image from the named source.

    Args:
        name: one of :data:`SOURCES`, or a path to an 8/16-bit RGB image of the user's.
        size: ``(width, height)`` of the output.
        rng: random generator for crop position and procedural content.
    """
    if name in PROCEDURAL:
        return PROCEDURAL[name](size, rng)
    if name in SKIMAGE_PHOTOS:
        return random_crop_resized(skimage_photo(name), size, rng)
    if name in SKLEARN_PHOTOS:
        return random_crop_resized(sklearn_photo(name), size, rng)
    path = Path(name)
    if path.is_file():
        from isplab.io.image import read_image, to_float

        image = to_float(read_image(path))
        if image.ndim != 3 or image.shape[2] < 3:
            raise IsplabError(f"{path}: expected an RGB image, got shape {image.shape}")
        return random_crop_resized(image[..., :3], size, rng)
    raise IsplabError(f"unknown source {name!r}: expected one of {', '.join(KNOWN_SOURCES)} or an image file")
