"""Change detection over a whole georeferenced scene: two GeoTIFFs (or any rasters GDAL reads) of one area, one or
more questions; per question a probability and a mask Cloud-Optimized GeoTIFF on T1's grid, the changes as
polygons (by default RFC 7946 GeoJSON in WGS 84 and a GeoPackage in T1's CRS), and summary.json.

    python predict_scene.py --model runs/quickstart/model --t1 2012.tif --t2 2016.tif \\
        --question "new buildings" --question "demolished buildings" --output_dir runs/scene
    python predict_scene.py ... --bands 4,3,2          # multispectral: the bands to read as red, green, blue
    python predict_scene.py ... --formats gpkg,fgb     # polygons as GeoPackage and FlatGeobuf only

T2 is warped onto T1's grid when their CRS, resolution or extent differ. The scene is cut into overlapping tiles,
each pair encoded once for all questions; overlaps are blended. An interrupted run continues where it stopped when
run again with the same inputs and settings; the outputs appear only when everything is done.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from reasoncd.exits import run_command
from reasoncd.io import OutputDir, OutputDirError
from reasoncd.loading import add_quantize_argument, load_model, require_bitsandbytes
from reasoncd.scenes.formats import DEFAULT_FORMATS, POLYGON_FORMATS, parse_formats
from reasoncd.scenes.rasters import GDAL_OPTIONS
from reasoncd.scenes.reading import RESAMPLING_CHOICES, SceneInputError, open_scene, parse_bands
from reasoncd.scenes.run import SceneSettings, output_names, run_scene

COMMAND = "predict_scene.py"


def _file_identity(path: Path) -> dict:
    status = path.stat()
    return {"path": str(path.resolve()), "bytes": status.st_size, "modified_ns": status.st_mtime_ns}


def _model_identity(location: Path) -> dict | str:
    """What a resumed run must share with the interrupted one: the folder and its weights (or the Hub id)."""
    if not location.exists():
        return str(location)
    weights = sorted(p for p in location.iterdir() if p.name.endswith((".safetensors", ".json")))
    return {"folder": str(location.resolve()), "files": [_file_identity(p) for p in weights]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="checkpoint folder")
    parser.add_argument("--t1", required=True, type=Path, help="earlier scene (its grid is the outputs' grid)")
    parser.add_argument("--t2", required=True, type=Path, help="later scene (warped onto T1's grid if needed)")
    parser.add_argument("--question", required=True, action="append",
                        help="the change of interest; repeat for several questions (each tile is encoded once)")
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder holding other files (only this command's outputs are replaced)")
    parser.add_argument("--bands", help="1-based bands read as red,green,blue (or one band as grey), e.g. 4,3,2; "
                        "default: the bands marked red, green and blue, or a file's only band or three bands")
    parser.add_argument("--tile_size", type=int, default=SceneSettings.tile_size, help="tile side in pixels")
    parser.add_argument("--overlap", type=int, default=SceneSettings.overlap,
                        help="pixels shared by neighbouring tiles, blended (0 to half the tile)")
    parser.add_argument("--batch_size", type=int, default=SceneSettings.batch_size, help="tiles per model call")
    parser.add_argument("--threshold", type=float, default=SceneSettings.threshold,
                        help="blended probability above which a pixel is change")
    parser.add_argument("--resampling", choices=RESAMPLING_CHOICES, default="bilinear",
                        help="how T2 is resampled when warped onto T1's grid")
    parser.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                        help="polygon formats, comma-separated: " + "; ".join(
                            f"{name}: {kind.what}" for name, kind in POLYGON_FORMATS.items()))
    parser.add_argument("--no_gpkg", action="store_true", help="leave gpkg out of --formats")
    parser.add_argument("--max_new_tokens", type=int, default=SceneSettings.max_new_tokens)
    parser.add_argument("--device", help="torch device, e.g. cuda (default: the CPU; quantised: CUDA if present)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_quantize_argument(parser)
    args = parser.parse_args(argv)
    return run_command(COMMAND, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    import rasterio

    try:
        questions = [q.strip() for q in args.question]
        empty = [i for i, q in enumerate(questions, 1) if not q]
        if empty:
            raise ValueError(f"--question number {empty[0]} is empty; describe the change of interest")
        if len(set(questions)) != len(questions):
            raise ValueError("the same --question is given twice")
        polygon_formats = tuple(name for name in parse_formats(args.formats) if not (args.no_gpkg and name == "gpkg"))
        settings = SceneSettings(tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size,
                                 threshold=args.threshold, max_new_tokens=args.max_new_tokens, formats=polygon_formats)
        settings.check()
        bands = parse_bands(args.bands)
        with rasterio.Env(**GDAL_OPTIONS), open_scene(args.t1, args.t2, bands, args.resampling) as scene, \
                OutputDir(args.output_dir, COMMAND, inputs=[args.model, args.t1, args.t2], overwrite=args.overwrite,
                          entries=output_names(questions, settings.formats)) as output:
            require_bitsandbytes(args.quantize)
            for note in scene.notes:
                print(f"note: {note}", file=sys.stderr)
            model, processor = load_model(args.model, quantize=args.quantize, device=args.device)
            signature = {"model": _model_identity(args.model), "t1": _file_identity(args.t1),
                         "t2": _file_identity(args.t2), "questions": questions, "bands": args.bands,
                         "resampling": args.resampling, "quantize": args.quantize, "device": str(model.device),
                         **settings.tile_signature()}
            describe = {"model": str(args.model), "t1": str(args.t1), "t2": str(args.t2)}
            with output.resumable(signature) as (work, staged):
                summary, stats = run_scene(model, processor, scene, questions, work, staged, settings, describe,
                                           progress=not args.no_progress)
    except (SceneInputError, OutputDirError, ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    rate = stats.tiles_run_now / stats.inference_seconds if stats.inference_seconds else 0.0
    print(f"{stats.tiles} tiles, {stats.tiles_run_now} through the model in this run ({rate:.2f} tiles/s), "
          f"{stats.total_seconds:.1f} s in all (tiles {stats.inference_seconds:.1f} s, blending "
          f"{stats.blending_seconds:.1f} s, rasters and polygons {stats.writing_seconds:.1f} s); outputs in "
          f"{args.output_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
