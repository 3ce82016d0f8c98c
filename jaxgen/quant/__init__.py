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
    ema_codebook,
    ema_codebook_update,
    kmeans_plusplus_init,
    l2_normalize,
    nearest_code,
    perplexity_from_counts,
    restart_dead_codes,
    squared_distances,
    usage_ema_update,
    usage_from_counts,
    vector_quantize,
)
