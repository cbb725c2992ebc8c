"""Download a model snapshot from the Hugging Face Hub (or its local cache)."""

from __future__ import annotations

from pathlib import Path

import httpx2  # huggingface_hub 2.x's HTTP client: its transport errors mean "no network"
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

from .errors import ModelStoreError, NetworkUnavailableError
from .local import MODEL_FILE_PATTERNS, copy_model_files, validate_model_dir


def download_from_hub(model_id: str, dest: Path, *, revision: str | None = None) -> str:
    """Copy `model_id`'s model files into `dest` and return the commit hash they came from.

    Uses the regular HF cache (HF_HOME / HF_HUB_CACHE), so HF_HUB_OFFLINE=1 with a populated cache
    works without network, and a second prepare does not download again.
    """
    try:
        snapshot = Path(
            snapshot_download(repo_id=model_id, revision=revision, allow_patterns=list(MODEL_FILE_PATTERNS))
        )
    except LocalEntryNotFoundError as error:
        raise NetworkUnavailableError(
            f"cannot reach the Hugging Face Hub for {model_id!r} and it is not in the local cache "
            f"({constants.HF_HUB_CACHE}): {error}"
        ) from error
    except (httpx2.TransportError, ConnectionError, TimeoutError) as error:
        raise NetworkUnavailableError(
            f"lost the connection to the Hugging Face Hub while downloading {model_id!r}: {error}"
        ) from error
    except (HfHubHTTPError, HFValidationError) as error:
        # Not found, gated, bad revision, malformed id: asking again elsewhere would not help.
        raise ModelStoreError(f"cannot download {model_id!r} from the Hugging Face Hub: {error}") from error
    validate_model_dir(snapshot)
    copy_model_files(snapshot, dest)
    return snapshot.name  # cache layout: .../snapshots/<commit hash>
