"""Whole-scene inference on georeferenced rasters (predict_scene.py).

reading: the two dates window by window on T1's grid (T2 warped onto it when needed), bands to RGB;
tiling: overlapping tiles and the weight window that blends them; inference: tiles through the model in batches;
progress: per-batch results kept on disk, so an interrupted run resumes; rasters: probability and mask GeoTIFFs
written block by block, then Cloud-Optimized; polygons: the mask as vector features with their area and
confidence; areas: ground areas on the ellipsoid in any CRS; formats: the table of outputs and the polygon formats
copied from one layer; summary: what each question found; run: the whole command.
"""
