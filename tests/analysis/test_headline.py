"""The terminal headline of an analysis: the numbers of results.json a user reads first, none invented."""

from __future__ import annotations

from rcdm.analysis.headline import MAX_LINES, headline


def test_labelled_rows_per_name_tables_and_series_each_get_a_line():
    results = {
        "analysis": "invariance",
        "model": "runs/r20",
        "results": [
            {
                "label": "runs/r20",
                "typical_distance": 1.23456,
                "augmentations": [
                    {"augmentation": "grayscale", "strength": 1.0, "cosine": 0.97, "retention": None,
                     "per_image": {"a.png": {"cosine": 0.5}}},
                ],
                "settings": {"seed": 0},
            }
        ],
        "mean_pixel_std": {"a.png": 0.0412, "b.png": 0.05},
        "methods": {"slerp": {"frame_change": [0.1, 0.25]}},
    }  # fmt: skip
    lines = headline(results)
    assert "runs/r20: typical_distance 1.23" in lines
    assert "runs/r20 · grayscale: strength 1, cosine 0.97, retention n/a" in lines
    assert "mean_pixel_std: a.png 0.0412, b.png 0.05" in lines
    assert "slerp · frame_change: 0:0.1, 1:0.25" in lines
    assert not any(word in line for line in lines for word in ("seed", "invariance", "per_image", "0.5"))


def test_a_long_result_is_cut_and_says_where_the_rest_is():
    lines = headline({"results": [{"label": f"m{i}", "x": float(i)} for i in range(40)]})
    assert len(lines) == MAX_LINES + 1 and lines[-1] == f"… {40 - MAX_LINES} more lines in results.json"
    many = headline({"per_name": {f"n{i}": 1.0 for i in range(20)}})
    assert many == ["per_name: n0 1, n1 1, n2 1, n3 1, n4 1, n5 1, n6 1, n7 1, … (20 in all)"]
