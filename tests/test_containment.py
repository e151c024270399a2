"""Bad input never stops a job: fuzzed files through stylize, styles index and the training
loaders; bounded memory before decoding and after resizing; names that never meet."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import posixpath
import string
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from pipeline.config import ModelConfig, Scale, Sizing
from pipeline.data.bank import index_styles
from pipeline.data.decode import decode_one
from pipeline.data.listing import list_styles, style_ids
from pipeline.data.stylize import run_stylize
from pipeline.data.writers import VIDEO_FORMAT
from pipeline.errors import ImageError
from pipeline.imaging.codec import FORMATS, IMAGE_EXTENSIONS, MAX_PIXELS, PILLOW_FORMATS, decode, prepare
from pipeline.storage.keys import (
    _round_hash,
    _short_hash,
    augmented_key,
    folded,
    output_key,
    output_stems,
    safe_relpath,
    sample_name,
    slug,
    unique_names,
)
from pipeline.train.data import decode_crops, skipped_images_actor
from pipeline.transfer import pair_names
from tests import fuzz, images
from tests.conftest import WeightFiles
from tests.test_stylize_job import local_manifest, make_config

CORPUS = 300


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("fuzz")
    return folder, fuzz.write_corpus(folder, CORPUS, good=24, seed=13)


def test_the_corpus_exercises_what_pillow_raises(corpus: tuple[Path, list[str]]) -> None:
    """The mutations reach Pillow's odd corners (exceptions beyond OSError and ValueError),
    and every one of them becomes an ImageError."""
    folder, names = corpus
    raw: Counter[str] = Counter()
    for name in names:
        data = (folder / name).read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height <= MAX_PIXELS:
                    img.load()
                    ImageOps.exif_transpose(img).convert("RGB")
        except Exception as exc:
            raw[type(exc).__name__] += 1
        with contextlib.suppress(ImageError):
            decode(data)
    assert sum(raw.values()) >= CORPUS // 3, raw
    assert set(raw) - {"OSError", "UnidentifiedImageError", "ValueError", "SyntaxError", "EOFError"}, raw


def test_fuzzed_files_never_stop_a_job(ray_cluster: str, weights: WeightFiles, corpus, tmp_path: Path) -> None:
    """Every input x style has exactly one manifest row, ok or error with a reason; the job ends."""
    folder, names = corpus
    style = images.write(tmp_path / "styles" / "wave.png", images.encoded(32, 32, "PNG", seed=3))
    out = tmp_path / "out"
    # A stated 1 x 60000 image within the default --max-pixels would become 32 x 1.9 M pixels: a
    # user stylizing at 32 px bounds the work with --max-pixels, as this does.
    sizing = Sizing(content_size=32, style_size=32, max_pixels=1 << 18)
    cfg = make_config(weights, str(folder), (str(style),), str(out), scale=Scale(batch_size=16))
    summary = run_stylize(dataclasses.replace(cfg, sizing=sizing))
    rows = local_manifest(out)
    assert Counter(r["rel_path"] for r in rows) == Counter(names)
    assert {r["status"] for r in rows} <= {"ok", "error"}
    assert all(r["error"] and "\n" not in r["error"] for r in rows if r["status"] == "error")
    assert summary["ok"] >= 24 and summary["ok"] + summary["error"] == len(names)


def test_fuzzed_files_never_stop_indexing_or_training(ray_cluster: str, weights: WeightFiles, corpus, tmp_path):
    folder, names = corpus
    model = ModelConfig(str(weights.vgg), str(weights.decoder), "cpu")
    sizing = Sizing(content_size=32, style_size=32, max_pixels=1 << 18)
    result = index_styles(str(folder), str(tmp_path / "bank.parquet"), model, sizing, Scale(batch_size=16))
    assert result["styles"] + len(result["errors"]) == len(names)
    assert result["styles"] >= 24 and all("\n" not in e["error"] for e in result["errors"])

    skipped = skipped_images_actor()
    batch = {"uri": np.array([str(folder / n) for n in names], dtype=object)}
    crops = decode_crops(batch, resize=40, crop=32, max_pixels=1 << 20, skipped=skipped)["image"]
    reported = ray.get(skipped.all.remote())
    assert len(crops) + len(reported) == len(names) and crops.shape[1:] == (32, 32, 3)


# ---------------------------------------------------------------------------------------------
# memory: bounded before decoding, and after resizing

# `codec.decode` of stdin's bytes at argv[1] pixels: the outcome, then how far the peak RSS rose (KB) after import.
DECODE_IN_A_CHILD = """
import resource, sys
from pipeline.imaging.codec import decode
data, peak = sys.stdin.buffer.read(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    outcome = f"decoded {decode(data, int(sys.argv[1])).size}"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
print(outcome, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak, sep="\\n")
"""


def decode_in_a_child(data: bytes, max_pixels: int) -> tuple[str, float]:
    """What `decode` makes of `data`, and the MB its peak memory rose by, measured in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-c", DECODE_IN_A_CHILD, str(max_pixels)], input=data, capture_output=True, timeout=60
    )
    outcome, rise = done.stdout.decode().splitlines()
    return outcome, int(rise) / 1024


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    return images.zeros_png(4096, 4096)  # 64 MB of pixels in 65 KB


def test_only_the_listed_formats_are_opened() -> None:
    registered = Image.registered_extensions()
    assert set(PILLOW_FORMATS) == {registered[ext] for ext in IMAGE_EXTENSIONS}
    for fmt in PILLOW_FORMATS:
        assert decode(images.encoded(40, 30, fmt)).size == (40, 30)


@pytest.mark.parametrize("wrap", [images.in_ico, images.in_icns], ids=["ico", "icns"])
def test_formats_that_decode_before_the_size_check_are_refused_unread(wrap, png_bomb: bytes) -> None:
    """ICO and ICNS (whatever the file's name) hold a PNG of any size that Pillow decodes whole, inside
    Image.open (ICO) or at a size the header does not say (ICNS): refused, their pixels never decoded."""
    outcome, rise = decode_in_a_child(wrap(png_bomb), max_pixels=1_000_000)
    assert outcome.startswith("ImageError: not an image") and rise < 16, (outcome, rise)


def test_huge_files_and_devices_are_refused_unread(tmp_path: Path) -> None:
    """A sparse 1 TiB file (nothing on disk) and /dev/zero would be read until memory runs out."""
    sparse = tmp_path / "big.jpg"
    with open(sparse, "wb") as handle:
        handle.truncate(2**40)
    started = time.perf_counter()
    rows = [decode_one(uri, Sizing(content_size=32)) for uri in (str(sparse), "/dev/zero")]
    assert "big.jpg: 1,099,511,627,776 bytes, over the limit" in rows[0]["error"], rows[0]
    assert "/dev/zero: not a regular file" in rows[1]["error"], rows[1]
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("jpeg_to_model", [False, True], ids=["pillow", "device-jpeg"])
@pytest.mark.parametrize(("width", "height", "fmt"), [(1, 3000, "PNG"), (3000, 1, "JPEG"), (2, 4000, "JPEG")])
def test_resizing_never_makes_an_image_over_the_limit(tmp_path: Path, width, height, fmt, jpeg_to_model) -> None:
    """A thin strip scaled to a shorter side of 512 would be far over --max-pixels: refused
    before the resize, as the file's own size is before decoding."""
    path = images.write(tmp_path / f"strip.{fmt.lower()}", images.encoded(width, height, fmt))
    row = decode_one(str(path), Sizing(content_size=512, max_pixels=10_000_000), jpeg_to_model)
    assert row.get("pixels") is None and "resizing would make it" in row["error"], row
    with pytest.raises(ImageError, match="over the limit"):
        prepare(path.read_bytes(), 512, max_pixels=10_000_000)
    with pytest.raises(ImageError, match="too small, each side needs 9 pixels"):  # kept as it is: too thin for VGG
        prepare(path.read_bytes(), 0, max_pixels=10_000_000)


# ---------------------------------------------------------------------------------------------
# names: distinct inputs never share an output


# Letters whose lower case differs between Arrow's utf8_lower and Python's str.lower, or that
# lower onto another letter: 'İ' beside 'i' once crashed the naming, never converging.
CASE_FOLDS = ["İ", "i", "\u0131", "I", "ΟΔΟΣ", "οδοσ", "οδος", "ß", "SS", "\u212a", "k", "\u212b", "å"]
segment = st.one_of(
    st.sampled_from(["", ".", "..", "a", "A", "a.b", "_", "x y", "日本", "ä", "a_png", "IMG", *CASE_FOLDS]),
    st.text(alphabet=string.ascii_letters + string.digits + "._- ", min_size=1, max_size=6),
)
extension = st.sampled_from(["jpg", "JPG", "png", "jpeg", "webp", "", "tar.gz"])
key = st.builds(
    lambda parts, ext: "/".join(parts) + (f".{ext}" if ext else ""),
    st.lists(segment, min_size=1, max_size=4),
    extension,
)
uri = st.builds(lambda bucket, k: f"s3://{bucket}/{k}", st.sampled_from(["aaa", "bbb", "ccc"]), key)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(uri, min_size=1, max_size=40, unique=True))
def test_distinct_inputs_get_distinct_outputs(uris: list[str]) -> None:
    """Keys with case, dots, '..', empty segments, unicode, in several buckets: as many outputs
    as inputs, each inside the prefix, even on a filesystem that ignores case."""
    rels = [safe_relpath(u.split("/", 3)[3]) for u in uris]
    stems = output_stems(rels, uris).to_pylist()
    assert len(set(folded(stems))) == len(uris)
    assert all(not posixpath.isabs(s) and ".." not in s.split("/") and "" not in s.split("/") for s in stems)
    assert output_stems(rels, uris).to_pylist() == stems  # the same on every run


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="ab./", max_size=10), min_size=1, max_size=20))
def test_an_output_name_is_its_path_without_extension_where_none_meet(rels: list[str]) -> None:
    """Names that meet nobody's are the path less its extension, exactly as posixpath.splitext cuts it."""
    stems = [posixpath.splitext(r)[0] for r in rels]
    if len(set(folded(stems))) == len(stems):
        assert output_stems(rels).to_pylist() == stems


@settings(max_examples=200, deadline=None)
@given(st.lists(key, min_size=1, max_size=30))
def test_distinct_style_images_get_distinct_ids(keys: list[str]) -> None:
    uris = [f"s3://bucket/styles/{i}/{k}" for i, k in enumerate(keys)]  # distinct images, names that may meet
    ids = style_ids([posixpath.basename(k) or k for k in keys], uris)
    assert len(set(folded(ids))) == len(ids) and all("/" not in i for i in ids)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(min_size=0, max_size=8), st.sampled_from(CASE_FOLDS)), min_size=1, max_size=30))
def test_unique_names_tells_any_names_apart(names: list[str]) -> None:
    keys = [f"key-{i}" for i in range(len(names))]
    out = unique_names(names, keys)
    assert len(set(folded(out))) == len(out)
    lowered = folded(names)
    assert [n for n, o in zip(names, out, strict=True) if n == o] == [
        n for n, low in zip(names, lowered, strict=True) if lowered.count(low) == 1
    ]  # a name no other shares is kept as it is


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(key, st.sampled_from(["_manifest/a.jpg", "__manifest/a.jpg", "_runs/r.png"])), min_size=1))
def test_augmented_outputs_never_land_among_the_runs_own_files(keys: list[str]) -> None:
    """Input folders named `_manifest`, `_runs` or `_state` keep their outputs out of the run's
    own folders; distinct names stay distinct."""
    stems = sorted({safe_relpath(posixpath.splitext(k)[0]) for k in keys})
    outputs = [augmented_key("s3://b/out", "wave", stem, "jpg") for stem in stems]
    assert len(set(outputs)) == len(stems)
    assert not any(o.startswith(("s3://b/out/_manifest/", "s3://b/out/_runs/", "s3://b/out/_state/")) for o in outputs)


STEMS, STYLE_IDS = st.text("ab._/", min_size=1, max_size=6), st.text("ab._", min_size=1, max_size=4)
# Paths made of the pieces that have made names meet: dots, '_' and '__', folders, output extensions.
PIECES = ["a", "b", ".", "_", "__", "/", "jpg", "JPG", "mp4", "png_"]
RELS = st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@example(rels=["x.png", "x.jpg/y.png", "clip.mov", "clip.mp4/f.png"], styles=["s"], videos=[False, False, True, False])
@example(rels=["a.png", "a__b.png"], styles=["b__c", "c"], videos=[False, False])
@example(rels=["q.png", "q__c.jpg/z.png"], styles=["c"], videos=[False, False])
@given(st.lists(RELS, min_size=1, max_size=10, unique=True), st.lists(STYLE_IDS, min_size=1, max_size=3), st.data())
def test_no_two_outputs_meet_and_no_output_is_another_outputs_folder(
    rels: list[str], styles: list[str], videos: list[bool] | st.DataObject
) -> None:
    """Every (input, style) of a run, stylize's layout and augment's, images as --format and videos as
    .mp4: distinct keys, and none of them a folder of another (input `x.png`'s output `x.jpg` was
    the folder of input `x.jpg/y.png`'s, and `a` with style `b__c` met `a__b` with style `c`)."""
    if not isinstance(videos, list):
        videos = videos.draw(st.lists(st.booleans(), min_size=len(rels), max_size=len(rels)))
    stems = output_stems([safe_relpath(rel) for rel in rels], rels).to_pylist()  # keys: the inputs, as URIs are
    styles = sorted(set(styles), key=lambda s: slug(s).lower())
    styles = [s for i, s in enumerate(styles) if slug(s).lower() not in {slug(t).lower() for t in styles[:i]}]
    for naming in (output_key, augmented_key):
        keys = [
            naming("s3://b/out", style, stem, "mp4" if video else "jpg")
            for stem, video in zip(stems, videos, strict=False)
            for style in styles
        ]
        files = folded(keys)
        folders = {folder for key in files for folder in _parents(key)}
        assert len(set(files)) == len(files), sorted(keys)
        assert not folders & set(files), sorted(folders & set(files))


def test_every_output_extension_keeps_folders_apart() -> None:
    """keys.py lists the output extensions itself (storage does not import imaging): every format an
    output is written as, images' and videos', must be among them."""
    for ext in (*FORMATS, VIDEO_FORMAT):
        assert output_key("/o", "s", f"x.{ext.upper()}/y", "jpg") == f"/o/s/x.{ext.upper()}_/y.jpg", ext


def _parents(key: str) -> list[str]:
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


@settings(max_examples=300, deadline=None)
@example(pairs=[("a.b", "s"), ("a_b", "s")])
@example(pairs=[("x", "a.b"), ("x", "a_b")])
@example(pairs=[("a", "b__c"), ("a__b", "c")])
@example(pairs=[("a_", "b"), ("a", "_b")])
@given(st.lists(st.tuples(STEMS, STYLE_IDS), min_size=2))
def test_shard_sample_names_tell_samples_apart(pairs: list[tuple[str, str]]) -> None:
    """Distinct (input stem, style id) pairs, as the augment job has them (stems told apart by
    `output_stems`, ids by `slug`), are distinct WebDataset samples: no dot left for a loader to
    split a name at, and `a.b` kept apart from `a_b` (which once gave both the same name)."""
    pairs = list({(safe_relpath(stem), slug(style)) for stem, style in pairs})
    names = [sample_name(stem, style) for stem, style in pairs]
    assert len(set(names)) == len(names), sorted(zip(names, pairs, strict=True))
    assert not any("." in name for name in names)


def test_listed_names_that_meet(tmp_path: Path) -> None:
    """The named cases: a.jpg, a.png and a_png.jpg; the same key in two buckets; d/../y.jpg."""
    stems = output_stems(["a.jpg", "a.png", "a_png.jpg"]).to_pylist()
    assert len(set(stems)) == 3
    rels = ["x.jpg", "x.jpg", "d/y.jpg", "d/y.jpg"]
    uris = ["s3://one/x.jpg", "s3://two/x.jpg", "s3://b/d/y.jpg", "s3://b/d/../y.jpg"]
    assert len(set(output_stems(pa.chunked_array([rels]), pa.chunked_array([uris])).to_pylist())) == 4


def test_names_that_share_their_keys_too_are_a_mistake_not_a_hang() -> None:
    """Keys tell items apart; two items with one name and one key would get the same hash every round."""
    with pytest.raises(ValueError, match="share their names and their keys"):
        unique_names(["a", "A", "b"], ["k", "k", "j"])


def test_names_crafted_to_meet_each_renaming_are_told_apart() -> None:
    """Names made in advance with the hashes the renaming gives: `x_jpg-H.jpg`, `x_jpg-H-H.jpg`, ...
    (which outlasted output_stems' rounds) and `a-H8`, `a-H16`, `a-H64` (unique_names' digits)."""
    h = _short_hash("/in/x.jpg", 8)
    rels = ["x.jpg", "x.png", "x_jpg.jpg", f"x_jpg-{h}.jpg", f"x_jpg-{h}-{h}.jpg", f"x_jpg-{h}-{h}-{h}.jpg"]
    stems = output_stems(rels, [f"/in/{rel}" for rel in rels]).to_pylist()
    assert len(set(folded(stems))) == len(rels) and stems[1] == "x_png"
    rels = ["a.jpg", "a.png", *(f"a-{_short_hash('/s/a.jpg', digits)}.jpg" for digits in (8, 16, 64))]
    ids = style_ids(rels, [f"/s/{rel}" for rel in rels])
    assert len(set(folded(ids))) == len(rels) and ids[1] == f"a-{_short_hash('/s/a.png', 8)}"


def _crafted(names: list[str], keys: list[str], data: st.DataObject, extension: str = "") -> None:
    """Adds to `names` (and fresh `keys`) names made of another item's name and the suffixes its key
    gets in renaming rounds (`_round_hash`: 8, 16 and 64 digits, then the later rounds'), side by
    side (`a-H8`, `a-H16`) or chained (`a-H8`, `a-H8-H8`), the name cut at `extension`'s dot."""
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(names) - 1))
        base = posixpath.splitext(names[i])[0] if extension else names[i]
        if extension and data.draw(st.booleans()):
            base = f"{base}_{posixpath.splitext(names[i])[1].lstrip('.')}"  # as a name met renamed (`x_jpg`)
        chained, n = data.draw(st.booleans()), data.draw(st.integers(1, 5))
        # output_stems renames a met name again by 8 digits (`x_jpg-H-H`); unique_names by 8, 16, 64, ...
        for rounds in [0] * n if chained else range(n):
            name = f"{base}-{_round_hash(keys[i], rounds)}"
            base = name if chained else base  # chained: the next suffix goes after this one
            names.append(name + extension)
            keys.append(f"s3://crafted/{len(keys)}{extension}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["a", "A", "b", "a-0"]), min_size=1, max_size=5), st.data())
def test_unique_names_tells_crafted_names_apart(names: list[str], data: st.DataObject) -> None:
    """Names that hold the very suffixes other items' keys get: always distinct, never an error, the same every run."""
    keys = [f"s3://b/{i}" for i in range(len(names))]
    _crafted(names, keys, data)
    out = unique_names(names, keys)
    assert len(set(folded(out))) == len(out)
    assert unique_names(names, keys) == out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(["x.jpg", "x.png", "X.JPG", "x_jpg.jpg", "x", "d/x.jpg"]), min_size=1, max_size=5),
    st.data(),
)
def test_output_stems_tell_crafted_names_apart(rels: list[str], data: st.DataObject) -> None:
    """Input names that hold the suffixes other inputs get when renamed: as many outputs as inputs, the same
    every run."""
    uris = [f"s3://b{i}/{rel}" for i, rel in enumerate(rels)]
    _crafted(rels, uris, data, extension=".jpg")
    stems = output_stems(rels, uris).to_pylist()
    assert len(set(folded(stems))) == len(rels)
    assert output_stems(rels, uris).to_pylist() == stems


@settings(max_examples=200, deadline=None)
@given(st.lists(key, min_size=1, max_size=12, unique=True), st.lists(key, min_size=1, max_size=4))
@example(contents=[".jpg", "/.jpg"], styles=[".jpg"])  # paths that meet once made safe, as hypothesis found
def test_transfer_names_every_pair_apart(contents: list[str], styles: list[str]) -> None:
    files = [(f"/data/{k}", k) for k in contents]
    suffixes = [f"stylized_{posixpath.splitext(s)[0].replace('/', '_')}" for s in styles]
    names = pair_names(files, suffixes)
    assert len(names) == len(contents) * len(styles) == len(set(folded(list(names.values()))))


def test_style_images_of_one_name_in_two_folders_are_two_styles(tmp_path: Path) -> None:
    first = images.write(tmp_path / "a" / "wave.png", images.encoded(32, 32, "PNG", seed=1))
    second = images.write(tmp_path / "b" / "wave.png", images.encoded(32, 32, "PNG", seed=2))
    nested = images.write(tmp_path / "bank" / "a" / "b.png", images.encoded(32, 32, "PNG", seed=3))
    flat = images.write(tmp_path / "bank" / "a_b.png", images.encoded(32, 32, "PNG", seed=4))
    styles = list_styles((str(first), str(second), str(first)))  # the same image twice is one style
    assert len(styles) == 2 and len({sid for sid, _ in styles}) == 2
    assert {uri for _, uri in styles} == {str(first), str(second)}
    bank = dict(list_styles((str(tmp_path / "bank"),)))
    assert len(bank) == 2 and set(bank.values()) == {str(nested), str(flat)}
