"""From a ModelConfig to a ready StyleTransfer: fetch, verify and load both networks."""

from __future__ import annotations

import logging

from pipeline.config import ModelConfig
from pipeline.model.checkpoint import load_decoder, load_encoder
from pipeline.model.stylizer import StyleTransfer, pick_device

log = logging.getLogger(__name__)


def load_model(cfg: ModelConfig) -> StyleTransfer:
    """Load the encoder and decoder named by `cfg` onto its device.

    The model's `identity` (sha256 of each network's weights) goes into every manifest
    row, so results can always be traced to the exact weights that made them.
    """
    encoder, decoder = load_encoder(cfg.encoder), load_decoder(cfg.decoder)
    trained_for = decoder.meta.get("encoder")
    if trained_for and trained_for != encoder.sha256:
        log.warning(
            "decoder %s was trained for encoder %s but encoder %s is loaded; results will be poor",
            cfg.decoder,
            trained_for[:12],
            encoder.sha256[:12],
        )
    model = StyleTransfer(encoder.module, decoder.module, pick_device(cfg.device), cfg.precision, compile=cfg.compile)
    model.identity = {"encoder_sha256": encoder.sha256, "decoder_sha256": decoder.sha256}
    return model
