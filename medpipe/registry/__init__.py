"""Model registry on a Store: immutable versions plus one mutable champion pointer.

The layout (``models/<model_name>/<version>/{model.onnx, metrics.json, gate.json, model_card.md, config.yaml,
plots/*.png, manifest.json}`` and ``champion.json``) is documented in the README ("Registry layout").

Rules:
- Every object carries its sha256 in metadata. A version without ``manifest.json`` is incomplete: the manifest
  is written only after every file is uploaded and verified (sha256 metadata and size re-read from the store).
- A version is never overwritten. Publishing the same content again uploads nothing (status "unchanged");
  different content under an existing version name is an error naming the differing file.
- ``champion.json`` is the only object ever replaced, and it is written last, after the manifest.
- The champion pointer moves only for a version whose gate.json passed that model, or one promoted by hand
  (``promote=True`` / ``medpipe publish --promote``, recorded in champion.json): ``promotion``.
- A publish that died half-way is completed by running it again: files already stored with the same sha256
  are skipped, the rest uploaded, then manifest and champion written.
- Model and version names match ``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`` and never contain ``..``.
- ``resolve_model`` verifies the downloaded model.onnx (or ``model.int8.onnx``, the optional INT8 copy) against
  the manifest (and champion) sha256 and refuses a mismatch with :class:`IntegrityError`.

Modules: ``common`` (names, errors, the champion pointer), ``publish`` (writing a version), ``promotion`` (who may
become champion), ``lookup`` (listing, showing and downloading versions).
"""

from medpipe.registry.common import (
    CHAMPION_KEY, INT8_MODEL_FILE, MANIFEST_NAME, MODEL_FILE, MODELS_PREFIX, REQUIRED_FILES, IntegrityError,
    MissingFileError, RegistryError, new_version_name, read_champion, validate_name,
)
from medpipe.registry.lookup import list_versions, locate_model, resolve_model, show_version
from medpipe.registry.publish import publish_version

__all__ = [
    "RegistryError", "IntegrityError", "MissingFileError", "publish_version", "list_versions", "show_version",
    "read_champion", "locate_model", "resolve_model", "new_version_name", "validate_name", "CHAMPION_KEY",
    "MODELS_PREFIX", "MANIFEST_NAME",
    "MODEL_FILE", "INT8_MODEL_FILE", "REQUIRED_FILES",
]
