"""Output names too long to write: every output target fits where it is written (a name of at most
255 bytes, a whole key of at most 1024 on s3://, 4095 locally), the same on every run, distinct
from every other compared without case, also against names crafted to equal a shortened one;
names that fit are kept as they are."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.data.bank_table import meeting_ids
from pipeline.data.listing import style_ids
from pipeline.data.stylize import run_stylize
from pipeline.errors import ConfigError
from pipeline.storage.keys import (
    STYLE_BYTES,
    augmented_key,
    fitted,
    fitted_stems,
    folded,
    output_key,
    output_room,
    output_stems,
    safe_relpath,
    slug,
)
from pipeline.transfer import pair_names
from tests import images
from tests.conftest import S3Server, WeightFiles
from tests.test_stylize_job import local_manifest, make_config

# Letters of 1 to 4 bytes, and ones whose lower case has another length (Kelvin sign 'K' -> 'k').
LETTERS = ["a", "B", "é", "日", "\U0001f600", "\u212a", "k", "İ", "ß", ".", "_", " "]
segment = st.one_of(
    st.sampled_from(["a", "A", "x.jpg", "_m", "日本"]),
    st.builds(
        lambda letter, n, tail: letter * n + tail, st.sampled_from(LETTERS), st.integers(40, 320), st.text(max_size=3)
    ),
).filter(lambda s: "/" not in s and "\0" not in s)
rel = st.builds(
    lambda parts, ext: "/".join(parts) + ext,
    st.lists(segment, min_size=1, max_size=3),
    st.sampled_from([".jpg", ".PNG", ".png", ""]),
)
ROOM = output_room("/tmp/o", augment=False)
ROOTS = ["s3://b/out", "s3://b/" + "p" * 700, "/tmp/o", "/" + "d/" * 1600 + "o"]


def fits(target: str, root: str) -> bool:
    """Names below `root` at most 255 bytes; the whole key at most 1024 below its bucket, or 4095 as a local path."""
    key, limit = (target.split("://", 1)[1].partition("/")[2], 1024) if "://" in target else (target, 4095)
    below = target[len(root) + 1 :].split("/")
    return len(key.encode()) <= limit and all(len(part.encode()) <= 255 for part in below)


def stems_of(rels: list[str], root: str, augment: bool) -> list[str]:
    uris = [f"s3://in/{i}/{r}" for i, r in enumerate(rels)]  # distinct inputs, whose paths may meet
    return output_stems([safe_relpath(r) for r in rels], uris, room=output_room(root, augment)).to_pylist()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(rel, min_size=1, max_size=6),
    st.lists(st.one_of(st.sampled_from(["wave", "a__b"]), segment), min_size=1, max_size=3),
    st.sampled_from(ROOTS),
    st.data(),
)
def test_every_target_fits_and_none_meet(rels: list[str], names: list[str], root: str, data: st.DataObject) -> None:
    """Long and unicode names, with inputs crafted to equal the shortened ones (`HEAD-HASH.jpg`, in
    another case): every image's and video's (and its parts') target fits, and no two meet."""
    augment = data.draw(st.booleans())
    stems = stems_of(rels, root, augment)
    crafted = data.draw(st.lists(st.sampled_from(stems), max_size=3))
    rels += [f"{s}.jpg" for s in crafted] + [f"{s.upper()}.png" for s in crafted]
    stems = stems_of(rels, root, augment)
    assert stems == stems_of(rels, root, augment)  # the same on every run
    styles = style_ids([f"{n}.png" for n in names], [f"s3://st/{i}" for i in range(len(names))])
    naming = augmented_key if augment else output_key
    targets = [naming(root, style, stem, fmt) for stem in stems for style in styles for fmt in ("webp", "mp4")]
    parts = [f"{root}/_parts/{t[len(root) + 1 :]}/99999-9999999-9999999.mp4.json" for t in targets if t[-4:] == ".mp4"]
    assert all(fits(t, root) for t in targets + (parts if not augment else [])), max(targets, key=len)
    assert len(set(folded(targets))) == len(targets)


@settings(max_examples=100, deadline=None)
@given(st.lists(rel, min_size=1, max_size=8), st.sampled_from(ROOTS), st.booleans())
# Shorter than the room, but not with the '_' each folder may gain: found by hypothesis, kept.
@example(["a.jpg", "a/_m/" + "\U0001f600" * 41 + "\u0800.jpg"], "s3://b/" + "p" * 700, False)
def test_names_that_fit_are_as_they_were(rels: list[str], root: str, augment: bool) -> None:
    """Where the names given without room (earlier runs' outputs) all fit, they are kept exactly;
    a name too long becomes one that fits."""
    room = output_room(root, augment)
    safe = [safe_relpath(r) for r in rels]
    uris = [f"s3://in/{i}/{r}" for i, r in enumerate(rels)]
    stems, before = output_stems(safe, uris, room=room).to_pylist(), output_stems(safe, uris).to_pylist()
    if all(fitted(stem, room) == stem for stem in before):
        assert stems == before
    assert all(fitted(stem, room) == stem for stem in stems)


def test_a_short_name_beside_a_shortened_one_is_kept() -> None:
    room = output_room("s3://b/out", augment=True)
    stems = output_stems(["short.jpg", "é" * 200 + ".jpg"], room=room).to_pylist()
    assert stems[0] == "short" and len(stems[1].encode()) <= room.name


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(segment, st.sampled_from(["wave", "Wave"])), min_size=1, max_size=6), st.data())
def test_style_ids_are_short_slugs_of_their_own(names: list[str], data: st.DataObject) -> None:
    """Style ids of any length are at most STYLE_BYTES and their own slugs, distinct without case,
    also beside a style named as another's shortened slug; a bank whose ids' slugs meet is named."""
    names += [slug(n) for n in data.draw(st.lists(st.sampled_from(names), max_size=2))]
    ids = style_ids([f"{n}.png" for n in names], [f"s3://st/{i}" for i in range(len(names))])
    assert all(slug(i) == i and len(i.encode()) <= STYLE_BYTES for i in ids)
    assert len(set(folded(ids))) == len(ids)
    long = "s" * 300
    assert meeting_ids([long, slug(long)]) == (long, slug(long))


@settings(max_examples=50, deadline=None)
@given(st.lists(rel, min_size=1, max_size=4, unique=True), st.lists(segment, min_size=1, max_size=2, unique=True))
def test_transfer_names_fit(contents: list[str], styles: list[str]) -> None:
    """adain transfer's `CONTENT_stylized_STYLE` of long names fits the output folder, each pair apart."""
    names = list(pair_names([(f"/data/{k}", k) for k in contents], [f"stylized_{s}" for s in styles], ROOM).values())
    assert all(fits(f"/tmp/o/{name}.webp", "/tmp/o") for name in names)
    assert len(set(folded(names))) == len(names) == len(contents) * len(styles)


def test_an_output_prefix_too_long_for_any_name_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"use a shorter one$"):
        output_room("s3://b/" + "p" * 950, augment=False)


def test_an_input_with_a_name_too_long_to_write_is_stylized(
    ray_cluster: str, weights: WeightFiles, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    """An S3 key's 300-byte name made a local output no filesystem takes, an error row on every
    run: it is written under a shortened name, which a second run finds."""
    s3 = s3_server.client()
    name = "é" * 150 + ".jpg"
    s3.put_object(Bucket=bucket, Key=f"photos/{name}", Body=images.encoded(32, 32, "JPEG", seed=1))
    s3.put_object(Bucket=bucket, Key="photos/short.jpg", Body=images.encoded(32, 32, "JPEG", seed=2))
    style = tmp_path / "wave.png"
    style.write_bytes(images.encoded(32, 32, "PNG", seed=10))
    out = tmp_path / "out"
    cfg = make_config(weights, f"s3://{bucket}/photos/", (str(style),), str(out))
    summary = run_stylize(cfg)
    assert (summary["ok"], summary["error"]) == (2, 0), local_manifest(out)
    written = sorted(path.name for path in (out / "wave").iterdir())
    assert written[0] == "short.png" and written[1].startswith("é" * 100) and len(written[1].encode()) <= 255
    again = run_stylize(cfg)
    assert (again["ok"], again["skipped"]) == (0, 2)


def test_stems_are_fitted_chunk_by_chunk() -> None:
    """Ten million stems may hold more text than one Arrow string array takes (2 GiB): combining
    their chunks to fit a few was "offset overflow". Each chunk is fitted as it is."""
    room = output_room("s3://b/out", augment=False)
    values = ["a", "b" * 300, "c" * 260 + "/d", "e/" + "f" * 251]
    chunked = pa.chunked_array([pa.array(values[:2]), pa.array(values[2:])])
    fitted_chunks = fitted_stems(chunked, room)
    assert fitted_chunks.num_chunks == 2
    whole = fitted_stems(pa.chunked_array([values]), room).to_pylist()
    assert fitted_chunks.to_pylist() == [fitted(v, room) for v in values] == whole
    assert fitted_chunks.to_pylist()[0] == "a" and all(fitted(v, room) == v for v in fitted_chunks.to_pylist())
