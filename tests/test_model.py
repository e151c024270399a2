"""The model matches the formulas: features, AdaIN, decoding, and every control.

Expected values come from tests/reference.py (float64, explicit formulas, no code from
`pipeline`) on random weights saved in pytorch-AdaIN's file layouts.
"""

from __future__ import annotations

import resource
import sys

import numpy as np
import pytest
import torch

from pipeline.imaging.codec import MIN_SIDE
from pipeline.model import functional as fn
from pipeline.model.checkpoint import load_decoder, load_encoder
from pipeline.model.host import reuse_freed_memory
from pipeline.model.stylizer import StyleTransfer
from tests import reference
from tests.conftest import WeightFiles
from tests.images import gradient


def rel_err(actual: torch.Tensor, expected: torch.Tensor | np.ndarray) -> float:
    """Norm-wise relative error of `actual` against a float64 reference."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    return float((actual.double() - expected).norm() / expected.norm())


def image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(gradient(width, height, seed)).permute(2, 0, 1).float().div(255)[None]


@pytest.fixture(scope="module")
def model(weights: WeightFiles) -> StyleTransfer:
    encoder, decoder = load_encoder(str(weights.vgg)), load_decoder(str(weights.decoder))
    return StyleTransfer(encoder.module, decoder.module, "cpu", "fp32")


def test_encoder_features_match_reference(model: StyleTransfer, weights: WeightFiles) -> None:
    """relu1_1..relu4_1 equal the float64 formulas, odd sizes included (ceil-mode pooling)."""
    x = image(37, 45)
    expected = reference.vgg_features(weights.vgg_state, x)
    for name, actual in zip(reference.RELU_X_1, model.encoder.features(x), strict=True):
        assert actual.shape == expected[name].shape
        assert rel_err(actual, expected[name]) < 1e-5, name
    assert expected["relu4_1"].shape[-2:] == (5, 6)


def test_mean_std_is_pytorch_adain_definition() -> None:
    feat = torch.randn(2, 8, 5, 7, dtype=torch.float64) * 3 + 1
    mean, std = fn.mean_std(feat)
    ref_mean, ref_std = reference.mean_std(feat.numpy())
    assert rel_err(mean, ref_mean) < 1e-6
    assert rel_err(std, ref_std) < 1e-6


def test_adain_matches_formula() -> None:
    content, style = torch.randn(2, 16, 6, 5) * 2, torch.randn(1, 16, 9, 9) * 4 + 3
    style_mean, style_std = fn.mean_std(style)
    expected = reference.adain(content.double().numpy(), *reference.mean_std(style.double().numpy()))
    out = fn.adain(content, style_mean, style_std)
    assert rel_err(out, expected) < 1e-5
    # The output carries the style's statistics exactly (up to eps).
    out_mean, out_std = fn.mean_std(out)
    torch.testing.assert_close(out_mean, style_mean.expand_as(out_mean), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_std, style_std.expand_as(out_std), atol=1e-3, rtol=1e-3)


def test_stylized_image_matches_reference(model: StyleTransfer, weights: WeightFiles) -> None:
    """End to end: encode, AdaIN with precomputed style statistics, decode, crop to input size."""
    content, style = image(40, 36, seed=1), image(32, 32, seed=2)
    style_feat = reference.vgg_features(weights.vgg_state, style)["relu4_1"].numpy()
    content_feat = reference.vgg_features(weights.vgg_state, content)["relu4_1"].numpy()
    target = reference.adain(content_feat, *reference.mean_std(style_feat))
    expected = reference.decode(weights.decoder_state, torch.from_numpy(target)).clamp(0, 1)

    out = model.stylize(content, model.style_stats(style))
    assert out.shape == (1, 3, 40, 36)
    assert rel_err(out, expected[..., :40, :36]) < 1e-5
    assert float(out.std()) > 0.01  # the random decoder gives a real image, not a flat one


def test_interpolation_by_blended_statistics_equals_blend_of_outputs() -> None:
    """pytorch-AdaIN blends the per-style AdaIN outputs; one AdaIN on blended stats is equal."""
    content = torch.randn(1, 32, 6, 6)
    styles = torch.randn(3, 32, 7, 7) * torch.tensor([1.0, 3.0, 0.5]).view(3, 1, 1, 1)
    mean, std = fn.mean_std(styles)
    weights = torch.tensor([1.0, 2.0, 5.0])
    blended = fn.adain(content, *fn.blend_stats(mean, std, weights))
    per_style = [fn.adain(content, mean[i : i + 1], std[i : i + 1]) for i in range(3)]
    expected = sum(w / weights.sum() * out for w, out in zip(weights, per_style, strict=True))
    torch.testing.assert_close(blended, expected, rtol=1e-5, atol=1e-5)


def test_masked_adain_uses_each_regions_own_statistics() -> None:
    """Background positions equal AdaIN of the background region with the second style."""
    content = torch.randn(1, 8, 6, 8, dtype=torch.float64)
    fg_style, bg_style = fn.mean_std(torch.randn(1, 8, 5, 5) * 2 + 1), fn.mean_std(torch.randn(1, 8, 5, 5) - 2)
    mask = torch.zeros(1, 1, 12, 16)
    mask[..., :, :6] = 1.0  # left 3 feature columns are foreground after nearest resize
    out = fn.masked_adain(content, mask, fg_style, bg_style)

    feat = content[0].numpy()
    for columns, (style_mean, style_std) in ((slice(0, 3), fg_style), (slice(3, 8), bg_style)):
        region = feat[:, :, columns].reshape(8, -1)
        mean, std = region.mean(1), np.sqrt(region.var(1, ddof=1) + 1e-5)
        expected = (feat[:, :, columns] - mean[:, None, None]) / std[:, None, None]
        expected = expected * style_std[0].double().numpy() + style_mean[0].double().numpy()
        assert rel_err(out[0, :, :, columns], expected) < 1e-6


def test_mask_of_all_foreground_is_plain_adain() -> None:
    content = torch.randn(2, 8, 5, 5)
    fg, bg = fn.mean_std(torch.randn(1, 8, 4, 4) + 1), fn.mean_std(torch.randn(1, 8, 4, 4) - 1)
    out = fn.masked_adain(content, torch.ones(2, 1, 5, 5), fg, bg)
    torch.testing.assert_close(out, fn.adain(content, *fg), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("height", "width"), [(MIN_SIDE, MIN_SIDE), (MIN_SIDE, 40), (40, MIN_SIDE)])
def test_the_smallest_side_the_model_takes_is_min_side(model: StyleTransfer, height: int, width: int) -> None:
    """The sizing refuses images under `codec.MIN_SIDE` on a side, as too small (an error row):
    the model takes MIN_SIDE, at its own size, and fails one pixel below it."""
    stats = model.style_stats(torch.rand(1, 3, MIN_SIDE, MIN_SIDE))
    assert model.stylize(torch.rand(1, 3, height, width), stats, 1.0).shape[-2:] == (height, width)
    smaller = (height - 1, width) if height == MIN_SIDE else (height, width - 1)
    with pytest.raises(RuntimeError):
        model.stylize(torch.rand(1, 3, *smaller), stats, 1.0)


def test_alpha_zero_returns_content_features(model: StyleTransfer) -> None:
    content, style = image(32, 32, seed=3), image(32, 32, seed=4)
    feat = model.encoder(content)
    target = fn.adain(feat, *model.style_stats(style))
    torch.testing.assert_close(fn.mix(target, feat, 0.0), feat)
    torch.testing.assert_close(fn.mix(target, feat, 1.0), target)
    # Through the whole model, alpha=0 is the decoder applied to the content features.
    out = model.stylize(content, model.style_stats(style), alpha=0.0)
    torch.testing.assert_close(out, model.decoder(feat).clamp(0, 1), rtol=1e-5, atol=1e-6)


def test_per_image_alpha_and_batching(model: StyleTransfer) -> None:
    """Each image of a batch is stylized as if alone (statistics are per image)."""
    batch = torch.cat([image(32, 40, seed=5), image(32, 40, seed=6)])
    stats = model.style_stats(image(32, 32, seed=7))
    alpha = torch.tensor([1.0, 0.3]).view(2, 1, 1, 1)
    together = model.stylize(batch, stats, alpha=alpha)
    alone = torch.cat([model.stylize(batch[:1], stats, alpha=1.0), model.stylize(batch[1:], stats, alpha=0.3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_close_to_fp32(model: StyleTransfer, weights: WeightFiles, precision: str) -> None:
    """bf16/fp16 autocast outputs stay within 30 dB PSNR of fp32 on the same input."""
    low = StyleTransfer(
        load_encoder(str(weights.vgg)).module, load_decoder(str(weights.decoder)).module, "cpu", precision
    )
    content, style = image(64, 64, seed=8), image(64, 64, seed=9)
    reference_out = model.stylize(content, model.style_stats(style))
    out = low.stylize(content, low.style_stats(style))
    assert out.dtype == torch.float32
    value = psnr(out, reference_out)
    print(f"{precision} vs fp32 PSNR: {value:.1f} dB")
    assert value >= 30.0


def _coral_reference(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """pytorch-AdaIN's coral in numpy: SVD square roots, unbiased std, cov + I."""

    def sqrtm(m: np.ndarray) -> np.ndarray:
        u, d, vt = np.linalg.svd(m)
        return u @ np.diag(np.sqrt(d)) @ vt

    def standardise(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat = img.reshape(3, -1)
        mean, std = flat.mean(1, keepdims=True), flat.std(1, ddof=1, keepdims=True)
        return (flat - mean) / std, mean, std

    src, _, _ = standardise(source)
    tgt, tgt_mean, tgt_std = standardise(target)
    transfer = sqrtm(tgt @ tgt.T + np.eye(3)) @ np.linalg.inv(sqrtm(src @ src.T + np.eye(3))) @ src
    return (transfer * tgt_std + tgt_mean).reshape(source.shape)


def test_coral_matches_pytorch_adain() -> None:
    source, target = image(24, 20, seed=10)[0], image(30, 30, seed=11)[0] * 0.5 + 0.2
    out = fn.coral(source, target)
    assert rel_err(out, _coral_reference(source.double().numpy(), target.double().numpy())) < 1e-5
    # The recoloured source has the target's colour means.
    torch.testing.assert_close(out.mean(dim=(1, 2)), target.mean(dim=(1, 2)), atol=1e-4, rtol=1e-4)


def _ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601, from the JPEG standard's formulas."""
    r, g, b = rgb
    return np.stack(
        [
            0.299 * r + 0.587 * g + 0.114 * b,
            -0.168736 * r - 0.331264 * g + 0.5 * b,
            0.5 * r - 0.418688 * g - 0.081312 * b,
        ]
    )


def test_keep_chroma_takes_luma_from_stylized_and_chroma_from_content() -> None:
    stylized, content = image(16, 16, seed=12) * 0.8 + 0.1, image(16, 16, seed=13) * 0.8 + 0.1
    out = fn.keep_chroma(stylized, content)[0].double().numpy()
    got, want_luma, want_chroma = _ycbcr(out), _ycbcr(stylized[0].double().numpy()), _ycbcr(content[0].double().numpy())
    np.testing.assert_allclose(got[0], want_luma[0], atol=1e-5)
    np.testing.assert_allclose(got[1:], want_chroma[1:], atol=1e-5)


def test_encoder_is_frozen(model: StyleTransfer) -> None:
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_compiled_model_gives_the_eager_models_images(model: StyleTransfer, weights: WeightFiles) -> None:
    """--compile fuses the paddings and ReLUs into the convolutions; the images stay the same."""
    compiled = StyleTransfer(
        load_encoder(str(weights.vgg)).module, load_decoder(str(weights.decoder)).module, compile=True
    )
    content, style = image(32, 40, seed=14), image(32, 40, seed=15)  # one size: the encoder is compiled once
    expected = model.stylize(content, model.style_stats(style), alpha=0.7)
    out = compiled.stylize(content, compiled.style_stats(style), alpha=0.7)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_cpu_model_reuses_freed_activation_memory(model: StyleTransfer) -> None:
    """A CPU model keeps freed blocks in the process, so that forward passes after the first
    few cost no page faults: by default glibc unmaps every block over 32 MB when it is freed,
    and each pass faults its activations in again."""
    assert reuse_freed_memory()  # already applied by the CPU model; applying it again is harmless

    faults = [forward_like(40) for _ in range(12)]  # the heap settles within a few passes
    assert max(faults[-4:]) < 3 * 10240 // 10, faults  # 10,240 4 KiB pages a block when mapped afresh


def forward_like(mib: int) -> int:
    """This thread's page faults in a pass through three activations of `mib` MiB each."""
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    first = torch.ones(mib << 18)
    second = torch.ones(mib << 18)
    del first
    third = torch.ones(mib << 18)
    del second, third
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_cpu_model_actor_reuses_freed_memory_on_the_threads_that_take_its_calls(ray_cluster: str) -> None:
    """A CPU model actor computes on the threads that take its calls. glibc gives each such
    thread an arena whose heaps hold at most 64 MB and maps larger blocks afresh, so the actor's
    process starts with one arena (its Ray arguments' runtime env): 80 MiB activations on a
    pool thread there are reused as on the main thread."""
    import ray

    from pipeline.config import ModelConfig, Scale
    from pipeline.data.cluster import model_stage

    runtime_env = model_stage(ModelConfig(encoder="e", decoder="d", device="cpu"), Scale())[0]["runtime_env"]

    @ray.remote(num_cpus=0, runtime_env=runtime_env)
    def faults_on_a_pool_thread() -> list[int]:
        from concurrent.futures import ThreadPoolExecutor

        reuse_freed_memory()  # as the model does when it loads
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(lambda: [forward_like(80) for _ in range(16)]).result()

    faults = ray.get(faults_on_a_pool_thread.remote())
    # 20,480 pages a block when mapped afresh: 61,440 every pass without one arena. Ray's own
    # threads share the arena, so a pass now and then grows the heap by a block.
    assert sum(faults[-8:]) < 3 * 20480, faults
