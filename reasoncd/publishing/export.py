"""export.py's whole run: resolve --run, check the output folder, read the metrics, load what is exported, write
the card and the export folder at once, then push it if asked."""

from pathlib import Path

from reasoncd.io import OutputDir, read_marker
from reasoncd.publishing.card import base_models, build_card, read_metrics
from reasoncd.publishing.hub import push
from reasoncd.publishing.source import load_source, processor_folder, resolve_source
from reasoncd.publishing.writers import handler_file, write_adapter_export, write_full_export

COMMAND = "export.py"  # the name the output folder's marker records


def export_model(*, run: Path, output_dir: Path, overwrite: bool = False, push_to_hub: str | None = None,
                 private: bool = False, metrics: Path | None = None, dataset: list[str] = (),
                 adapter_only: bool = False, base_model_id: str | None = None, base_model: Path | None = None,
                 card_base_models: list[str] | None = None, max_shard_size: str = "5GB",
                 max_new_tokens: int = 64) -> list[str]:
    """
    Exports what `run` holds into `output_dir` (the full model, or with `adapter_only` the PEFT adapter for the
    Hub model `base_model_id`) and, with `push_to_hub`, uploads it; returns the names written. The keywords are
    export.py's options (`card_base_models` is --base_models: the pretrained components the card names).

    Raises ExportError or OutputDirError before anything is written; PushError (an ExportError) when only the
    upload failed.
    """
    source = resolve_source(run, adapter_only)
    # Checked before the model loads: the run, its model and any base model are inputs that are never touched.
    inputs = [run, source.path, base_model, metrics or source.metrics]
    with OutputDir(output_dir, COMMAND, inputs=inputs, overwrite=overwrite) as output:
        figures = read_metrics(metrics or source.metrics)
        # The card's usage snippets name the Hub repository; without --push_to_hub a placeholder the owner edits.
        repo_id = push_to_hub or f"your-org/{output_dir.resolve().name}"
        datasets = list(dataset)

        if adapter_only:
            from configuration_reasoncd import ReasonCDConfig
            from processing_reasoncd import ReasonCDProcessor

            folder = processor_folder(source, base_model)
            processor = ReasonCDProcessor.from_pretrained(folder, trust_remote_code=True)
            config = ReasonCDConfig.from_pretrained(folder)
            card = build_card(config=config, processor=processor, repo_id=repo_id, metrics=figures,
                              datasets=datasets, base_ids=card_base_models or base_models(config), parameters=None,
                              adapter_base=base_model_id)
            with output.staged() as staging:
                write_adapter_export(source, processor, staging, base_model_id)
                card.save(staging / "README.md")
        else:
            from reasoncd.build import weight_bytes

            handler_file()  # a missing handler stops the export before the model is loaded
            model, processor = load_source(source, base_model)
            card = build_card(config=model.config, processor=processor, repo_id=repo_id, metrics=figures,
                              datasets=datasets, base_ids=card_base_models or base_models(model.config),
                              parameters=model.num_parameters())
            with output.staged(needed=weight_bytes(model)) as staging:
                write_full_export(model, processor, staging, max_shard_size=max_shard_size,
                                  max_new_tokens=max_new_tokens)
                card.save(staging / "README.md")
    written = read_marker(output_dir)[COMMAND]
    print(f"exported {source.path} to {output_dir}: {', '.join(written)}")

    if push_to_hub:
        print(f"pushed to {push(output_dir, push_to_hub, private)}")
    return written

