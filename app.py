"""ReasonCD in the browser: upload two dates of one place, ask about a change, get the answer and the change map.

    python app.py                                       # runs/quickstart/model (an untrained one until trained)
    python app.py --model exports/mine                  # any ReasonCD folder ...
    python app.py --model ORG/NAME --host 0.0.0.0       # ... or Hub id (a Space: set REASONCD_MODEL instead)
    python app.py --model ORG/NAME --quantize 4         # the language model in 4 bits (or $REASONCD_QUANTIZE)

Asking several questions about the same pair reuses the encoded images: CLIP and SAM run once per pair.
"""

import argparse
import os
import sys
from pathlib import Path

from reasoncd.demo import ChangeDetector, build_demo, model_facts, page_script
from reasoncd.loading import HUB_ID, add_quantize_argument, require_bitsandbytes

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an analyst's machine

REPO = Path(__file__).resolve().parent
DEFAULT_MODEL = REPO / "runs" / "quickstart" / "model"
# Shown while DEFAULT_MODEL does not exist; its own folder, so that train.py's run folder stays train.py's.
UNTRAINED_MODEL = REPO / "runs" / "untrained-tiny"


def resolve_model(reference: str) -> tuple[str, str | None]:
    """A local folder or Hub id to load, and a note for the page. Without the default model, an untrained tiny one
    in UNTRAINED_MODEL (built there once) shows the interface."""
    path = Path(reference)
    if path.exists():
        return str(path), None
    if path.resolve() == DEFAULT_MODEL:
        from reasoncd.build import build_tiny, save_checkpoint
        from reasoncd.io import read_marker

        if "app.py" not in read_marker(UNTRAINED_MODEL):
            print(f"no model at {path}: building an untrained tiny one in {UNTRAINED_MODEL} (train one with "
                  "`python train.py`)")
            save_checkpoint(*build_tiny(seed=0), UNTRAINED_MODEL, command="app.py")
        return str(UNTRAINED_MODEL), ("This is an **untrained tiny model**, shown because no trained one was found "
                                      f"at `{path}`: its answers and masks are random. Train one with "
                                      "`python train.py`.")
    if HUB_ID.fullmatch(reference):
        return reference, None
    raise SystemExit(f"--model {reference}: no such folder (and not a Hub id ORG/NAME)")


def load_detector(reference: str, quantize: int | None = None) -> tuple[ChangeDetector, str | None]:
    from transformers import GenerationConfig

    from reasoncd.loading import load_model

    location, note = resolve_model(reference)
    model, processor = load_model(location, quantize=quantize)  # checks a local folder first
    try:
        max_new_tokens = GenerationConfig.from_pretrained(location).max_new_tokens or 64
    except OSError:  # folders written by train.py carry no generation_config.json
        max_new_tokens = 64
    return ChangeDetector(model, processor, max_new_tokens), note


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("REASONCD_MODEL", str(DEFAULT_MODEL)),
                        help="model folder or Hub id (default: $REASONCD_MODEL, else runs/quickstart/model)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    add_quantize_argument(parser, default=os.environ.get("REASONCD_QUANTIZE") or None)
    args = parser.parse_args(argv)
    try:
        require_bitsandbytes(args.quantize)  # $REASONCD_QUANTIZE bypasses argparse's choices
        detector, note = load_detector(args.model, quantize=args.quantize)
        location = resolve_model(args.model)[0]
        trained_on = ("nothing: random weights" if location == str(UNTRAINED_MODEL) else
                      "the built-in synthetic images (python train.py)" if Path(location).resolve() == DEFAULT_MODEL
                      else None)
        facts, warning = model_facts(location, detector.model, trained_on)
    # a missing or incomplete folder, a Hub id that cannot be reached, or --quantize without bitsandbytes
    except (OSError, ImportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    demo = build_demo(detector, args.model, note, facts, warning)
    demo.queue().launch(server_name=args.host, server_port=args.port, show_error=True, js=page_script())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
