"""RAW/RGB pairs for the learned ISP: folder layouts, packing, random patches with Bayer-safe augmentation.

Layouts (:func:`open_pairs` detects them with ``layout="auto"``):

- ``"mai"`` — the Mobile AI 2021 challenge: ``<root>/<split>/mediatek_raw/<i>.png`` (single-channel
  16-bit raw mosaic) with ``<root>/<split>/fujifilm/<i>.png`` (8-bit RGB target, same H x W);
- ``"zurich"`` — the Zurich RAW-to-RGB dataset (PyNET): ``huawei_raw/`` with ``canon/`` targets;
- ``"dng"`` — a folder of DNGs (``<root>/<split>/`` when that folder exists, else ``<root>`` itself)
  with ``<stem>_target.png`` next to each DNG or ``targets/<stem>.png``, as ``isplab data synth`` writes.

Packings (:data:`PACKINGS`) turn a raw mosaic into the network's ``(4, H/2, W/2)`` input:

- ``"challenge"`` (MAI and Zurich): the challenge's loader exactly — planes
  ``(B, Gb, R, Gr) = (raw[1::2, 1::2], raw[0::2, 1::2], raw[0::2, 0::2], raw[1::2, 0::2])``
  divided by ``4 * 255`` (10-bit data), no black level;
- ``"dng"``: black/white level normalisation from the file (clipped to [0, 1]), then
  :func:`isplab.isp.bayer.pack` into the canonical R, Gr, Gb, B order.

Metadata-aware input (``metadata=True``, ``isplab isp train --metadata``): the raw's as-shot white
balance, colour matrix and exposure (DNG BaselineExposure) are applied *before* the network
(:func:`raw_colour_transform`, :func:`apply_colour`: Malvar demosaic, the 3x3 transform per
pixel, re-sampled on an RGGB mosaic and packed), so the network sees white-balanced, exposed
linear sRGB planes, the linear image the ``oracle`` baseline renders, and learns demosaicking,
denoising and tone, not the camera's colour or the photo's brightness. This rather than extra
constant conditioning channels: the colour step is then exact by construction (a neutral patch
becomes equal planes whatever the camera and illuminant), the architectures and their exports
keep their 4-plane input, and a network cannot misread 12 conditioning numbers it saw for only a
few dozen cameras. Only raws with metadata (the ``dng`` packing) allow it; MAI/Zurich PNG raws carry none.

Decoded raws can be cached in memory (``cache_mb``, :meth:`PairSource.preload`): each pair is read
and normalised once, then patches are cut from memory.

Data for training and honest testing: :func:`heldout_set` writes the held-out test set of real
photographs (scikit-image's, and scikit-learn's when installed) unprocessed with held-out cameras;
training data should come from generated scenes only (``isplab data synth`` without ``--source``,
or :func:`training_set`).

Augmentation (:class:`PatchDataset`) transforms the RAW MOSAIC and the target together, then
re-packs: one of the 8 rotations/flips is applied to a crop two pixels larger than the patch, and
the patch is cut at the 0/1-pixel offset that puts every colour back on its original CFA site
(red on red, blue on blue). Under the four transforms that transpose the image the two green
sites exchange (Gr <-> Gb), which no re-alignment can avoid; both are green filters, so the
mosaic the network sees is still a valid one of the sensor's pattern. Permuting packed planes
instead would leave red and blue one raw pixel off their targets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from isplab.data.epoch import EpochDataset
from isplab.errors import IsplabError
from isplab.io.image import read_image, to_float
from isplab.io.raw import read_raw
from isplab.isp import bayer
from isplab.isp.levels import normalize_mosaic

PACKINGS = ("challenge", "dng")
LAYOUTS = ("mai", "zurich", "dng")
#: raw folder and target folder of each challenge-style layout
FOLDER_LAYOUTS = {"mai": ("mediatek_raw", "fujifilm"), "zurich": ("huawei_raw", "canon")}
#: the challenge scales 10-bit raw values by this (its loader's ``/ (4 * 255)``)
CHALLENGE_SCALE = 4 * 255
#: the CFA the challenge's plane names imply (R at raw[0::2, 0::2], B at raw[1::2, 1::2])
CHALLENGE_PATTERN = "RGGB"
TARGET_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


#: seed of the held-out set, so every user and the benchmark score on the same raws
HELDOUT_SEED = 2019
#: size of the held-out raws (width, height)
HELDOUT_SIZE = (512, 384)


def heldout_set(
    out_dir: str | Path,
    count: int | None = None,
    *,
    seed: int = HELDOUT_SEED,
    size: tuple[int, int] = HELDOUT_SIZE,
    noise: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the held-out test set: real photographs unprocessed with held-out cameras (noisy DNGs).

    Each photograph of :func:`isplab.data.sources.heldout_photos` in turn (a random crop of it), a
    random test camera of :mod:`isplab.data.cameras`, illuminant, ISO and exposure; ``count``
    defaults to two raws per photograph. The same arguments give the same files (``isplab isp
    test OUT_DIR -m MODEL`` then scores a model on them, with the classical baselines).

    Returns:
        ``out_dir``.
    """
    from isplab.data.sources import HELDOUT, heldout_photos
    from isplab.data.synth import synthesize_dataset

    count = 2 * len(heldout_photos()) if count is None else count
    synthesize_dataset(out_dir, count, seed=seed, size=size, sources=(HELDOUT,), noise=noise, overwrite=overwrite,
                       progress=progress, camera_split="test")
    return Path(out_dir)


def training_set(
    out_dir: str | Path, count: int, *, seed: int = 0, size: tuple[int, int] = (256, 192), camera_split: str = "train",
    noise: bool = True, overwrite: bool = False, progress: bool = False,
) -> Path:
    """Write ``count`` training (or, with ``camera_split="val"``, validation) pairs from generated
    scenes only (:data:`isplab.data.sources.TRAINING_SOURCES`) with that split's cameras."""
    from isplab.data.sources import TRAINING
    from isplab.data.synth import synthesize_dataset

    synthesize_dataset(out_dir, count, seed=seed, size=size, sources=(TRAINING,), noise=noise, overwrite=overwrite,
                       progress=progress, camera_split=camera_split)
    return Path(out_dir)


def pack_challenge(mosaic: torch.Tensor) -> torch.Tensor:
    """The challenge loader's packing of an already scaled mosaic: ``(..., H, W)`` -> ``(..., 4, H/2, W/2)``.

    Plane order (B, Gb, R, Gr) taken from raw[1::2, 1::2], raw[0::2, 1::2], raw[0::2, 0::2],
    raw[1::2, 0::2]. (The challenge calls the green on red's row "Gb"; the names are its own.)
    """
    if mosaic.shape[-2] % 2 or mosaic.shape[-1] % 2:
        raise IsplabError(f"a raw mosaic must have even height and width, got {tuple(mosaic.shape[-2:])}")
    planes = [mosaic[..., 1::2, 1::2], mosaic[..., 0::2, 1::2], mosaic[..., 0::2, 0::2], mosaic[..., 1::2, 0::2]]
    return torch.stack(planes, dim=-3)


def packed_to_rgb(packed: torch.Tensor, packing: str) -> torch.Tensor:
    """Half-resolution linear RGB from packed planes (greens averaged), for previews.

    ``packed``: ``(..., 4, h, w)`` in ``packing``'s plane order -> ``(..., 3, h, w)``.
    """
    order = {"challenge": (2, 1, 3, 0), "dng": (0, 1, 2, 3)}[_check_packing(packing)]
    r, g1, g2, b = (packed[..., i, :, :] for i in order)
    return torch.stack([r, (g1 + g2) / 2, b], dim=-3)


def _check_packing(packing: str) -> str:
    if packing not in PACKINGS:
        raise IsplabError(f"unknown packing {packing!r}: expected one of {', '.join(PACKINGS)}")
    return packing


def read_mosaic(path: str | Path, packing: str) -> tuple[torch.Tensor, str]:
    """Read a raw file as the ``(H, W)`` float32 mosaic ``packing`` expects, and its CFA pattern.

    ``"challenge"``: a single-channel 16-bit PNG raw of the MAI layout divided by 4*255 (no black
    level). ``"dng"``: any raw LibRaw reads, normalised by its black and white levels.

    Raises:
        IsplabError: unknown packing, unreadable file, or a challenge raw that is not single-channel.
    """
    path = Path(path)
    if packing == "challenge":
        raw = read_image(path)
        if raw.ndim != 2:
            raise IsplabError(f"{path}: expected a single-channel raw PNG for packing 'challenge', got shape {raw.shape}")
        return torch.from_numpy(raw.astype(np.float32) / CHALLENGE_SCALE), CHALLENGE_PATTERN
    if packing == "dng":
        frame = read_raw(path)
        mosaic = torch.from_numpy(frame.mosaic.astype(np.float32))[None, None]
        mosaic = normalize_mosaic(mosaic, frame.black_level, frame.white_level, frame.cfa_pattern)[0, 0]
        return mosaic, frame.cfa_pattern
    raise IsplabError(f"unknown packing {packing!r}: expected one of {', '.join(PACKINGS)}")


def pack_mosaic(mosaic: torch.Tensor, pattern: str, packing: str) -> torch.Tensor:
    """``(..., H, W)`` mosaic from :func:`read_mosaic` -> ``(..., 4, H/2, W/2)`` network input."""
    if packing == "challenge":
        return pack_challenge(mosaic)
    return bayer.pack(mosaic, pattern)


def colour_transform(wb_gains, camera_to_srgb, exposure_gain: float = 1.0) -> torch.Tensor:
    """The ``(3, 3)`` map from camera RGB to white-balanced, colour-corrected, exposed linear sRGB.

    ``exposure_gain * M @ diag(g)`` with the white-balance gains ``g = (gR, 1, gB)`` (normalised to
    G = 1) and the camera -> linear sRGB matrix ``M`` (applied after white balance,
    :func:`isplab.isp.color.camera_to_srgb_matrix`). A neutral (camera response proportional to
    the as-shot neutral ``1 / g``) becomes equal R, G, B, since ``M``'s rows sum to 1. float32.
    """
    g = torch.as_tensor(np.asarray(wb_gains, dtype=np.float64))
    m = torch.as_tensor(np.asarray(camera_to_srgb, dtype=np.float64))
    if g.shape != (3,) or m.shape != (3, 3):
        raise IsplabError(f"expected (3,) white-balance gains and a (3, 3) colour matrix, got {tuple(g.shape)} and {tuple(m.shape)}")
    if not (np.isfinite(exposure_gain) and exposure_gain > 0):
        raise IsplabError(f"exposure_gain must be a positive number, got {exposure_gain!r}")
    return (m * (g / g[1])[None, :] * float(exposure_gain)).float()


def exposure_gain(path: str | Path) -> float:
    """A raw file's own exposure as a linear gain, ``2 ** BaselineExposure`` (1 when the file has none)."""
    return read_raw(path).exposure_gain


def raw_colour_transform(path: str | Path) -> torch.Tensor:
    """:func:`colour_transform` from a raw file's as-shot neutral, colour matrix and exposure
    ``2 ** BaselineExposure`` (:attr:`isplab.io.raw.RawImage.exposure_gain`).

    Raises:
        IsplabError: unreadable file, or a file without a colour matrix.
    """
    from isplab.io.raw import read_raw
    from isplab.isp.color import camera_to_srgb_matrix

    frame = read_raw(path)
    if frame.color_matrix is None:
        raise IsplabError(f"{path}: no colour matrix in the file, expected a raw with metadata for a --metadata model")
    return colour_transform(frame.wb_gains, camera_to_srgb_matrix(frame.color_matrix), frame.exposure_gain)


#: the CFA layout of metadata-aware input, whatever the sensor's (see :func:`apply_colour`)
METADATA_PATTERN = "RGGB"


def apply_colour(mosaic: torch.Tensor, pattern: str, transform: torch.Tensor) -> torch.Tensor:
    """Metadata-aware input of a normalised ``(..., H, W)`` mosaic: ``(..., 4, H/2, W/2)``.

    The mosaic is demosaicked (Malvar, as the ``oracle`` baseline renders), each pixel's camera RGB
    mapped by ``transform`` (:func:`colour_transform`: white balance, colour matrix, exposure), and
    the result sampled back on an RGGB mosaic (:data:`METADATA_PATTERN`) and packed R, Gr, Gb, B.
    Every plane value is then the corrected colour at that plane's own sensor site (mixing the four
    sites of a 2x2 quad instead would put the colour matrix's large off-diagonal terms on
    misaligned samples: colour fringes at every edge), and the planes' layout is RGGB for any
    sensor, as the classical prior (:mod:`isplab.models.isp_prior`) expects.
    """
    from isplab.isp.demosaic import demosaic

    lead = mosaic.shape[:-2]
    flat = mosaic.reshape(-1, 1, *mosaic.shape[-2:])
    rgb = demosaic(flat, pattern, "malvar")
    rgb = torch.einsum("ij,bjhw->bihw", transform.to(rgb), rgb)
    planes = bayer.pack(bayer.mosaic(rgb, METADATA_PATTERN), METADATA_PATTERN)
    return planes.reshape(*lead, *planes.shape[-3:])


def model_input(mosaic: torch.Tensor, pattern: str, packing: str, transform: torch.Tensor | None = None) -> torch.Tensor:
    """The network input of a normalised ``(..., H, W)`` mosaic: packed, or colour-corrected
    (:func:`apply_colour`) when ``transform`` (:func:`raw_colour_transform`) is given, as
    metadata-aware models expect.

    Training patches, validation and test images and full-resolution inference all go through it.
    """
    if transform is None:
        return pack_mosaic(mosaic, pattern, packing)
    if packing != "dng":
        raise IsplabError(f"metadata-aware input needs the 'dng' packing, got {packing!r}")
    return apply_colour(mosaic, pattern, transform)


def _target_array(path: Path) -> np.ndarray:
    target = read_image(path)
    if target.ndim != 3 or target.shape[2] < 3:
        raise IsplabError(f"{path}: expected an RGB target image, got shape {target.shape}")
    return np.ascontiguousarray(target[..., :3])


@dataclass
class PairSource:
    """Raw/target file pairs of one split and how to load them.

    Attributes:
        raws, targets: paired files, in the same order.
        layout: ``"mai"``, ``"zurich"`` or ``"dng"``.
        packing: see :data:`PACKINGS`.
        root: the folder the pairs were found in.
        metadata: inputs are colour-corrected with each raw's white balance and colour matrix
            (:func:`model_input`); ``dng`` packing only.
        exposure: (blind input) each mosaic is multiplied by its raw's own exposure gain
            (:func:`exposure_gain`) and nothing else, for exposure-aware blind models; ``dng``
            packing only (metadata-aware input includes the exposure anyway).
        cache_mb: keep up to this many MB of decoded pairs in memory (0: read every time).
    """

    raws: list[Path]
    targets: list[Path]
    layout: str
    packing: str
    root: Path
    metadata: bool = False
    cache_mb: float = 0.0
    exposure: bool = False
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    _cached_bytes: list = field(default_factory=lambda: [0], repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.metadata and self.packing != "dng":
            raise IsplabError(
                f"metadata-aware input needs raws with white balance and colour matrix (DNG folders); "
                f"{self.root} holds {self.layout} raws without metadata"
            )
        if self.exposure and self.packing != "dng":
            raise IsplabError(
                f"exposure-aware input needs raws that carry their exposure (DNG folders); {self.root} holds "
                f"{self.layout} raws without it"
            )
        if self.cache_mb < 0:
            raise IsplabError(f"cache_mb must be >= 0, got {self.cache_mb}")

    def __len__(self) -> int:
        return len(self.raws)

    @property
    def names(self) -> list[str]:
        """The raw files' stems (``"0"``, ``"synth_00000"``...)."""
        return [path.stem for path in self.raws]

    def load_mosaic(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Pair ``i`` before packing.

        Returns:
            ``(mosaic (H, W) float32 normalised as the packing does, target (3, H, W) float32 in
            [0, 1], CFA pattern of the mosaic)``.

        Raises:
            IsplabError: unreadable files, or target and raw of different sizes.
        """
        mosaic, target, pattern, _ = self._decoded(i)
        target = torch.from_numpy(to_float(target)).permute(2, 0, 1).contiguous()
        return mosaic, target, pattern

    def _decoded(self, i: int) -> tuple[torch.Tensor, np.ndarray, str, torch.Tensor | None]:
        """Pair ``i`` as decoded (mosaic, target array H x W x 3 as stored, pattern, colour transform), cached."""
        if i in self._cache:
            return self._cache[i]
        raw_path, target_path = self.raws[i], self.targets[i]
        mosaic, pattern = read_mosaic(raw_path, self.packing)
        target = _target_array(target_path)
        if tuple(target.shape[:2]) != tuple(mosaic.shape):
            raise IsplabError(
                f"size mismatch: raw {raw_path} is {mosaic.shape[0]}x{mosaic.shape[1]} but its target "
                f"{target_path} is {target.shape[0]}x{target.shape[1]} (expected the same height x width)"
            )
        transform = raw_colour_transform(raw_path) if self.metadata else None
        if self.exposure and not self.metadata:
            mosaic = mosaic * exposure_gain(raw_path)
        item = (mosaic, target, pattern, transform)
        size = mosaic.numel() * mosaic.element_size() + target.nbytes
        if self._cached_bytes[0] + size <= self.cache_mb * 2**20:
            self._cache[i] = item
            self._cached_bytes[0] += size
        return item

    def preload(self) -> int:
        """Decode pairs into the cache until it holds ``cache_mb`` MB (or every pair); returns how many are cached.

        Called before data-loader workers start, the cache is shared with forked workers
        instead of each worker filling its own.
        """
        for i in range(len(self)):
            if self._cached_bytes[0] >= self.cache_mb * 2**20:
                break
            self._decoded(i)
        return len(self._cache)

    def colour(self, i: int) -> torch.Tensor | None:
        """Pair ``i``'s :func:`colour_transform` when ``metadata``, else ``None``."""
        return self._decoded(i)[3] if self.metadata else None

    def pack(self, mosaic: torch.Tensor, pattern: str, transform: torch.Tensor | None = None) -> torch.Tensor:
        """``(..., H, W)`` normalised mosaic -> ``(..., 4, H/2, W/2)`` network input (:func:`model_input`)."""
        return model_input(mosaic, pattern, self.packing, transform)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair ``i``: ``(packed (4, h, w) float32, target (3, 2h, 2w) float32)``, colour-corrected when ``metadata``."""
        mosaic, target, pattern = self.load_mosaic(i)
        return self.pack(mosaic, pattern, self.colour(i)), target


def detect_layout(root: str | Path, split: str = "train") -> str:
    """The layout of ``root`` (see the module docstring).

    Raises:
        IsplabError: nothing recognisable; the message lists the folders and files looked for.
    """
    root = Path(root)
    if not root.is_dir():
        raise IsplabError(f"dataset folder {root} does not exist")
    for layout, (raw_dir, _) in FOLDER_LAYOUTS.items():
        if (root / split / raw_dir).is_dir():
            return layout
    if _dng_files(_dng_folder(root, split)):
        return "dng"
    looked_for = [f"{root / split / raw}/<i>.png" for raw, _ in FOLDER_LAYOUTS.values()]
    looked_for.append(f"*.dng in {_dng_folder(root, split)}")
    raise IsplabError(f"no RAW/RGB pairs found in {root}: looked for {'; '.join(looked_for)}")


def open_pairs(root: str | Path, split: str = "train", layout: str = "auto", packing: str | None = None, *,
               metadata: bool = False, cache_mb: float = 0.0, exposure: bool = False) -> PairSource:
    """Find the raw/target pairs of ``split`` under ``root``.

    Args:
        root: dataset folder.
        split: ``"train"``, ``"val"``, ``"test"``... (a DNG folder without split folders is used
            for every split).
        layout: ``"auto"`` or one of :data:`LAYOUTS`.
        packing: ``None`` picks ``"challenge"`` for MAI/Zurich and ``"dng"`` for DNGs.
        metadata, cache_mb, exposure: see :class:`PairSource`.

    Raises:
        IsplabError: unknown layout or packing, no pairs, a raw without a target (named), or
            ``metadata`` for raws without metadata.
    """
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root, split)
    elif layout not in LAYOUTS:
        raise IsplabError(f"unknown layout {layout!r}: expected 'auto' or one of {', '.join(LAYOUTS)}")
    if layout == "dng":
        folder = _dng_folder(root, split)
        raws = _dng_files(folder)
        if not raws:
            raise IsplabError(f"no RAW/RGB pairs found: no *.dng files in {folder}")
        targets = [_dng_target(raw) for raw in raws]
        packing = packing or "dng"
    else:
        raw_name, target_name = FOLDER_LAYOUTS[layout]
        folder = root / split
        raw_dir, target_dir = folder / raw_name, folder / target_name
        raws = sorted(raw_dir.glob("*.png"), key=_natural_key) if raw_dir.is_dir() else []
        if not raws:
            raise IsplabError(f"no RAW/RGB pairs found: no <i>.png raws in {raw_dir} ({layout} layout)")
        targets = [target_dir / raw.name for raw in raws]
        for raw, target in zip(raws, targets):
            if not target.is_file():
                raise IsplabError(f"raw {raw} has no target: expected {target}")
        packing = packing or "challenge"
    return PairSource(raws=raws, targets=targets, layout=layout, packing=_check_packing(packing), root=folder,
                      metadata=metadata, cache_mb=cache_mb, exposure=exposure)


def _natural_key(path: Path) -> tuple:
    # The challenge numbers its files 0..N-1: sort 2 before 10.
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem))


def _dng_folder(root: Path, split: str) -> Path:
    return root / split if (root / split).is_dir() else root


def _dng_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.glob("*") if p.suffix.lower() == ".dng"), key=_natural_key)


def _dng_target(raw: Path) -> Path:
    candidates = [raw.with_name(f"{raw.stem}_target{suffix}") for suffix in TARGET_SUFFIXES]
    candidates += [raw.parent / "targets" / f"{raw.stem}{suffix}" for suffix in TARGET_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise IsplabError(
        f"raw {raw} has no target: expected {raw.stem}_target.png next to it or targets/{raw.stem}.png"
    )


# The 8 rotations/flips of the square, as (k quarter turns counter-clockwise, flip rows first).
TRANSFORMS = tuple((k, flip) for flip in (False, True) for k in range(4))


def transform(image: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Flip ``(..., H, W)`` vertically (if ``flip``) then rotate by ``k`` quarter turns."""
    if flip:
        image = image.flip(-2)
    return torch.rot90(image, k, dims=(-2, -1))


def phase_offset(pattern: str, k: int, flip: bool) -> tuple[int, int]:
    """Where the sensor's 2x2 colour tile reappears after :func:`transform`.

    Returns the ``(dy, dx)`` in {0, 1}^2 at which the transformed mosaic (even sides) shows
    ``pattern`` again, greens counted as one colour. Every rotation/flip of a Bayer tile is a
    shift of it, so there always is one.
    """
    colours = torch.tensor(bayer.channel_index(pattern)).reshape(2, 2)
    moved = transform(colours.repeat(2, 2), k, flip)
    for dy in (0, 1):
        for dx in (0, 1):
            if torch.equal(moved[dy : dy + 2, dx : dx + 2], colours):
                return dy, dx
    raise AssertionError(f"{pattern} is not a Bayer pattern")


class PatchDataset(EpochDataset):
    """Random training patches: item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``.

    Item: ``(packed (4, patch/2, patch/2), target (3, patch, patch))`` from a random image of
    ``source`` at a random even raw offset, augmented (see the module docstring) when ``augment``.
    Every random choice of an item comes from ``numpy.random.default_rng([seed, epoch, index])``,
    never from a global generator, so:

    - under DDP, where Lightning's ``DistributedSampler`` hands each rank different indices, the
      ranks train on different patches (the same seed on every rank is fine);
    - dataloader workers need no seeding of their own, and a run is reproducible whatever the
      number of workers or ranks;
    - a new epoch (:meth:`set_epoch`) draws new patches. :func:`isplab.engine.build_trainer`'s
      trainers call it at the start of every epoch (and of every fit, for a resume).

    The epoch lives in shared memory, so dataloader worker processes, persistent ones included,
    see :meth:`set_epoch` calls made in the main process.

    Args:
        source: the pairs.
        patch: raw patch side in raw pixels (even), e.g. 256 -> 128x128x4 input, 256x256x3 target.
        patches_per_epoch: the dataset's length (the seed's ``train_size``).
        augment: random rotations/flips that keep the CFA phase.
        seed: the run's seed.

    Images larger than the patch give every transform (the crop needs one spare raw pixel to
    re-align); an image exactly patch-sized only allows the transforms that need no shift.
    """

    def __init__(
        self, source: PairSource, patch: int = 256, patches_per_epoch: int = 5000, augment: bool = True,
        seed: int = 0,
    ) -> None:
        if patch < 2 or patch % 2:
            raise IsplabError(f"patch must be a positive even number of raw pixels, got {patch}")
        super().__init__(patches_per_epoch, seed)
        if len(source) == 0:
            raise IsplabError(f"no pairs in {source.root}")
        self.source, self.patch, self.augment = source, patch, augment
        self.patches_per_epoch = patches_per_epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng(index)
        i = int(rng.integers(len(self.source)))
        mosaic, target, pattern = self.source.load_mosaic(i)
        h, w = mosaic.shape
        if min(h, w) < self.patch:
            raise IsplabError(
                f"{self.source.raws[i]} is {h}x{w}, smaller than the {self.patch}x{self.patch} patch"
            )
        # A crop 2 px larger (when it fits) leaves room to re-align the CFA after the transform.
        window = [min(self.patch + 2, size - size % 2) for size in (h, w)]
        y = 2 * int(rng.integers((h - window[0]) // 2 + 1))
        x = 2 * int(rng.integers((w - window[1]) // 2 + 1))
        stack = torch.cat([mosaic[None, y : y + window[0], x : x + window[1]], target[:, y : y + window[0], x : x + window[1]]])
        k, flip, (dy, dx) = 0, False, (0, 0)
        if self.augment:
            k, flip, (dy, dx) = self._pick_transform(rng, pattern, window)
        stack = transform(stack, k, flip)[:, dy : dy + self.patch, dx : dx + self.patch]
        return self.source.pack(stack[0], pattern, self.source.colour(i)), stack[1:].contiguous()

    def _pick_transform(self, rng: np.random.Generator, pattern: str, window: list[int]) -> tuple:
        spare = min(window) - self.patch  # square patch: a transpose swaps the spare rows/cols
        choices = []
        for k, flip in TRANSFORMS:
            offset = phase_offset(pattern, k, flip)
            if max(offset) <= spare:
                choices.append((k, flip, offset))
        return choices[int(rng.integers(len(choices)))]


class FullImageDataset(Dataset):
    """Whole images of a source for validation and testing: item ``i`` is ``source.load(i)``.

    With ``multiple`` the pair is centrally cropped so the packed size is a multiple of it (e.g. a
    model's ``size_multiple``); with ``crop`` (raw pixels, even) to a central ``crop x crop``.
    """

    def __init__(self, source: PairSource, multiple: int = 1, crop: int | None = None) -> None:
        if crop is not None and (crop < 2 or crop % 2):
            raise IsplabError(f"crop must be a positive even number of raw pixels, got {crop}")
        self.source, self.multiple, self.crop = source, multiple, crop

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        packed, target = self.source.load(index)
        h, w = packed.shape[-2:]
        if self.crop is not None:
            h, w = min(h, self.crop // 2), min(w, self.crop // 2)
        h, w = h - h % self.multiple, w - w % self.multiple
        if h == 0 or w == 0:
            raise IsplabError(
                f"{self.source.raws[index]} is too small: the model needs packed sizes that are multiples of {self.multiple}"
            )
        top, left = (packed.shape[-2] - h) // 2, (packed.shape[-1] - w) // 2
        packed = packed[:, top : top + h, left : left + w]
        target = target[:, 2 * top : 2 * (top + h), 2 * left : 2 * (left + w)]
        return packed.contiguous(), target.contiguous()
