"""Export a trained ReasonCD model as a Hugging Face Hub repository folder (and optionally push it).

    python export.py --run runs/quickstart --output_dir exports/reasoncd-quickstart
    python export.py --run runs/mine/checkpoints/checkpoint-800 --output_dir exports/mine --dataset SECOND \
        --metrics runs/mine/metrics.json
    python export.py --run runs/mine --output_dir exports/mine --push_to_hub ORG/NAME [--private]
    python export.py --run runs/mine/checkpoints/checkpoint-800 --adapter_only --base_model_id ORG/reasoncd-7b-init \
        --output_dir exports/mine-adapter

--run takes a train.py run folder (its model/ and metrics.json), a merged model folder, or a PEFT checkpoint-N
(loaded on its base model and merged). The full export holds safetensors weights, the remote code, the processor,
generation_config.json, the `change-detection` pipeline, an Inference Endpoints handler and a model card; the
adapter export holds the PEFT adapter, the processor and a card. Nothing of training (optimizer state, data,
checkpoints, training code) is exported.
"""

import argparse
import os
import sys
from pathlib import Path

from reasoncd.exits import run_command
from reasoncd.io import OutputDirError
from reasoncd.loading import HUB_ID
from reasoncd.publishing.export import export_model
from reasoncd.publishing.source import ExportError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path,
                        help="train.py run folder, merged model folder, or PEFT checkpoint-N folder")
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder holding other files; only the export's files are replaced")
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", help="also upload the export to this Hub repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.add_argument("--metrics", type=Path, help="metrics.json for the card (default: the run's, if any)")
    parser.add_argument("--dataset", action="append", default=[],
                        help="data the model was trained and evaluated on (Hub id or name; repeatable)")
    parser.add_argument("--adapter_only", action="store_true", help="export the PEFT adapter instead of full weights")
    parser.add_argument("--base_model_id", help="Hub id of the base model (required with --adapter_only)")
    parser.add_argument("--base_model", type=Path, help="local folder of the model a PEFT checkpoint was trained "
                        "from (default: adapter_config.json's base_model_name_or_path)")
    parser.add_argument("--base_models", nargs="+", dest="card_base_models", metavar="BASE_MODELS",
                        help="Hub ids of the pretrained components for the card (default: as recorded in the "
                             "config, or the paper's when the sizes match)")
    parser.add_argument("--max_shard_size", default="5GB", help="weights above this size are sharded")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="generation_config.json default")
    args = parser.parse_args(argv)
    if args.adapter_only and not args.base_model_id:
        parser.error("--adapter_only needs --base_model_id ORG/NAME: the Hub id the adapter is applied to")
    for flag, repo_id in (("--push_to_hub", args.push_to_hub), ("--base_model_id", args.base_model_id)):
        if repo_id is not None and not HUB_ID.fullmatch(repo_id):
            parser.error(f"{flag} {repo_id!r}: expected a Hub id ORG/NAME")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_command("export.py", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    try:
        export_model(**vars(args))
    except (ExportError, OutputDirError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
