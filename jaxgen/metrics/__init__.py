"""Sample-quality metrics and distribution distances."""
from jaxgen.metrics.codebook import codebook_usage, perplexity
from jaxgen.metrics.distances import mmd, sliced_wasserstein, wasserstein2_1d_squared
from jaxgen.metrics.features import (ClassifierFeatures, FeatureExtractor, classifier_features,
                                     default_cache_dir, train_classifier)
from jaxgen.metrics.fid import (FeatureStats, InceptionExtractor, InceptionScoreStats,
                                inception_score, load_stats, sample_and_score, save_stats)
from jaxgen.metrics.frechet import (feature_stats, frechet_distance,
                                    frechet_distance_from_features)
from jaxgen.metrics.inception import InceptionV3, load_fid_inception

__all__ = [
    "ClassifierFeatures", "FeatureExtractor", "classifier_features", "codebook_usage",
    "default_cache_dir", "feature_stats", "frechet_distance", "frechet_distance_from_features",
    "mmd", "perplexity", "sliced_wasserstein", "train_classifier", "wasserstein2_1d_squared",
    "FeatureStats", "InceptionExtractor", "InceptionScoreStats", "InceptionV3", "inception_score",
    "load_fid_inception", "load_stats", "sample_and_score", "save_stats",
]
