"""Publishing a trained model: the run or checkpoint to export (source), the model card (card), the export folders
(writers), the Hub upload (hub) and export.py's whole run (export)."""
