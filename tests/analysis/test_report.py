"""The analysis report page, through `rcdm analyze report`."""

from __future__ import annotations


def test_report_writes_index_referencing_every_figure(tiny_run, two_images, few_images, tmp_path, analyze):
    out = tmp_path / "report"
    code = analyze(
        "report",
        tiny_run,
        two_images,
        out,
        "--augmentations",
        "grayscale",
        "--pgd-steps",
        "2",
        "--neighbours",
        str(few_images),
        "--target",
        str(two_images[1]),
        "--k",
        "4",
        "--n-common",
        "2",
        "--cache",
        str(tmp_path / "rep-cache"),
    )
    assert code == 0
    assert len(list((tmp_path / "rep-cache").glob("reps-*.safetensors"))) == 1  # --cache reaches manipulate
    page = (out / "index.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "adversarial.png",
        "interpolation.png",
        "invariance.png",
        "manipulation.png",
        "variance.png",
    ]
    for name in pngs:
        assert f"src='{name}'" in page
    # the tiny run's ResNet-20 has a classifier: its labels before and after the attack, none of them n/a
    assert "class (clean -&gt; attacked)" in page and "n/a -&gt; n/a" not in page
    assert "http" not in page.replace("http-equiv", "")  # nothing to fetch: readable offline
