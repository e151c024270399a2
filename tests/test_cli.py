"""The `adain` command's flags and YAML option files, parsed without running anything."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main, parse
from pipeline.errors import ConfigError

STYLE_COMMANDS = [["stylize"], ["styles", "index"], ["augment"], ["train"]]
POSITIONALS = {("transfer",): ["content.jpg", "style.jpg", "-o", "out.jpg"], ("report",): ["out"]}  # no --config


@pytest.mark.parametrize("words", STYLE_COMMANDS, ids=lambda w: " ".join(w))
@pytest.mark.parametrize("flag", ["--style", "--styles"])
def test_every_command_spells_it_style(words: list[str], flag: str) -> None:
    args = parse([*words, flag, "s3://bucket/styles/"])
    assert args.style in ("s3://bucket/styles/", ["s3://bucket/styles/"])


def _config(tmp_path: Path, options: dict) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(options))
    return str(path)


def test_yaml_values_mean_what_the_flags_mean(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        {"style": ["a.jpg", "b.jpg"], "extensions": ["jpg", "png"], "crop": True, "overwrite": False, "alpha": 0.5},
    )
    args = parse(["stylize", "--config", path])
    assert args.style == ["a.jpg", "b.jpg"]  # a repeated flag: the list as it is
    assert args.extensions == "jpg,png"  # any other flag: the items joined, as --extensions jpg,png
    assert (args.crop, args.overwrite, args.alpha) == (True, False, 0.5)
    again = parse(["stylize", "--config", path, "--style", "c.jpg", "--alpha", "0.25"])
    assert again.style == ["c.jpg"] and again.alpha == 0.25  # the command line wins, lists included
    assert again.extensions == "jpg,png"
    drawn = parse(["augment", "--config", _config(tmp_path, {"alpha_range": [0.5, 1], "style_weights": None})])
    assert drawn.alpha_range == (0.5, 1.0)  # a comma-separated flag's list, joined before it is parsed


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"colour": "red"}, "unknown option 'colour'"),
        ({"alpah": 0.5}, "unknown option 'alpah'"),
        ({"crop": "yes please"}, "expected true or false"),
        ({"alpha": True}, "alpha: expected a value"),
        ({"precision": "fp8"}, "precision: invalid choice: .fp8."),
        ({"content_size": [256, 512]}, "content_size"),
        ({"content_siz": 256}, "unknown option 'content_siz'"),  # no abbreviations in files
        ({"help": True}, "unknown option 'help'"),  # it printed the help and exited 0
        ({"style": {"a": 1}}, "style: expected a value, not a mapping"),  # was the path "{'a': 1}"
        ({"style": [["a.jpg"]]}, "style: expected a value or a list of values, not a list holding a list"),
        ({"style": ["a.jpg", None]}, "style: .* not a list holding null"),  # was the path "None"
        ({"extensions": [{"jpg": 1}]}, "extensions: .* not a list holding a mapping"),
        ({"input": ["a", "b"]}, "input: takes one value, not a list"),  # was --input a,b
        ({"run_id": ["a"]}, "run_id: takes one value, not a list"),
    ],
)
def test_yaml_mistakes_are_one_line_config_errors(tmp_path: Path, options: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        parse(["stylize", "--config", _config(tmp_path, options)])
    assert "\n" not in str(caught.value)


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    """425 bytes of nested aliases name 9**9 items: made text, they took 14 GB and 81 s."""
    lines = ["input: in", "output: out", "style:", "  - &a0 [x,x,x,x,x,x,x,x,x]"]
    lines += [f"  - &a{d} [{','.join([f'*a{d - 1}'] * 9)}]" for d in range(1, 9)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match="style: expected a value or a list of values, not a list holding a list"):
            parse(["stylize", "--config", str(path)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2 and peak < 10 * 2**20


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("input: in\nstyle: caf\u00e9.jpg\noutput: out\n".encode("latin-1"))
    assert main(["stylize", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "latin1.yaml: not UTF-8 (byte 0xe9 at offset 20); save it as UTF-8" in err
    path.write_text("input: in\nstyle: caf\u00e9.jpg\noutput: out\n", encoding="utf-8")  # UTF-8, whatever the locale
    assert parse(["stylize", "--config", str(path)]).style == ["caf\u00e9.jpg"]


def _number_flags() -> list[tuple[tuple[str, ...], str]]:
    """Every flag of every command that takes a number with a fraction."""
    from pipeline.cli.flags import _alpha_range, _weights, build_parsers, number

    return [
        (words, action.option_strings[-1])
        for words, parser in build_parsers()[1].items()
        for action in parser._actions
        if action.type in (number, _weights, _alpha_range)
    ]


@pytest.mark.parametrize(("words", "flag"), _number_flags(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e309"])
def test_numbers_that_are_not_finite_are_refused(
    words: tuple[str, ...], flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """nan passes every `<` check a config makes (a NaN style weight made black images); inf and
    overflowing sums pass `> 0`: refused where they enter, on the command line and in YAML."""
    command = [*words, "content.jpg", "style.jpg", "-o", "out.jpg"] if words == ("transfer",) else list(words)
    text = f"{value},1" if flag in ("--style-weights", "--alpha-range") else value
    for given in (text, "1e308,1e308") if flag == "--style-weights" else (text,):  # each finite, not their sum
        with pytest.raises(SystemExit) as exited:
            parse([*command, flag, given])
        assert exited.value.code == 2 and f"{flag}: " in capsys.readouterr().err
    if words == ("transfer",):
        return  # no --config
    key = flag.lstrip("-").replace("-", "_")
    with pytest.raises(ConfigError, match=f"{key}: ") as caught:
        parse([*command, "--config", _config(tmp_path, {key: text})])
    assert "\n" not in str(caught.value)


def _int_flags() -> list[tuple[tuple[str, ...], str]]:
    """Every flag of every command that takes a whole number."""
    from pipeline.cli.flags import build_parsers, integer

    actions = [(words, action) for words, parser in build_parsers()[1].items() for action in parser._actions]
    assert not [action.dest for _, action in actions if action.type is int]  # each bounded, by `integer`
    return [(words, action.option_strings[-1]) for words, action in actions if action.type is integer]


@pytest.mark.parametrize(("words", "flag"), _int_flags(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
@pytest.mark.parametrize("value", ["2147483648", "-2147483648", "100000000000000000000000"])
def test_whole_numbers_past_32_bits_are_refused(
    words: tuple[str, ...], flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A batch size of 1e23 passed `>= 1` and met Arrow as an OverflowError traceback: every
    count and size is refused past 32 bits where it enters, on the command line and in YAML."""
    command = [*words, *POSITIONALS.get(words, [])]
    with pytest.raises(SystemExit) as exited:
        parse([*command, flag, value])
    assert exited.value.code == 2 and f"{flag}: '{value}': expected a whole number" in capsys.readouterr().err
    assert parse([*command, flag, "2147483647"])  # the largest taken
    if words in POSITIONALS:
        return  # no --config
    key = flag.lstrip("-").replace("-", "_")
    with pytest.raises(ConfigError, match=f"{key}: .*expected a whole number") as caught:
        parse([*command, "--config", _config(tmp_path, {key: int(value)})])  # a YAML int, as in the finding
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (
            ["augment", "--input", "in", "--style", "s", "--output", "out", "--seed", "-1"],
            "--seed -1: must be 0 or more",
        ),
        (
            ["train", "--content", "c", "--style", "s", "--storage", "runs", "--name", "n", "--resize", "10000"],
            "--resize 10000: 10000x10000 is more than --max-pixels 89478485",
        ),
    ],
)
def test_whole_numbers_out_of_their_meaningful_range_are_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A negative augment seed failed every input in NumPy; a training --resize past --max-pixels
    would resize every image to gigabytes. Refused as the user's configuration: exit 2, as the parser's refusals."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


BUCKETLESS = [
    (["stylize"], "--output"), (["stylize"], "--input"), (["augment"], "--output"), (["augment"], "--input"),
    (["styles", "index"], "--output"), (["train"], "--storage"), (["train"], "--content"), (["stylize"], "--decoder"),
]  # fmt: skip


@pytest.mark.parametrize(("words", "flag"), BUCKETLESS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
@pytest.mark.parametrize("uri", ["s3://", "gs://", "s3:///prefix", "S3://"])
def test_object_store_uris_without_a_bucket_are_one_line_before_anything_is_made(
    words: list[str], flag: str, uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`--output s3://` was joined into the local path `s3:/...`: a folder `s3:` made here, then a
    failure after Ray's start. Every URI flag is refused at the edge instead."""
    monkeypatch.chdir(tmp_path)
    given = {
        "stylize": {"--input": "in", "--output": "out", "--style": "style.jpg"},
        "augment": {"--input": "in", "--output": "out", "--style": "style.jpg"},
        "styles": {"--output": "bank.parquet", "--style": "style.jpg"},
        "train": {"--content": "in", "--style": "style.jpg", "--storage": "runs", "--name": "r"},
    }[words[0]]
    value = f"{uri}/bank.parquet" if words[0] == "styles" else uri  # a bank's name ends in .parquet
    argv = [*words, *(item for k, v in {**given, flag: value}.items() for item in (k, v))]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("adain: error: ") and "no bucket in the URI" in err and "\n" not in err, err
    assert list(tmp_path.iterdir()) == []  # no folder 's3:' or 'gs:' made here


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["transfer", "c.jpg", "s.jpg", "-o", "o.jpg", "--alpha", "2"], "--alpha 2.0: must be between 0 and 1"),
        (["stylize", "--input", "in", "--style", "s.jpg", "--output", "out", "--batch-size", "0"], "--batch-size"),
        (["stylize", "--input", "in", "--style", "s.jpg"], "--output is required"),
    ],
    ids=["transfer-alpha", "stylize-batch-size", "stylize-no-output"],
)
def test_values_the_configs_refuse_exit_2_as_the_parsers_refusals_do(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value out of its range, or a missing --output, is the user's configuration as a flag the
    parser refuses is: exit 2 (it was 1, while `transfer` without -o exited 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("adain: error: ") and words in err, err


@pytest.mark.parametrize(
    ("argv", "prog", "words"),
    [
        (["transfer", "c.jpg", "s.jpg"], "adain transfer", "the following arguments are required: -o/--output"),
        (["stylize", "--alpha", "high"], "adain stylize", "argument --alpha: invalid float value: 'high'"),
        (["styles", "index", "--decoder", "d.pth"], "adain styles index", "unrecognized arguments: --decoder d.pth"),
        (["styles"], "adain styles", "the following arguments are required: ACTION"),
        (["stylise"], "adain", "argument COMMAND: invalid choice: 'stylise'"),
    ],
)
def test_a_flag_the_parser_refuses_is_one_line_and_where_the_help_is(
    argv: list[str], prog: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse printed the usage, some 19 lines, above the one line that says what is wrong;
    an unknown flag of a command was `adain`'s error, pointing at `adain`'s help."""
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{prog}: error: ") and words in lines[0], lines
    assert lines[1] == f"see: {prog} --help"


BAD = "/tmp/out\udcff"  # the byte 0xff in an argument, as Python hands it over


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["transfer", "c.jpg", "s.jpg", "-o", f"{BAD}.jpg"], "--output"),
        (["transfer", f"{BAD}.jpg", "s.jpg", "-o", "o.jpg"], "content"),
        (["stylize", "--input", BAD, "--output", "o", "--style", "s.jpg"], "--input"),
        (["stylize", "--input", "i", "--output", BAD, "--style", "s.jpg"], "--output"),
        (["augment", "--input", "i", "--output", "o", "--style", "s.jpg", "--style", BAD], "--style"),
        (["report", BAD], "output"),
        (["stylize", "--config", BAD], "--config"),
    ],
)
def test_a_path_that_is_not_utf8_is_one_line(argv: list[str], name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A non-UTF-8 byte in any argument is refused by name before anything runs (it ended every command
    with a UnicodeEncodeError from the storage layer)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"adain: error: {name}: ") and err.count("\n") == 1 and "paths must be valid UTF-8" in err
