"""Uploading an export folder to a Hub model repository."""

from pathlib import Path

from reasoncd.io import MARKER
from reasoncd.publishing.source import ExportError


class PushError(ExportError):
    """The upload failed; the export folder itself is complete and stays where it is."""


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Creates the repository (if needed) and uploads the folder, without the output-folder marker; returns its
    URL. Any failure becomes a PushError that says how to push the finished folder later."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload ReasonCD export", ignore_patterns=[MARKER])
    # Offline, no token, no permission, network down (the HTTP client's errors vary between huggingface_hub
    # versions): whatever it is, the export itself is complete and stays where it is.
    except Exception as error:
        raise PushError(f"could not push to the Hub repository {repo_id} ({type(error).__name__}: {error}). The "
                        f"export in {folder} is complete; push it later with `hf upload {repo_id} {folder} --exclude "
                        f"{MARKER}` or rerun with network access and a token (`hf auth login`).") from error
    return str(url)
