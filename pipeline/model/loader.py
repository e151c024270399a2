"""From weight references to a ready StyleTransfer: fetch, verify and load both networks."""

from __future__ import annotations

import logging

from pipeline.model.checkpoint import Weights, load_decoder, load_encoder
from pipeline.model.nets import Decoder
from pipeline.model.sources import naming_the_rest
from pipeline.model.stylizer import StyleTransfer, pick_device

log = logging.getLogger(__name__)


def load_model(
    encoder_ref: str, decoder_ref: str, device: str = "auto", precision: str = "fp32", compile: bool = False
) -> StyleTransfer:
    """Load the encoder and decoder onto `device`, at `precision`.

    The model's `identity` (sha256 of each network's weights) goes into every manifest
    row, so results can always be traced to the exact weights that made them.
    """
    encoder, decoder = _load_both(encoder_ref, decoder_ref)
    trained_for = decoder.meta.get("encoder")
    if trained_for and trained_for != encoder.sha256:
        log.warning(
            "decoder %s was trained for encoder %s but encoder %s is loaded; results will be poor",
            decoder_ref,
            trained_for[:12],
            encoder.sha256[:12],
        )
    model = StyleTransfer(encoder.module, decoder.module, pick_device(device), precision, compile=compile)
    model.identity = {"encoder_sha256": encoder.sha256, "decoder_sha256": decoder.sha256}
    return model


def check_networks(encoder_ref: str, decoder_ref: str) -> None:
    """Load both networks once and drop them: a damaged file, a wrong layout or non-finite weights
    fail here, in one line, rather than in every model actor a job starts."""
    _load_both(encoder_ref, decoder_ref)


def _load_both(encoder_ref: str, decoder_ref: str) -> tuple[Weights, Weights]:
    with naming_the_rest((decoder_ref, "--decoder")):  # offline: both files named in one message
        encoder = load_encoder(encoder_ref)
    return encoder, load_decoder(decoder_ref)


def load_style_encoder(encoder_ref: str, device: str = "cpu", precision: str = "fp32") -> StyleTransfer:
    """Only the encoder, for style statistics (`style_stats`); the decoder slot holds an untrained one."""
    encoder = load_encoder(encoder_ref)
    model = StyleTransfer(encoder.module, Decoder(), pick_device(device), precision)
    model.identity = {"encoder_sha256": encoder.sha256}
    return model
