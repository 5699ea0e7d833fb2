"""Answer a question about the change between two images and write the change map.

    python predict.py --model runs/quickstart/model --t1 A.png --t2 B.png --question "new buildings" --out mask.png
    python predict.py ... --json        # {"text": ..., "raw_text": ..., "mask": ..., "changed_fraction": ...}
    python predict.py ... --quantize 4  # the language model in 4 (or 8) bits: pip install -e .[quant]
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from reasoncd_tools.checkpoints import check_checkpoint
from reasoncd_tools.images import ImageReadError, read_rgb, write_png_atomic
from reasoncd_tools.quantization import (add_quantize_argument, finish_quantized_loading, quantized_loading_options,
                                         require_bitsandbytes)


def load_model(location: str | Path, quantize: int | None = None, device: str | None = None):
    """
    `AutoModel` / `AutoProcessor` with the checkpoint's own code, in eval mode; `location` is a checkpoint folder
    (checked first) or a Hub id.

    quantize: 8 or 4 loads the language model's decoder layers with bitsandbytes (LLM.int8 / NF4) and leaves CLIP,
        SAM, the fusion module, the projector, `text_hidden_fc` and `lm_head` unquantised: in bfloat16 on a GPU
        that supports it, else in float32.
    device: where the model runs. Default: the CPU; quantised, CUDA when available.
    """
    require_bitsandbytes(quantize)
    from transformers import AutoModel, AutoProcessor

    location = str(location)
    if Path(location).exists():
        check_checkpoint(Path(location))
    options = {} if quantize is None else quantized_loading_options(location, quantize, device)
    model = AutoModel.from_pretrained(location, trust_remote_code=True, **options).eval()
    if quantize is not None:
        finish_quantized_loading(model)
    elif device is not None:
        model.to(device)
    processor = AutoProcessor.from_pretrained(location, trust_remote_code=True)
    return model, processor


def predict(model, processor, image_t1: np.ndarray, image_t2: np.ndarray, questions: list[str],
            max_new_tokens: int = 64) -> list[dict]:
    """One pair, k questions (the images are encoded once): k `{"text", "raw_text", "mask", "changed_fraction"}`
    (`text` is the answer for a reader, `raw_text` the model's own with `[SEG]`)."""
    inputs = processor(images_t1=image_t1, images_t2=image_t2, text=questions, return_tensors="pt").to(model.device)
    outputs = model.generate(**inputs, max_new_tokens=max_new_tokens)
    results = [with_readable_text(result) for result in processor.post_process_generation(outputs)]
    for result in results:
        result["changed_fraction"] = float(result["mask"].mean())
    return results


def with_readable_text(result: dict) -> dict:
    """The result with `text` for a reader and `raw_text` with `[SEG]`, also from a checkpoint whose processor code
    predates `raw_text` (its `text` is the raw answer)."""
    if "raw_text" not in result:
        from processing_reasoncd import ReasonCDProcessor

        result["raw_text"] = result["text"]
        result["text"] = ReasonCDProcessor.readable_answer(result["text"])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="checkpoint folder")
    parser.add_argument("--t1", required=True, type=Path, help="earlier image")
    parser.add_argument("--t2", required=True, type=Path, help="later image")
    parser.add_argument("--question", required=True, help="the change of interest, e.g. 'new buildings'")
    parser.add_argument("--out", required=True, type=Path, help="output mask PNG (0/255, the inputs' size)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the answer (text; raw_text keeps the model's "
                        "[SEG] token), the mask path and the changed fraction as JSON")
    add_quantize_argument(parser)
    args = parser.parse_args(argv)

    try:
        if not args.question.strip():
            raise ValueError("--question is empty; describe the change of interest, e.g. 'new buildings'")
        image_t1, note_t1 = read_rgb(args.t1)
        image_t2, note_t2 = read_rgb(args.t2)
        for path, note in ((args.t1, note_t1), (args.t2, note_t2)):
            if note:
                print(f"note: {path}: {note}", file=sys.stderr)
        out = args.out.resolve()
        if out.is_dir():
            raise ValueError(f"--out {args.out} is a folder; give the path of the PNG file to write")
        if out in (args.t1.resolve(), args.t2.resolve()):
            raise ValueError(f"--out {args.out} is one of the input images; give another path for the change map")
        check_checkpoint(args.model)  # before the slow imports
        require_bitsandbytes(args.quantize)
        if image_t1.shape != image_t2.shape:
            raise ValueError(f"--t1 {args.t1} is {image_t1.shape[1]}x{image_t1.shape[0]} but --t2 {args.t2} is "
                             f"{image_t2.shape[1]}x{image_t2.shape[0]}; the two dates must be co-registered images "
                             "of the same size")
        model, processor = load_model(args.model, quantize=args.quantize)
        result = predict(model, processor, image_t1, image_t2, [args.question], args.max_new_tokens)[0]
    except (ImageReadError, ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_png_atomic(args.out, result["mask"])
    if args.json:
        print(json.dumps({"text": result["text"], "raw_text": result["raw_text"], "mask": str(args.out),
                          "changed_fraction": result["changed_fraction"]}))
    else:
        print(result["text"])
        print(f"change map: {args.out} ({result['changed_fraction']:.2%} of pixels changed)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
