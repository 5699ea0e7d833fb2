"""Assemble a ReasonCD checkpoint folder that `AutoModel` / `AutoProcessor` load with `trust_remote_code=True`.

    python build_reasoncd.py --preset tiny --output_dir runs/tiny                 # random weights, our tokenizer
    python build_reasoncd.py --llm meta-llama/Llama-2-7b-chat-hf --vision openai/clip-vit-large-patch14 \
        --sam sam_vit_h_4b8939.pth [--resnet resnet34.safetensors] --output_dir runs/reasoncd-7b-init
    python build_reasoncd.py --preset reasoncd-7b --dry_run                       # parameter counts, no weights
"""

import argparse
import os
import sys
from pathlib import Path

from configuration_reasoncd import ReasonCDConfig
from reasoncd.build import (add_option_arguments, build_from_components, build_tiny, option_overrides,
                            parameter_report, print_report, save_checkpoint)
from reasoncd.exits import run_command
from reasoncd.io import OutputDir, OutputDirError


def main(argv=None) -> int:
    return run_command("build_reasoncd.py", lambda: build(argv))


def build(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="tiny, medium or reasoncd-7b (default: reasoncd-7b with --llm)")
    parser.add_argument("--output_dir", type=Path)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder holding other files; only the checkpoint's files are replaced")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llm", help="Hub id or folder of the causal LM (e.g. meta-llama/Llama-2-7b-chat-hf)")
    parser.add_argument("--vision", help="Hub id or folder of CLIP (e.g. openai/clip-vit-large-patch14)")
    parser.add_argument("--sam", help="segment-anything checkpoint sam_vit_*.pth")
    parser.add_argument("--resnet", help="torchvision ResNet state dict (.safetensors or .pth) for the fusion module")
    parser.add_argument("--dry_run", action="store_true", help="print parameter counts, allocate no weights")
    parser.add_argument("--lora_rank", type=int, default=8)
    add_option_arguments(parser)
    args = parser.parse_args(argv)

    real = any([args.llm, args.vision, args.sam])
    if real and not all([args.llm, args.vision, args.sam]):
        parser.error("building from real components needs --llm, --vision and --sam together")
    args.preset = args.preset or ("reasoncd-7b" if real else "tiny")
    overrides = option_overrides(args)
    if args.use_feature_fusion is False and args.resnet:
        parser.error("--resnet loads the fusion module's ResNet, which --no_fusion removes")
    if args.dry_run:
        config = ReasonCDConfig.from_preset(args.preset, **overrides)
        print_report(parameter_report(config, args.lora_rank), args.lora_rank)
        return 0
    if args.output_dir is None:
        parser.error("--output_dir is required (except with --dry_run)")
    # Checked before minutes of loading: a folder the build may not write is refused now.
    local_inputs = [Path(p) for p in (args.llm, args.vision, args.sam, args.resnet) if p and Path(p).exists()]
    try:
        with OutputDir(args.output_dir, "build_reasoncd.py", inputs=local_inputs, overwrite=args.overwrite) as output:
            if real:
                model, processor = build_from_components(args, overrides)
            elif args.preset in ("tiny", "medium"):
                model, processor = build_tiny(args.seed, preset=args.preset, **overrides)
            else:
                parser.error(f"--preset {args.preset} without --llm/--vision/--sam: only 'tiny' and 'medium' have "
                             "random weights here; use --dry_run to see its size")
            save_checkpoint(model, processor, output)
    except OutputDirError as error:  # refused at once, or the folder changed while the model was built
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"saved a ReasonCD checkpoint to {args.output_dir}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
