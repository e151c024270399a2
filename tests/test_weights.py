"""Weight references, the cache, checksums, offline errors and the three weight formats.

Everything runs against real servers: loopback HTTP for URLs and known names (through
ADAIN_WEIGHTS_MIRROR), moto's standalone S3 server for s3://, and real files written with
torch.save. Nothing patches boto3, pyarrow, urllib or torch.
"""

from __future__ import annotations

import collections
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipeline import cli
from pipeline.errors import AdainError, StorageError, WeightsError
from pipeline.model.checkpoint import Weights, load_decoder, load_encoder, save_checkpoint, state_sha256
from pipeline.model.nets import ARCH_VERSION
from pipeline.model.sources import KNOWN_WEIGHTS, weight_uri
from pipeline.storage.cache import cached_path, split_checksum
from tests import images, reference
from tests.conftest import HttpServer, S3Server, WeightFiles, free_port

TORCHVISION_TO_REFERENCE = dict(zip((0, 2, 5, 7, 10, 12, 14, 16, 19), (2, 5, 9, 12, 16, 19, 22, 25, 29), strict=True))


# --------------------------------------------------------------------------- helpers


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(root: Path) -> list[Path]:
    """Every file below `root`, hidden temporaries included (os.walk skips nothing)."""
    if not root.exists():
        return []
    return sorted(Path(top) / name for top, _, names in os.walk(root) for name in names)


def serve(http_server: HttpServer, *files: Path) -> str:
    """Copy `files` into a fresh folder of the loopback HTTP server; returns that folder's URL."""
    folder = f"w-{uuid.uuid4().hex[:10]}"
    (http_server.root / folder).mkdir()
    for file in files:
        shutil.copyfile(file, http_server.root / folder / file.name)
    return f"{http_server.url}/{folder}"


def closed_port_url(name: str = "vgg_normalised.pth") -> str:
    """A loopback URL where nothing listens: what an offline machine sees."""
    return f"http://127.0.0.1:{free_port()}/weights/{name}"


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative error of a float32 result against the float64 reference, over the whole tensor."""
    expected = expected.double()
    return float((actual.double() - expected).norm() / expected.norm())


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    return message


def image_x(seed: int = 0) -> torch.Tensor:
    """A 1x3x32x32 RGB batch in [0, 1] with structure, for the encoder."""
    array = images.gradient(32, 32, seed)
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255.0


def tv_as_reference(tv_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision vgg19 `features.N` weights renamed to the reference's module indices."""
    state = {}
    for tv_index, index in TORCHVISION_TO_REFERENCE.items():
        state[f"{index}.weight"] = tv_state[f"features.{tv_index}.weight"]
        state[f"{index}.bias"] = tv_state[f"features.{tv_index}.bias"]
    return state


# --------------------------------------------------------------------------- references: local, file://, http, s3


def test_local_path_and_file_uri_load_without_copying_into_the_cache(weights: WeightFiles, adain_cache: Path) -> None:
    """Local files are read in place: same weights either way, and the cache stays empty."""
    by_path = load_encoder(str(weights.vgg))
    by_uri = load_encoder(f"file://{weights.vgg}")
    assert by_path.sha256 == by_uri.sha256
    assert by_path.meta["source_format"] == "pytorch-adain-vgg"
    assert files_under(adain_cache) == []


def test_missing_local_file_is_a_clear_error(tmp_path: Path) -> None:
    """A typo in a path says which flag takes a local file, with no traceback-only failure."""
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError) as err:
        load_decoder(str(missing))
    message = one_line(err.value)
    assert str(missing) in message and "--decoder" in message


def test_http_weights_are_cached_and_reused_when_the_source_is_gone(
    weights: WeightFiles, http_server: HttpServer, adain_cache: Path
) -> None:
    """A URL is downloaded once into $ADAIN_CACHE/weights; the next load needs no network."""
    base = serve(http_server, weights.vgg)
    url = f"{base}/vgg_normalised.pth"
    first = load_encoder(url)
    dest = cached_path(url)
    assert dest.is_relative_to(adain_cache / "weights") and dest.name == "vgg_normalised.pth"
    assert files_under(adain_cache) == [dest]  # no temporaries left behind
    assert dest.read_bytes() == weights.vgg.read_bytes()

    (http_server.root / base.rsplit("/", 1)[1] / "vgg_normalised.pth").unlink()
    second = load_encoder(url)
    assert second.sha256 == first.sha256
    assert files_under(adain_cache) == [dest]


def test_http_404_is_a_clear_error(http_server: HttpServer, adain_cache: Path) -> None:
    """A wrong URL reports the HTTP status and the flag, and caches nothing."""
    url = f"{serve(http_server)}/missing.pth"
    with pytest.raises(WeightsError) as err:
        load_encoder(url)
    message = one_line(err.value)
    assert "HTTP 404" in message and url in message and "--encoder" in message
    assert files_under(adain_cache) == []


def test_s3_weights_are_cached_and_reused_when_the_object_is_gone(
    weights: WeightFiles, s3_server: S3Server, bucket: str, adain_cache: Path
) -> None:
    """s3:// through the S3 endpoint (as with MinIO): downloaded once, then served from the cache."""
    client = s3_server.client()
    client.upload_file(str(weights.decoder), bucket, "models/decoder.pth")
    uri = f"s3://{bucket}/models/decoder.pth"
    first = load_decoder(uri)
    assert first.sha256 == load_decoder(str(weights.decoder)).sha256
    dest = cached_path(uri)
    assert files_under(adain_cache) == [dest]
    assert dest.read_bytes() == weights.decoder.read_bytes()

    client.delete_object(Bucket=bucket, Key="models/decoder.pth")
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert load_decoder(uri).sha256 == first.sha256


def test_s3_missing_object_is_one_line_not_found(s3_server: S3Server, bucket: str, adain_cache: Path) -> None:
    """A missing key says 'not found' and which flag takes a local file; nothing is cached."""
    uri = f"s3://{bucket}/models/absent.pth"
    with pytest.raises(AdainError) as err:
        load_encoder(uri)
    assert isinstance(err.value, (WeightsError, StorageError))
    message = one_line(err.value)
    assert uri in message and "not found" in message and "--encoder" in message
    assert files_under(adain_cache) == []


def test_s3_missing_bucket_says_the_bucket_does_not_exist(s3_server: S3Server, adain_cache: Path) -> None:
    """A bucket that does not exist must be named as such, not reported as a missing path.

    Fails today: pyarrow's HEAD on the object gets a bare 404, so storage_error() never
    sees NoSuchBucket and the message is '...: not found; check the path'.
    """
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:10]}/decoder.pth"
    with pytest.raises(AdainError) as err:
        load_decoder(uri)
    assert isinstance(err.value, (WeightsError, StorageError))
    message = one_line(err.value)
    assert uri in message
    assert "bucket does not exist" in message, f"missing bucket reported as: {message}"
    assert files_under(adain_cache) == []


# --------------------------------------------------------------------------- known names through a mirror


def test_known_names_resolve_through_the_mirror(
    weights: WeightFiles, http_server: HttpServer, adain_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """adain-vgg / adain-decoder are the public file names under ADAIN_WEIGHTS_MIRROR."""
    mirror = serve(http_server, weights.vgg, weights.decoder)
    monkeypatch.setenv("ADAIN_WEIGHTS_MIRROR", mirror + "/")
    assert weight_uri("adain-vgg") == (f"{mirror}/vgg_normalised.pth", None)
    assert weight_uri("adain-decoder") == (f"{mirror}/decoder.pth", None)

    encoder, decoder = load_encoder("adain-vgg"), load_decoder("adain-decoder")
    assert encoder.sha256 == load_encoder(str(weights.vgg)).sha256
    assert decoder.sha256 == load_decoder(str(weights.decoder)).sha256
    assert files_under(adain_cache) == sorted(
        [cached_path(f"{mirror}/vgg_normalised.pth"), cached_path(f"{mirror}/decoder.pth")]
    )
    # The defaults are those two names.
    assert load_encoder().sha256 == encoder.sha256 and load_decoder().sha256 == decoder.sha256


def test_known_names_without_mirror_point_at_the_public_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no mirror the public URLs (and torchvision's published sha256 prefix) are used."""
    monkeypatch.delenv("ADAIN_WEIGHTS_MIRROR", raising=False)
    assert set(KNOWN_WEIGHTS) == {"adain-vgg", "adain-decoder", "vgg19-imagenet"}
    url, digest = weight_uri("vgg19-imagenet")
    assert url == "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" and digest == "dcbb9e9d"
    assert weight_uri("adain-vgg")[0].endswith("/vgg_normalised.pth")


def test_vgg19_imagenet_checks_the_published_checksum(
    weights: WeightFiles, http_server: HttpServer, adain_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror serving a file that is not torchvision's vgg19 is refused and nothing is cached."""
    mirror = serve(http_server, weights.torchvision)
    monkeypatch.setenv("ADAIN_WEIGHTS_MIRROR", mirror)
    assert not sha256_of(weights.torchvision).startswith("dcbb9e9d")
    with pytest.raises(WeightsError) as err:
        load_encoder("vgg19-imagenet")
    message = one_line(err.value)
    assert "sha256 mismatch" in message and "dcbb9e9d" in message
    assert f"{mirror}/vgg19-dcbb9e9d.pth" in message
    assert files_under(adain_cache) == []


# --------------------------------------------------------------------------- checksum pinning


@pytest.mark.parametrize("length", [64, 8, 12])
def test_pinned_checksum_that_matches_loads(
    weights: WeightFiles, http_server: HttpServer, adain_cache: Path, length: int
) -> None:
    """'#sha256=' with the full digest or a prefix of 8+ hex digits (any case) accepts the file."""
    digest = sha256_of(weights.decoder)[:length]
    url = f"{serve(http_server, weights.decoder)}/decoder.pth"
    pinned = load_decoder(f"{url}#sha256={digest.upper() if length == 12 else digest}")
    assert pinned.sha256 == load_decoder(str(weights.decoder)).sha256
    assert files_under(adain_cache) == [cached_path(url)]  # cached under the URI without the fragment
    assert load_decoder(f"{weights.decoder}#sha256={digest}").sha256 == pinned.sha256


def test_pinned_checksum_mismatch_on_download_caches_nothing(
    weights: WeightFiles, http_server: HttpServer, adain_cache: Path
) -> None:
    """A download with the wrong checksum is discarded: no file, no partial, no temporary."""
    actual = sha256_of(weights.vgg)
    wrong = ("0" if actual[0] != "0" else "1") + actual[1:]
    url = f"{serve(http_server, weights.vgg)}/vgg_normalised.pth"
    with pytest.raises(WeightsError) as err:
        load_encoder(f"{url}#sha256={wrong}")
    message = one_line(err.value)
    assert "sha256 mismatch" in message and wrong in message and actual in message and url in message
    assert files_under(adain_cache) == []
    # The same download without a pin then succeeds: the failed attempt left nothing in the way.
    assert load_encoder(url).sha256 == load_encoder(str(weights.vgg)).sha256


def test_pinned_checksum_mismatch_on_local_file(weights: WeightFiles) -> None:
    """A local file is verified too."""
    with pytest.raises(WeightsError) as err:
        load_decoder(f"{weights.decoder}#sha256=deadbeefdeadbeef")
    assert "sha256 mismatch" in one_line(err.value)


def test_pinned_checksum_mismatch_on_cached_file_says_how_to_recover(
    weights: WeightFiles, http_server: HttpServer
) -> None:
    """A cached file failing a pin added later names the cached file to delete."""
    url = f"{serve(http_server, weights.decoder)}/decoder.pth"
    load_decoder(url)
    with pytest.raises(WeightsError) as err:
        load_decoder(f"{url}#sha256=0123456789abcdef")
    message = one_line(err.value)
    assert "sha256 mismatch" in message and str(cached_path(url)) in message and "delete" in message


@pytest.mark.parametrize("fragment", ["abc123", "", "zzzzzzzzzz", "0123456g89"])
def test_bad_checksum_fragment_is_a_clear_error(weights: WeightFiles, fragment: str) -> None:
    """Too short or non-hex: refused before anything is read."""
    ref = f"{weights.vgg}#sha256={fragment}"
    with pytest.raises(WeightsError, match="at least 8 hex digits"):
        split_checksum(ref)
    with pytest.raises(WeightsError, match="at least 8 hex digits"):
        load_encoder(ref)


# --------------------------------------------------------------------------- offline


@pytest.mark.parametrize(("load", "flag"), [(load_encoder, "--encoder"), (load_decoder, "--decoder")])
def test_offline_url_names_the_url_the_cache_path_and_the_flag(
    load: Callable[[str], Weights], flag: str, adain_cache: Path
) -> None:
    """With no network the message says where to put the file by hand, or which flag to use."""
    url = closed_port_url("decoder.pth")
    with pytest.raises(WeightsError) as err:
        load(url)
    message = one_line(err.value)
    assert url in message and str(cached_path(url)) in message and flag in message
    assert files_under(adain_cache) == []


def test_offline_known_name_with_mirror_at_a_closed_port(adain_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A known name whose mirror is unreachable gives the same actionable message."""
    mirror = f"http://127.0.0.1:{free_port()}/mirror"
    monkeypatch.setenv("ADAIN_WEIGHTS_MIRROR", mirror)
    with pytest.raises(WeightsError) as err:
        load_encoder("adain-vgg")
    message = one_line(err.value)
    url = f"{mirror}/vgg_normalised.pth"
    assert url in message and str(cached_path(url)) in message and "--encoder" in message
    assert files_under(adain_cache) == []


def test_offline_file_copied_to_the_named_cache_path_is_used(
    weights: WeightFiles, adain_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Following the message's advice (copy the file to the cache path) makes the name work offline."""
    monkeypatch.setenv("ADAIN_WEIGHTS_MIRROR", f"http://127.0.0.1:{free_port()}")
    url, _ = weight_uri("adain-decoder")
    with pytest.raises(WeightsError):
        load_decoder("adain-decoder")
    cached_path(url).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights.decoder, cached_path(url))
    assert load_decoder("adain-decoder").sha256 == load_decoder(str(weights.decoder)).sha256


def _transfer_args(tmp_path: Path, weights: WeightFiles, encoder: str) -> list[str]:
    content = images.write(tmp_path / "in" / "content.jpg", images.encoded(40, 32, seed=1))
    style = images.write(tmp_path / "in" / "style.png", images.encoded(32, 40, "PNG", seed=2))
    return [
        "transfer",
        str(content),
        str(style),
        "-o",
        str(tmp_path / "out.jpg"),
        "--encoder",
        encoder,
        "--decoder",
        str(weights.decoder),
        "--device",
        "cpu",
        "--content-size",
        "32",
        "--style-size",
        "32",
    ]


@pytest.mark.parametrize("known_name", [False, True])
def test_cli_offline_is_one_error_line(
    weights: WeightFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    known_name: bool,
) -> None:
    """`adain transfer` offline: exit status 1, one 'adain: error:' line, no traceback, no output."""
    if known_name:
        monkeypatch.setenv("ADAIN_WEIGHTS_MIRROR", f"http://127.0.0.1:{free_port()}")
        encoder, url = "adain-vgg", weight_uri("adain-vgg")[0]
    else:
        url = closed_port_url()
        encoder = url
    status = cli.main(_transfer_args(tmp_path, weights, encoder))
    err = capsys.readouterr().err
    assert status != 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("adain: error:"), err
    assert "Traceback" not in err and url in lines[0] and "--encoder" in lines[0]
    assert not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize("command", ["transfer", "stylize"])
def test_offline_names_every_weight_file_that_is_missing(
    command: str, weights: WeightFiles, adain_cache: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both default weights missing on an offline machine: one line names both files, where each
    goes and both flags (it named the encoder; the decoder's turn came a run later); one already
    in the cache is not named."""
    monkeypatch.setenv("ADAIN_WEIGHTS_MIRROR", f"http://127.0.0.1:{free_port()}")
    args = _transfer_args(tmp_path, weights, "adain-vgg")
    args[args.index("--decoder") + 1] = "adain-decoder"
    if command == "stylize":  # the job's own check of the weights, before Ray starts
        args = ["stylize", "--input", args[1], "--style", args[2], "--output", str(tmp_path / "out"), *args[5:]]
    (encoder, _), (decoder, _) = weight_uri("adain-vgg"), weight_uri("adain-decoder")
    assert cli.main(args) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("adain: error: could not download"), lines
    for url, flag in ((encoder, "--encoder"), (decoder, "--decoder")):
        assert url in lines[0] and str(cached_path(url)) in lines[0] and f"{flag} PATH" in lines[0], lines[0]
    cached_path(decoder).parent.mkdir(parents=True)
    shutil.copyfile(weights.decoder, cached_path(decoder))
    assert cli.main(args) == 1
    line = capsys.readouterr().err
    assert encoder in line and decoder not in line and "--decoder" not in line, line
    assert files_under(adain_cache) == [cached_path(decoder)]


def test_cli_subprocess_offline_prints_no_traceback(weights: WeightFiles, tmp_path: Path) -> None:
    """The real entry point, in its own process: the user sees one line and exit status 1."""
    url = closed_port_url()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *_transfer_args(tmp_path, weights, url)],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),  # carries this test's ADAIN_CACHE
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adain: error:") and url in lines[0], proc.stderr


def test_cli_transfer_runs_with_downloaded_weights(
    weights: WeightFiles, http_server: HttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The positive case of the same command: known names through a mirror produce an image."""
    monkeypatch.setenv("ADAIN_WEIGHTS_MIRROR", serve(http_server, weights.vgg, weights.decoder))
    args = _transfer_args(tmp_path, weights, "adain-vgg")
    args[args.index("--decoder") + 1] = "adain-decoder"
    assert cli.main(args) == 0
    assert (tmp_path / "out.jpg").read_bytes()[:2] == b"\xff\xd8"


# --------------------------------------------------------------------------- formats


def test_pytorch_adain_vgg_uses_modules_0_to_30_and_matches_the_reference(weights: WeightFiles) -> None:
    """The full vgg_normalised.pth (to relu5_4) loads; the encoder is exactly its relu4_1 prefix."""
    assert max(int(k.split(".")[0]) for k in weights.vgg_state) == 51  # the file runs past relu4_1
    loaded = load_encoder(str(weights.vgg))
    kept = {k: v for k, v in weights.vgg_state.items() if int(k.split(".")[0]) <= 30}
    assert set(loaded.module.state_dict()) == set(kept)
    assert loaded.sha256 == state_sha256(kept)
    x = image_x()
    with torch.no_grad():
        out = loaded.module(x)
    expected = reference.vgg_features(weights.vgg_state, x)["relu4_1"]
    assert out.shape == expected.shape == (1, 512, 4, 4)
    assert rel_err(out, expected) < 1e-5


def test_torchvision_vgg19_matches_the_reference_with_imagenet_normalisation(weights: WeightFiles) -> None:
    """torchvision's layout loads; ImageNet normalisation is folded into the 1x1 input conv."""
    loaded = load_encoder(str(weights.torchvision))
    assert loaded.meta["source_format"] == "torchvision-vgg19"
    x = image_x(seed=3)
    with torch.no_grad():
        out = loaded.module(x)
    expected = reference.vgg_features(tv_as_reference(weights.torchvision_state), x, normalise=True)["relu4_1"]
    assert rel_err(out, expected) < 1e-5
    assert loaded.sha256 != load_encoder(str(weights.vgg)).sha256


def test_decoder_pth_matches_the_reference(weights: WeightFiles) -> None:
    """pytorch-AdaIN's decoder.pth loads as-is and decodes like the float64 reference."""
    loaded = load_decoder(str(weights.decoder))
    assert loaded.meta["source_format"] == "pytorch-adain-decoder"
    assert loaded.sha256 == state_sha256(weights.decoder_state)
    feat = torch.relu(torch.randn(1, 512, 4, 4, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        out = loaded.module(feat)
    expected = reference.decode(weights.decoder_state, feat)
    assert out.shape == expected.shape == (1, 3, 32, 32)
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_adain_ray_checkpoint_round_trips(weights: WeightFiles, tmp_path: Path, kind: str) -> None:
    """save_checkpoint -> load gives the same weights identity as the original file, and the meta."""
    load = load_encoder if kind == "encoder" else load_decoder
    original = load(str(weights.vgg if kind == "encoder" else weights.decoder))
    target = tmp_path / "ckpt" / f"{kind}.pt"
    meta = {"encoder": "abc123", "config": {"lr": 1e-4, "steps": 3}, "note": "round trip"}
    sha = save_checkpoint(str(target), kind, original.module, meta)
    assert sha == original.sha256
    assert [p.name for p in files_under(target.parent)] == [target.name]  # atomic write, no leftovers

    again = load(str(target))
    assert again.sha256 == original.sha256 == state_sha256(again.module.state_dict())
    assert again.meta == {**meta, "weights_sha256": sha}
    for key, tensor in original.module.state_dict().items():
        assert torch.equal(again.module.state_dict()[key], tensor)


def test_state_sha256_is_format_independent(weights: WeightFiles, tmp_path: Path) -> None:
    """Same weights, same identity: from vgg_normalised.pth and from the adain-ray checkpoint."""
    from_file = load_encoder(str(weights.vgg))
    target = tmp_path / "encoder.pt"
    save_checkpoint(str(target), "encoder", from_file.module, {})
    from_ckpt = load_encoder(str(target))
    assert state_sha256(from_file.module.state_dict()) == state_sha256(from_ckpt.module.state_dict())
    assert from_file.sha256 == from_ckpt.sha256
    # ...and it does depend on the values.
    changed = dict(from_file.module.state_dict())
    changed["2.bias"] = changed["2.bias"] + 1
    assert state_sha256(changed) != from_file.sha256


def test_checkpoint_on_s3_round_trips_through_the_cache(
    weights: WeightFiles, s3_server: S3Server, bucket: str, adain_cache: Path
) -> None:
    """A checkpoint written to s3:// loads back from s3:// with the same identity."""
    original = load_decoder(str(weights.decoder))
    uri = f"s3://{bucket}/runs/1/decoder.pt"
    sha = save_checkpoint(uri, "decoder", original.module, {"step": 7})
    loaded = load_decoder(uri)
    assert loaded.sha256 == sha == original.sha256 and loaded.meta["step"] == 7
    assert files_under(adain_cache) == [cached_path(uri)]


def test_checkpoint_of_the_wrong_kind_is_refused(weights: WeightFiles, tmp_path: Path) -> None:
    """An encoder checkpoint passed as --decoder says what it is."""
    target = tmp_path / "encoder.pt"
    save_checkpoint(str(target), "encoder", load_encoder(str(weights.vgg)).module, {})
    with pytest.raises(WeightsError) as err:
        load_decoder(str(target))
    message = one_line(err.value)
    assert "encoder checkpoint" in message and "not a decoder" in message


@pytest.mark.parametrize(
    ("load", "path", "expected"), [("encoder", "decoder", "not an encoder"), ("decoder", "vgg", "not a decoder")]
)
def test_public_file_of_the_other_network_is_refused(weights: WeightFiles, load: str, path: str, expected: str) -> None:
    """decoder.pth as --encoder (or the VGG as --decoder) is named, not loaded half-way."""
    loader = load_encoder if load == "encoder" else load_decoder
    with pytest.raises(WeightsError) as err:
        loader(str(getattr(weights, path)))
    assert expected in one_line(err.value)


def test_tampered_checkpoint_is_refused(weights: WeightFiles, tmp_path: Path) -> None:
    """Weights that no longer match the recorded weights_sha256 are reported as corrupt."""
    target = tmp_path / "decoder.pt"
    save_checkpoint(str(target), "decoder", load_decoder(str(weights.decoder)).module, {})
    payload = torch.load(target, weights_only=True)
    payload["state_dict"]["1.bias"] = payload["state_dict"]["1.bias"].clone()
    payload["state_dict"]["1.bias"][0] += 1e-3
    torch.save(payload, target)
    with pytest.raises(WeightsError) as err:
        load_decoder(str(target))
    assert "do not match the checksum" in one_line(err.value)


def test_checkpoint_for_another_architecture_is_refused(weights: WeightFiles, tmp_path: Path) -> None:
    """A checkpoint from a different architecture version asks for an upgrade instead of failing oddly."""
    target = tmp_path / "decoder.pt"
    save_checkpoint(str(target), "decoder", load_decoder(str(weights.decoder)).module, {})
    payload = torch.load(target, weights_only=True)
    payload["arch"] = "adain-vgg19-relu4_1/v999"
    torch.save(payload, target)
    with pytest.raises(WeightsError, match="v999"):
        load_decoder(str(target))


class CustomConfig:
    """A user-defined class: unpickling it would mean importing and running test code."""

    def __init__(self) -> None:
        self.lr = 1e-4


class StateDictSubclass(collections.OrderedDict):
    """An OrderedDict subclass: looks like a state dict, but is a custom class to unpickle."""


class MakesDirectory:
    """Unpickling this calls os.makedirs: the classic code-execution payload, made harmless."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.makedirs, (str(self.path),)


@pytest.mark.parametrize("payload", ["custom-object", "dict-subclass", "code"])
def test_pickled_code_or_custom_objects_are_refused(weights: WeightFiles, tmp_path: Path, payload: str) -> None:
    """weights_only loading: a file holding more than tensors is refused, and its code never runs."""
    marker = tmp_path / "payload-ran"
    state = dict(weights.decoder_state)
    obj: object
    if payload == "custom-object":
        obj = {**state, "config": CustomConfig()}
    elif payload == "dict-subclass":
        obj = StateDictSubclass(state)
    else:
        obj = {**state, "hook": MakesDirectory(marker)}
    target = tmp_path / "decoder.pth"
    torch.save(obj, target)
    with pytest.raises(WeightsError) as err:
        load_decoder(str(target))
    message = one_line(err.value)
    assert "refused" in message and str(target) in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "text",
    [
        "<html><body><h1>404 Not Found</h1></body></html>\n",  # a proxy's error page saved as .pth
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 42\n",  # a Git LFS pointer
        "hello, these are not weights\n",
        "",  # an empty file
    ],
    ids=["html", "lfs-pointer", "plain-text", "empty"],
)
def test_text_file_named_pth_is_not_a_readable_weight_file(tmp_path: Path, text: str) -> None:
    """A text file with a .pth name is reported as unreadable, not as 'code' nor as a crash.

    Fails today (pipeline/model/checkpoint.py, _read): torch.load raises KeyError for
    'hello...' and EOFError('') for an empty file (then str(exc).splitlines()[0] raises
    IndexError), and HTML / LFS pointers come back as UnpicklingError, which _read
    reports as 'refused to load: the file holds more than tensors (code or custom objects)'.
    """
    target = tmp_path / "vgg_normalised.pth"
    target.write_text(text)
    try:
        load_encoder(str(target))
    except WeightsError as exc:
        message = one_line(exc)
    except Exception as exc:  # a raw exception reaches the CLI as a traceback
        pytest.fail(f"{type(exc).__name__}({exc!r}) escaped instead of a WeightsError")
    else:
        pytest.fail("a text file loaded as weights")
    assert "not a readable PyTorch weight file" in message, message
    assert "refused" not in message


def test_truncated_weight_file_is_not_readable(weights: WeightFiles, tmp_path: Path) -> None:
    """A download cut short (half a real file) is reported as unreadable."""
    data = weights.decoder.read_bytes()
    target = tmp_path / "decoder.pth"
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as err:
        load_decoder(str(target))
    assert "not a readable PyTorch weight file" in one_line(err.value)


def test_other_torchvision_vgg_is_refused_clearly(tmp_path: Path) -> None:
    """torchvision's vgg16 (features.16 is a pool there) is not vgg19: a WeightsError, not a KeyError.

    Fails today (pipeline/model/checkpoint.py, _encoder_state): the torchvision branch indexes
    obj[f"features.{i}.weight"] without checking, so a vgg16 / vgg19_bn state dict raises a
    bare KeyError('features.16.weight'), which the CLI shows as a traceback.
    """
    gen = torch.Generator().manual_seed(4)
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    state, index, cin = {}, 0, 3
    for item in plan:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(int(item), cin, 3, 3, generator=gen) * 0.05
        state[f"features.{index}.bias"] = torch.zeros(int(item))
        cin, index = int(item), index + 2
    target = tmp_path / "vgg16-397923af.pth"
    torch.save(state, target)
    try:
        load_encoder(str(target))
    except WeightsError as exc:
        assert str(target) in one_line(exc)
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__}({exc!r}) escaped instead of a WeightsError")
    else:
        pytest.fail("vgg16 weights loaded as a vgg19 encoder")


def test_torchvision_vgg19_without_a_bias_is_refused_clearly(tmp_path: Path) -> None:
    state = reference.torchvision_vgg19_state()
    del state["features.5.bias"]
    torch.save(state, tmp_path / "vgg19.pth")
    with pytest.raises(WeightsError, match=r"features\.5 is not its conv"):
        load_encoder(str(tmp_path / "vgg19.pth"))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: {**s, "extra.weight": torch.zeros(1)}, 'Unexpected key(s) in state_dict: "extra.weight"'),
        (lambda s: {k: v for k, v in s.items() if k != "5.bias"}, 'Missing key(s) in state_dict: "5.bias"'),
        (lambda s: {**s, "5.bias": torch.zeros(7)}, "size mismatch for 5.bias"),
    ],
    ids=["extra", "missing", "shape"],
)
def test_weights_that_do_not_fit_name_the_key(weights: WeightFiles, tmp_path: Path, change, words: str) -> None:
    """load_state_dict's first complaint, not only its heading, reaches the one line."""
    torch.save(change(weights.decoder_state), tmp_path / "decoder.pth")
    with pytest.raises(WeightsError) as err:
        load_decoder(str(tmp_path / "decoder.pth"))
    assert words in one_line(err.value), one_line(err.value)


def test_sparse_tensors_in_a_checkpoint_are_refused_in_one_line(weights: WeightFiles, tmp_path: Path) -> None:
    state = {**weights.decoder_state, "1.bias": weights.decoder_state["1.bias"].to_sparse()}
    torch.save({"format": "adain-ray.checkpoint", "kind": "decoder", "arch": ARCH_VERSION, "state_dict": state,
                "meta": {}}, tmp_path / "decoder.pth")  # fmt: skip
    with pytest.raises(WeightsError, match="damaged adain-ray checkpoint"):
        load_decoder(str(tmp_path / "decoder.pth"))


def test_an_archive_that_inflates_far_beyond_its_size_is_refused(weights: WeightFiles, tmp_path: Path) -> None:
    """A weight file re-zipped with deflate around a large run of zeros: a few MB that torch.load
    would inflate into memory whole. torch.save stores tensors uncompressed, so such a file is refused."""
    plain = tmp_path / "plain.pth"
    torch.save({**weights.decoder_state, "padding": torch.zeros(48 << 20, dtype=torch.uint8)}, plain)
    crafted = tmp_path / "decoder.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(crafted, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info))
    assert crafted.stat().st_size < plain.stat().st_size / 2
    with pytest.raises(WeightsError, match="refused to load: its archive inflates to") as err:
        load_decoder(str(crafted))
    assert str(crafted) in one_line(err.value)
    assert load_decoder(str(weights.decoder)).sha256  # what torch.save writes loads as before


# --------------------------------------------------------------------------- downloads cut short


class _BreakingHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET /short/NAME with a Content-Length it does not send in full, and GET /chunked/NAME
    with one chunk of a chunked body, then closes: a connection that breaks off mid-download."""

    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        part = self.body[: len(self.body) // 3]
        if self.path.startswith("/short/"):
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(part)
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("how", ["short", "chunked"])
def test_a_download_that_breaks_off_is_one_line_and_caches_nothing(
    how: str, weights: WeightFiles, adain_cache: Path
) -> None:
    handler = type("Handler", (_BreakingHandler,), {"body": weights.decoder.read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{how}/decoder.pth"
        with pytest.raises(WeightsError) as err:
            load_decoder(url)
    finally:
        server.shutdown()
        server.server_close()
    message = one_line(err.value)
    assert url in message and "broke off" in message and "nothing was cached" in message, message
    assert files_under(adain_cache) == []


def test_a_download_that_is_no_weights_leaves_the_cache(
    weights: WeightFiles, http_server: HttpServer, adain_cache: Path
) -> None:
    """A 200 answer holding a proxy's HTML page is refused and not kept: once the server answers
    with the file, the next load downloads it instead of failing on the cached page for good."""
    base = serve(http_server)
    served = http_server.root / base.rsplit("/", 1)[1] / "decoder.pth"
    served.write_text("<html><body>Sign in to continue</body></html>\n")
    with pytest.raises(WeightsError) as err:
        load_decoder(f"{base}/decoder.pth")
    assert "not a readable PyTorch weight file" in one_line(err.value)
    assert "removed from the cache" in one_line(err.value)
    assert files_under(adain_cache) == []
    shutil.copyfile(weights.decoder, served)
    assert load_decoder(f"{base}/decoder.pth").sha256 == load_decoder(str(weights.decoder)).sha256
