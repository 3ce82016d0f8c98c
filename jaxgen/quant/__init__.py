"""Quantisers: FSQ (finite scalar quantisation) and VQ (nearest code, STE, EMA codebook, restarts)."""
from jaxgen.quant.fsq import FSQ, RECOMMENDED_LEVELS, round_ste
from jaxgen.quant.vq import (
    CodebookEMA,
    EMAState,
    RestartResult,
    VectorQuantizer,
    VQOutput,
    batch_init,
    code_counts,
    codebook_perplexity,
    codebook_usage,
    ema_codebook,
    ema_update,
    kmeans_plusplus_init,
    l2_normalize,
    nearest_code,
    restart_dead_codes,
    squared_distances,
    usage_ema_update,
    vector_quantize,
)
