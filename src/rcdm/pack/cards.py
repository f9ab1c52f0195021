"""The pack's model cards (README.md beside each bundled encoder and RCDM), written from their card.json fields by
the one card writer, `rcdm.figures.model_card`."""

from __future__ import annotations

from ..figures import markdown_table, model_card


def encoder_card(card: dict) -> str:
    """The card of an encoder trained by `rcdm recipe ssl`."""
    first_epoch = card.get("cpu_time_from_epoch") or 0
    epochs_note = (
        f"; epochs {first_epoch + 1}-{card['epochs']} only: earlier ones predate CPU-time records"
        if first_epoch
        else ""
    )
    fields: list[tuple[str, object]] = [
        (
            "data",
            f"{card['data']['name']}: {card['data']['train_images']} train / {card['data']['test_images']} test "
            "images",
        ),
        ("data license", card["data"]["license"]),
        ("epochs / steps / images seen", f"{card['epochs']} / {card['steps']} / {card['images_seen']}"),
        ("wall time", f"{card['wall_time_s']:.0f} s on {card['device']}"),
    ]
    if card.get("cpu_time_s") is not None:
        fields.append(
            ("CPU time", f"{card['cpu_time_s']:.0f} s (process + data workers, all threads{epochs_note})")
        )
    fields += [
        (f"k-NN accuracy ({name}, k={card['recipe']['knn_k']}, test split)", f"{acc:.4f}")
        for name, acc in card.get("knn_accuracy", {}).items()
    ]
    fields += [
        (
            "input",
            f"32 px RGB in [0, 1], normalised with mean {card['preprocessing']['mean']}, std "
            f"{card['preprocessing']['std']}",
        ),
        ("rcdm commit", card.get("git_commit") or "not recorded"),
        ("weights dtype", card.get("dtype", "float32")),
    ]
    intro = (
        f"A {card['arch']['depth']}-layer CIFAR ResNet (width x{card['arch']['width']}) trained with the "
        f"`{card['objective']}` objective by `rcdm recipe ssl`. Load it with "
        "`rcdm.encoders.create_encoder('rcdm-cifar:PATH', feature='backbone' | 'projector')`."
    )
    return model_card(card.get("name", "rcdm-cifar encoder"), [intro], fields, smoke=bool(card.get("smoke")))


def rcdm_card(card: dict) -> str:
    """The card of a bundled RCDM (`rcdm.pack.write.pack`), with its measured metrics when it has them."""
    planned = card.get("planned_steps") or 0
    steps = f"{card['steps']}" + (f" (of {planned} planned)" if planned > card["steps"] else "")
    fields: list[tuple[str, object]] = [
        ("steps / batch / images seen", f"{steps} / {card['batch_size']} / {card['images_seen']}"),
        ("wall time", f"{card['wall_time_s']:.0f} s on {card['device']}"),
    ]
    if card.get("cpu_time_s") is not None:
        since = card.get("cpu_time_from_step")
        fields.append(
            (
                "CPU time",
                f"{card['cpu_time_s']:.0f} s (process + data workers, all threads"
                + (f"; steps after {since} only" if since else "")
                + ")",
            )
        )
    fields += [
        ("stopped before its planned steps", card["stopped_early"]),
        (
            "weights",
            f"{card['dtype']} (relative output error from fp16 rounding: {card['fp16_relative_error']:.2e})",
        ),
        ("data license", card["data_license"]),
        ("rcdm commit", card["git_commit"] or "not recorded"),
    ]
    start = card.get("initialised_from")
    if start:
        fields.append(
            (
                "initial weights",
                f"from `{start['model']}` (its UNet{', and its conditioning' if not start.get('fresh') else ''}; "
                f"from random weights: {', '.join(start.get('fresh') or []) or 'nothing'}; sha256 of "
                f"{start.get('weights_of', 'its weights file')}: {start.get('weights') or 'not recorded'})",
            )
        )
    sampling = card.get("sampling") or {}
    if sampling:
        fields.append(
            (
                "default sampling (`rcdm sample` without flags)",
                f"{sampling.get('sampler')} {sampling.get('steps')}, guidance {sampling.get('guidance', 1):g} "
                f"({sampling.get('chosen_by', 'not recorded')})",
            )
        )
    intro = (
        f"An RCDM (preset `{card['preset']}`) conditioned on the {card['feature']} feature of the bundled encoder "
        f"`{card['encoder']}`, trained on the CIFAR-10 train split by `rcdm recipe rcdm`. Sample with "
        "`rcdm sample --model PATH_TO_THIS_FOLDER --images ...`."
    )
    metrics = card.get("metrics") or {}
    # card.json keeps the measured floats; the table shows 4 significant digits
    table = "| metric | value |\n| --- | --- |\n" + "\n".join(
        f"| {k} | {f'{v:.4g}' if isinstance(v, float) else v} |" for k, v in metrics.items()
    )
    sections = [("Metrics", table)] if metrics else []
    if sampling.get("measured"):
        sections.append(("Sampling against guidance", _guidance_table(sampling["measured"])))
    return model_card(
        card["name"],
        [intro] if metrics else [intro, "No metrics were given when this model was packed."],
        fields,
        smoke=bool(card["smoke"]),
        sections=sections,
    )


def _guidance_table(measured: list[dict]) -> str:
    """What `rcdm recipe guidance` measured at each weight: faithfulness against diversity across samples."""
    columns = ("guidance", "class_agreement", "rank1", "mean_rank", "frechet", "diversity", "pixel_spread")
    return markdown_table(
        [
            "guidance",
            "class agreement",
            "rank-1",
            "mean rank",
            "Fréchet (judge)",
            "diversity (judge cosine)",
            "pixel spread",
        ],
        [[m.get(c) for c in columns] for m in measured],
        digits=3,
    ) + (
        "\nGuidance buys faithfulness with diversity: the spread across samples is what RCDM asks its reader to "
        "read, so the default is the lowest weight nearly as faithful as the best (docs/recipes.md).\n"
    )
