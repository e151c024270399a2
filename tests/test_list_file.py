"""List files read by Ray Data: the same inputs and names as the driver's table, the driver
holding a hash per row; checked before Ray starts; on S3 through the storage's filesystem."""

from __future__ import annotations

import io
import logging
import posixpath
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.cli.commands import EXIT_OK, EXIT_USAGE
from pipeline.data import list_file, listing
from pipeline.data.list_file import LISTING_SCHEMA
from pipeline.data.listing import Inputs, ListFile, csv_options, find_inputs, list_inputs, split_videos
from pipeline.errors import AdainError, ConfigError
from pipeline.storage.keys import fitted, folded, output_room
from tests import fuzz, images
from tests.conftest import S3Server, WeightFiles, free_port
from tests.test_first_run import job_flags

COLUMNS = ("input_uri", "rel_path", "key")


def write_list(path: Path, entries: list[str]) -> None:
    """The entries as the list file `path`'s extension says (text, CSV with a `uri` column, Parquet)."""
    if path.suffix == ".parquet":
        pq.write_table(pa.table({"n": list(range(len(entries))), "uri": entries}), path)
    elif path.suffix == ".csv":
        path.write_text("n,uri\n" + "".join(f"{i},{e}\n" for i, e in enumerate(entries)))
    else:
        path.write_text("# inputs\n" + "\n".join(entries) + "\n")


def named(table: pa.Table) -> set[tuple[str, str, str]]:
    return set(zip(*(table.column(c).to_pylist() for c in COLUMNS), strict=True))


def dataset_rows(source: str, root: str | None = None, exclude: str | None = None) -> tuple[int, pa.Table, pa.Table]:
    """The list file's image count, its images' rows as the job's Dataset holds them, and its videos."""
    inputs = Inputs.of(find_inputs(source, root=root, exclude=exclude))
    batches = list(inputs.dataset(4).iter_batches(batch_format="pyarrow", batch_size=None))
    assert inputs.videos is not None
    return inputs.count, pa.concat_tables([LISTING_SCHEMA.empty_table(), *batches]), inputs.videos


ROOM = output_room("s3://b/out", augment=True)
LONG = ["é" * 130, "\u212a" * 90]  # names too long for ROOM (the Kelvin sign lowers to 1 byte of 3)
CRAFTED = [fitted(name, ROOM) for name in LONG]  # names made to meet their shortened forms
segment = st.sampled_from(
    ["", ".", "..", "a", "A", "a.b", "_", "a_png", "a_jpg", "b", "日本", "x-y", "İ", "i", "İ_jpg", *LONG, *CRAFTED]
)
extension = st.sampled_from(["jpg", "JPG", "png", "PNG", "", "mp4", "MOV"])
entry = st.builds(
    lambda base, parts, ext: base + "/".join(parts) + (f".{ext}" if ext else ""),
    st.sampled_from(["", "d/", "s3://aaa/", "s3://bbb/", "/abs/", "out/"]),
    st.lists(segment, min_size=1, max_size=3),
    extension,
)
NAMED_CASES = ["a.png", "a.jpg", "a_png.jpg", "A.PNG", "a.png", "d/../y.jpg", "d/y.jpg", "a_jpg.png", "a.JPG"]
# 'İ' lowers to 'i' in Arrow, to 'i̇' in Python: a renamed input once took another's name unseen.
FOLDED_CASES = ["İ.jpg", "İ.png", "İ_jpg.gif", "i.jpg"]


def named_in_memory(found: ListFile, entries: list[str]) -> pa.Table:
    """The list file path's naming with the tasks' functions, and all rows in memory for `gather`."""
    rows = list_file.entries(pa.table({"uri": pa.array(entries, pa.string())}), found)
    rows = rows.filter(pc.invert(rows.column("inside"))).drop_columns(["inside"])
    hashes = list_file.hashed(rows)
    gather = lambda wanted: rows.filter(pa.array(np.isin(hashes, wanted)))  # noqa: E731
    named, _, dropped = list_file.named_on_driver(hashes.copy(), gather, found.room)
    return pa.concat_tables([rows.filter(pa.array(~np.isin(hashes, dropped))), named])


@settings(max_examples=300, deadline=None)
@given(st.lists(entry, min_size=1, max_size=40), st.booleans(), st.sampled_from([None, ROOM]))
@example(NAMED_CASES, False, None)
@example(FOLDED_CASES, True, ROOM)
def test_names_resolved_on_hashes_are_the_tables_names(entries: list[str], rooted: bool, room) -> None:
    """The rows named on the driver from hashes, with the rest as the tasks name them, equal
    `list_inputs`' table: the whole list's names, each URI once, fitted to the output's `room`."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "inputs.parquet"
        write_list(source, entries)
        root, exclude = (folder if rooted else None), f"{folder}/out"
        try:
            table = list_inputs(str(source), root=root, exclude=exclude, room=room)
        except ConfigError:
            return  # nothing left to name
        rows = named_in_memory(ListFile(str(source), "uri", root, exclude, room), entries)
    assert named(rows) == named(table) and rows.num_rows == table.num_rows
    assert len(set(folded(rows.column("key").to_pylist()))) == rows.num_rows  # no two share an output
    assert room is None or all(fitted(key, room) == key for key in rows.column("key").to_pylist())


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(entry, min_size=0, max_size=24), st.sampled_from(["txt", "csv", "parquet"]), st.booleans())
@example([*NAMED_CASES, "s3://aaa/a.png", "/abs/a.png", "out/z.jpg", "v.mp4", "a.mp4", "d/V.MOV"], "txt", False)
@example([*NAMED_CASES, "a.MP4", "a.MP4"], "parquet", True)
@example(["clip.mp4", "d/clip.mov"], "csv", False)
def test_the_dataset_names_inputs_as_the_table_does(
    ray_cluster: str, entries: list[str], kind: str, rooted: bool
) -> None:
    """Duplicates, case, one stem with two extensions, `a_png.jpg` beside `a.png`, '..'
    segments, entries under the output, videos among the images: the same (input_uri, rel_path,
    key) set, each URI once, its videos split off for the videos' pipeline."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / f"inputs.{kind}"
        write_list(source, entries)
        root, exclude = (folder if rooted else None), f"{folder}/out"
        try:
            table = list_inputs(str(source), root=root, exclude=exclude)
        except ConfigError:  # no entries (or all under the output): the Dataset path says so too
            with pytest.raises(ConfigError, match="no input images"):
                dataset_rows(str(source), root, exclude)
            return
        count, rows, videos = dataset_rows(str(source), root, exclude)
    images, listed_videos = split_videos(table)
    assert named(rows) == named(images) and named(videos) == named(listed_videos)
    assert count == rows.num_rows == images.num_rows == len(set(rows.column("input_uri").to_pylist()))
    assert videos.num_rows == listed_videos.num_rows == len(set(videos.column("input_uri").to_pylist()))
    assert rows.column("size").null_count == rows.num_rows  # list entries are named, not listed


def test_list_files_on_s3_are_read_by_ray_data(ray_cluster: str, s3_server: S3Server, bucket: str) -> None:
    """Text and CSV list files in a bucket, read by the tasks through AWS_ENDPOINT_URL (a Parquet
    one is test_stylize_job's, end to end)."""
    entries = ["photos/a.jpg", "photos/a.png", f"s3://{bucket}/photos/a.jpg", "photos/sub/b.jpg", "../c.jpg"]
    s3 = s3_server.client()
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("txt", "csv"):
            local = Path(folder) / f"inputs.{kind}"
            write_list(local, entries)
            s3.put_object(Bucket=bucket, Key=f"lists/inputs.{kind}", Body=local.read_bytes())
            source = f"s3://{bucket}/lists/inputs.{kind}"
            count, rows, _ = dataset_rows(source, root=f"s3://{bucket}/lists")
            assert named(rows) == named(list_inputs(source, root=f"s3://{bucket}/lists")), kind
            assert count == 5 and f"s3://{bucket}/lists/photos/a.jpg" in rows.column("input_uri").to_pylist()


def test_a_bad_list_file_fails_before_ray(tmp_path: Path, s3_server: S3Server, bucket: str) -> None:
    """Missing, empty or not what its name says: one line, from its first bytes, no Ray needed."""
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "headless.csv").write_text("photos/a.jpg\nphotos/b.jpg\n")  # its first entry was taken for a name
    (tmp_path / "named.csv").write_text("path\nphotos/a.jpg\n")  # another name than uri: the first column
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"uri": ["a.jpg"]}), buffer)
    (tmp_path / "ok.parquet").write_bytes(buffer.getvalue())
    for source, reason in (
        (str(tmp_path / "missing.txt"), "not found"),
        (f"s3://{bucket}/missing.parquet", "not found"),
        (str(tmp_path / "empty.csv"), "no columns"),
        (str(tmp_path / "bad.parquet"), "not a list file"),
        (str(tmp_path / "headless.csv"), r"first line \(photos/a.jpg\) is an entry"),
    ):
        with pytest.raises(AdainError, match=reason):
            find_inputs(source)
        if source.endswith(".csv"):  # as `adain augment` reads a list file, on the driver
            with pytest.raises(AdainError, match=reason):
                list_inputs(source)
    assert find_inputs(str(tmp_path / "named.csv")).column == "path"
    named_rows = list_inputs(str(tmp_path / "named.csv"), root=str(tmp_path))
    assert named_rows.column("rel_path").to_pylist() == ["photos/a.jpg"]
    assert find_inputs(str(tmp_path / "ok.parquet")).column == "uri"


def test_text_lists_are_utf8_with_or_without_a_byte_order_mark(ray_cluster: str, tmp_path: Path) -> None:
    """A byte-order mark (Notepad's UTF-8) is not part of the first entry, on either path; a list
    that is not UTF-8 is one line saying so, from its first bytes before Ray runs or from the
    tasks when the odd byte comes later."""
    marked = tmp_path / "marked.txt"
    marked.write_bytes(b"\xef\xbb\xbfa.jpg\r\nb.jpg\r\n")
    expected = {str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")}
    assert set(list_inputs(str(marked)).column("input_uri").to_pylist()) == expected
    assert set(dataset_rows(str(marked))[1].column("input_uri").to_pylist()) == expected

    early, late = tmp_path / "early.txt", tmp_path / "late.txt"
    early.write_bytes(b"a.jpg\ncaf\xe9.jpg\n")
    late.write_bytes(b"".join(b"d/%06d.jpg\n" % i for i in range(8000)) + b"caf\xe9.jpg\n")  # past the head
    for source in (early, late):
        with pytest.raises(ConfigError, match="not UTF-8") as caught:
            list_inputs(str(source))
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 9\); save the list as UTF-8"):
        find_inputs(str(early))
    with pytest.raises(ConfigError, match=r"late\.txt: the list file cannot be read: not UTF-8 text"):
        dataset_rows(str(late))


def tasks_read(found: ListFile) -> pa.Table:
    """The list file's listing rows as the tasks make them: read as Ray Data's readers read it
    (the text's lines, split as read_text splits them; open_csv with the jobs' options; each
    Parquet batch), each batch taken by `list_file.entries`."""
    path = Path(found.uri)
    if found.column is None:
        batches = [pa.table({"text": path.read_bytes().decode("utf-8").splitlines()})]
    elif found.uri.endswith(".csv"):
        batches = list(pacsv.open_csv(str(path), **csv_options(found.column)))
    else:
        batches = list(pq.ParquetFile(path).iter_batches(columns=[found.column]))
    tables = [
        list_file.entries(pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b, found) for b in batches
    ]
    return (
        pa.concat_tables(tables)
        if tables
        else pa.table(
            {"input_uri": [], "inside": []}, LISTING_SCHEMA.select(["input_uri"]).append(pa.field("inside", pa.bool_()))
        )
    )


def one_line_naming(exc: BaseException, source: str) -> bool:
    return isinstance(exc, ConfigError) and str(exc).startswith(f"{source}: ") and "\n" not in str(exc)


def test_a_mutated_list_file_is_a_plan_or_one_line_naming_it(tmp_path: Path) -> None:
    """Text, CSV and Parquet lists with bits flipped, cut short, lines duplicated, dropped or
    swapped, quotes, NULs, Latin-1, a BOM, blanks or a huge line put in, fields swapped, the
    URI column of every type: checked before Ray, either a ListFile whose rows the tasks read,
    or one ConfigError line naming the file. Where the tasks' readers fail, the driver's scan
    names why; where they do not, it finds nothing; the driver's own reading (`list_inputs`,
    augment's) plans the same URIs or refuses the same file."""
    outcomes: dict[str, int] = {}
    for name, data in fuzz.list_corpus(200, seed=7):
        source = str(tmp_path / name)
        Path(source).write_bytes(data)
        try:
            found = find_inputs(source)
        except Exception as exc:  # any other kind of error is the failure looked for
            assert one_line_naming(exc, source), f"{name}: {exc!r}"
            outcomes["refused before Ray"] = outcomes.get("refused before Ray", 0) + 1
            continue
        try:
            rows = tasks_read(found)
        except Exception:  # the tasks fail: the scan after them must say why
            with pytest.raises(Exception) as caught:
                list_file.scan_list_file(found.uri, found.column)
            assert one_line_naming(caught.value, source), f"{name}: {caught.value!r}"
            with pytest.raises(Exception) as caught:
                list_inputs(source)
            assert one_line_naming(caught.value, source), f"{name}: {caught.value!r}"
            outcomes["refused by the scan"] = outcomes.get("refused by the scan", 0) + 1
            continue
        list_file.scan_list_file(found.uri, found.column)  # no fault where the tasks found none
        rows = rows.filter(pc.invert(rows.column("inside")))
        try:
            table = list_inputs(source)
        except ConfigError as exc:
            assert not rows.num_rows and "no input images" in str(exc), f"{name}: {exc!r}"
            continue
        assert set(table.column("input_uri").to_pylist()) == set(rows.column("input_uri").to_pylist()), name
        outcomes["planned"] = outcomes.get("planned", 0) + 1
    assert min(outcomes.values()) >= 5 and len(outcomes) == 3, outcomes  # each way is taken


def _corrupt_row_group(path: Path, column: int = 0) -> None:
    """A Parquet list of three row groups whose second's page header is overwritten (its footer
    intact): in its URI column, or with `column` 1, in another column beside it."""
    uris = [f"a{i}.jpg" for i in range(30)]
    table = pa.table({"uri": uris, "n": [str(i) for i in range(30)]})
    pq.write_table(table, path, row_group_size=10, compression="none")
    offset = pq.ParquetFile(path).metadata.row_group(1).column(column).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))


def test_a_parquet_list_is_read_for_its_uri_column_alone(ray_cluster: str, tmp_path: Path) -> None:
    """A list's other columns (captions, labels, the images' own bytes) were read with it, in the
    driver's check and in Ray's tasks: a damaged page beside the URIs stopped the job. Only the URI
    column is read."""
    path = tmp_path / "list.parquet"
    _corrupt_row_group(path, column=1)
    uris = list_inputs(str(path)).column("input_uri").to_pylist()
    assert [posixpath.basename(u) for u in uris] == [f"a{i}.jpg" for i in range(30)]
    assert tasks_read(find_inputs(str(path))).num_rows == 30
    read = list_file._listed(find_inputs(str(path))).take_all()  # Ray's read, the selection pushed into it
    assert [row["uri"] for row in read] == [f"a{i}.jpg" for i in range(30)]


LONG = "uri,n\n" + "".join(f"d/{i:05d}.jpg,{i}\n" for i in range(8000))  # past the 64 KiB read before Ray
# (file name, its bytes or a writer, what the one line says, whether Ray's tasks are the ones to meet it)
BAD_LISTS = [
    ("list.parquet", lambda p: pq.write_table(pa.table({"uri": [["a.jpg"]]}), p), r"holds list<.*>, not URIs", False),
    ("twice.csv", b"uri,uri\na.jpg,b.jpg\n", r"2 columns are named 'uri'; name the URI column once", False),
    (
        "footer.parquet",
        lambda p: p.write_bytes(b"PAR1" + b"\x00" * 40 + b"\x10\x00\x00\x00PAR1"),
        "not a list file",
        False,
    ),
    (  # the entry taken exactly: its line end too
        "quote.csv",
        b'uri\na.jpg\n"b.jpg\nc.jpg\n',
        r"rows 1-2: an entry \('b.jpg\\nc.jpg\\n'\) holds a line break: a CSV quote left open",
        False,
    ),
    (
        "ragged.csv",
        (LONG + "e.jpg,1,2\n").encode(),
        r"Row #8002: Expected 2 columns, got 3: e.jpg,1,2; fix that row",
        True,
    ),
    (
        "nul.txt",
        ("".join(f"d/{i:05d}.jpg\n" for i in range(8000)) + "e\0.jpg\n").encode(),
        r"lines 1-8001: .* NUL",
        True,
    ),
    ("group.parquet", _corrupt_row_group, r"row group 1 \(.*\); write the list again", True),
]


@pytest.mark.parametrize(("name", "content", "says", "in_tasks"), BAD_LISTS, ids=[case[0] for case in BAD_LISTS])
def test_adain_stylize_names_a_malformed_list_file_in_one_line(
    ray_cluster: str,
    weights: WeightFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    name: str,
    content: bytes | Callable[[Path], object],
    says: str,
    in_tasks: bool,
) -> None:
    """Each kind of malformed list file, through `adain stylize`: exit 2 and one line naming the
    file and what to fix, never Ray's "UDF failed" or "SystemException". What the first 64 KiB
    show is refused before Ray (the address given is one nothing answers at); the rest, when
    Ray's tasks fail on it, by the driver's reading of the list after them, Ray Data's own log
    of the failure (a traceback) held back."""
    source = tmp_path / name
    source.write_bytes(content) if isinstance(content, bytes) else content(source)
    images.write(tmp_path / "style.jpg", images.encoded(32, 32, seed=1))
    address = ray_cluster if in_tasks else f"127.0.0.1:{free_port()}"
    argv = [
        "stylize",
        "--input",
        str(source),
        "--style",
        str(tmp_path / "style.jpg"),
        "--output",
        str(tmp_path / "out"),
    ]
    assert main([*argv, "--address", address, *job_flags(weights)]) == EXIT_USAGE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"adain: error: {source}: "), lines
    assert re.search(says, lines[0]), lines[0]
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("ray") and r.levelno >= logging.ERROR]
    assert not logged, logged  # the CLI would print them: Ray Data's traceback of the failed read


def test_empty_entries_are_skipped_and_csv_entries_taken_exactly(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path
) -> None:
    """A CSV's empty entries are left out and its others taken as they are: 'a.jpg ' (an S3 key
    may end in a space) is that file, not 'a.jpg' trimmed (which is not there)."""
    images.write(tmp_path / "a.jpg ", images.encoded(32, 32, seed=2))
    images.write(tmp_path / "style.jpg", images.encoded(32, 32, seed=1))
    (tmp_path / "inputs.csv").write_text('uri\n""\n\na.jpg \n')
    argv = ["stylize", "--input", str(tmp_path / "inputs.csv"), "--style", str(tmp_path / "style.jpg")]
    argv += ["--output", str(tmp_path / "out"), "--address", ray_cluster, *job_flags(weights)]
    assert main(argv) == EXIT_OK
    assert [p.name for p in (tmp_path / "out").rglob("*.jpg")] == ["a.jpg"]  # its one output


def test_only_text_lists_are_trimmed(tmp_path: Path) -> None:
    """A text list's lines are trimmed; a CSV or Parquet entry is the key it names, spaces and
    no-break spaces at its ends included, on the driver's reading and the tasks' alike."""
    keys = [" a.jpg", "b.jpg\u00a0", "c.jpg "]
    (tmp_path / "keys.csv").write_text("uri\n" + "".join(f"{k}\n" for k in keys))
    pq.write_table(pa.table({"uri": keys}), tmp_path / "keys.parquet")
    (tmp_path / "keys.txt").write_text("".join(f"{k}\n" for k in keys))
    for kind, expected in (("csv", keys), ("parquet", keys), ("txt", ["a.jpg", "b.jpg", "c.jpg"])):
        source = str(tmp_path / f"keys.{kind}")
        uris = [str(tmp_path / k) for k in expected]
        assert list_inputs(source).column("input_uri").to_pylist() == uris, kind
        assert tasks_read(find_inputs(source)).column("input_uri").to_pylist() == uris, kind


def test_a_byte_order_mark_before_spaces_is_trimmed_with_them(tmp_path: Path) -> None:
    """Ray's read_text keeps a text list's byte-order mark on its first line: spaces after it stayed,
    and the entry became a relative path the driver's reading never saw."""
    (tmp_path / "a.jpg").write_bytes(b"")
    source = tmp_path / "list.txt"
    source.write_bytes(f"\ufeff  {tmp_path / 'a.jpg'}\n".encode())
    uris = [str(tmp_path / "a.jpg")]
    assert list_inputs(str(source)).column("input_uri").to_pylist() == uris
    lines = pa.table({"text": source.read_bytes().decode("utf-8").splitlines()})  # as read_text decodes it
    assert list_file.entries(lines, find_inputs(str(source))).column("input_uri").to_pylist() == uris


def test_lines_ended_by_cr_alone_are_lines(tmp_path: Path) -> None:
    """A CR-only CSV (old Mac Excel) over 1 MiB is read as Arrow reads it, not one long line;
    a fault in a CR-only list is told by its line's number."""
    rows = 70_000
    (tmp_path / "cr.csv").write_bytes(b"uri\r" + b"".join(b"photos/2024/%06d.jpg\r" % i for i in range(rows)))
    assert list_inputs(str(tmp_path / "cr.csv")).num_rows == rows
    list_file.scan_list_file(str(tmp_path / "cr.csv"), "uri")
    (tmp_path / "cr.txt").write_bytes(b"a.jpg\rb.jpg\r\ncaf\xe9.jpg\r" + b"x" * (2 << 20) + b"\r")
    with pytest.raises(ConfigError, match=r"byte 0xe9 on line 3\)"):
        list_file.scan_list_file(str(tmp_path / "cr.txt"), None)
    (tmp_path / "long.txt").write_bytes(b"a.jpg\rb.jpg\r" + b"x" * (2 << 20) + b"\r")
    with pytest.raises(ConfigError, match="line 3 is longer than 1 MiB"):
        list_file.scan_list_file(str(tmp_path / "long.txt"), None)


def test_a_list_cut_inside_a_character_is_one_line(tmp_path: Path) -> None:
    """A text list past the first 64 KiB whose last bytes are a character cut short: the scan
    after Ray's tasks fail names its line (it was a UnicodeDecodeError's traceback)."""
    source = tmp_path / "cut.txt"
    source.write_bytes(b"".join(b"d/%06d.jpg\n" % i for i in range(8000)) + b"caf\xc3")
    assert find_inputs(str(source)).column is None  # its head is whole lines of UTF-8
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xc3 on line 8001\); save the list as UTF-8"):
        list_file.scan_list_file(str(source), None)


def test_a_line_break_in_a_parquet_entry_is_told_as_such(tmp_path: Path) -> None:
    """A Parquet entry holding a line break is not called a CSV quote left open."""
    pq.write_table(pa.table({"uri": ["a.jpg", "b.jpg\nc.jpg"]}), tmp_path / "break.parquet")
    with pytest.raises(ConfigError, match=r"\('b.jpg\\nc.jpg'\) holds a line break, which no URI holds") as caught:
        list_inputs(str(tmp_path / "break.parquet"))
    assert "CSV" not in str(caught.value)


def test_a_text_list_is_read_once_by_the_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan after Ray's tasks fail checks a text list's lines and entries in one read."""
    source = tmp_path / "once.txt"
    source.write_text("a.jpg\nb.jpg\n")
    opened = []
    real = listing._opened
    monkeypatch.setattr(listing, "_opened", lambda uri, data: opened.append(uri) or real(uri, data))
    list_file.scan_list_file(str(source), None)
    assert opened == [str(source)]


def test_column_names_not_utf8_are_one_line(tmp_path: Path) -> None:
    """A CSV header that is not UTF-8 (Arrow decodes names only when asked): one line, not a traceback."""
    (tmp_path / "latin.csv").write_bytes(b"n,caf\xe9\n1,a.jpg\n")
    with pytest.raises(ConfigError, match=r"column names are not UTF-8 text \(byte 0xe9\); save the list as UTF-8"):
        find_inputs(str(tmp_path / "latin.csv"))
