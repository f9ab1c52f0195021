"""Evaluation (each writes FILE.json and a Markdown table FILE.md beside it, `figures.write_report`): faithfulness (do samples keep their representation?) and quality (FID, KID, IS, PR, DC).

See docs/metrics.md for the definitions (mean rank and its ties, the k-NN manifolds) and the 50k-sample job.
"""

from .faithfulness import (
    FaithfulnessResult,
    FaithfulnessScores,
    cosine_to_condition,
    evaluate_faithfulness,
    faithfulness_scores,
    retrieval_ranks,
)
from .features import (
    EncoderFeatures,
    FeatureExtractor,
    FeatureSet,
    InceptionFeatures,
    create_feature_extractor,
    extract_features,
    find_inception_weights,
)
from .generate import GenerateResult, generate_samples, sample_files, sample_path
from .quality import (
    QualityResult,
    evaluate_quality,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    load_reference_stats,
    manifold_metrics,
    mmd2_unbiased,
    quality_from_features,
)

__all__ = [
    "EncoderFeatures",
    "FaithfulnessResult",
    "FaithfulnessScores",
    "FeatureExtractor",
    "FeatureSet",
    "GenerateResult",
    "InceptionFeatures",
    "QualityResult",
    "cosine_to_condition",
    "create_feature_extractor",
    "evaluate_faithfulness",
    "evaluate_quality",
    "extract_features",
    "faithfulness_scores",
    "find_inception_weights",
    "frechet_distance",
    "generate_samples",
    "inception_score",
    "kernel_inception_distance",
    "load_reference_stats",
    "manifold_metrics",
    "mmd2_unbiased",
    "quality_from_features",
    "retrieval_ranks",
    "sample_files",
    "sample_path",
]
