"""What an AOTInductor package written by acmix-deploy records in its metadata.

``AOTICompiledModel.get_metadata()`` returns string entries; acmix-deploy writes ``acmix_deploy.input_size``
(``"C,H,W"``), ``acmix_deploy.min_batch`` / ``max_batch`` (the batch range the package was specialised for),
``acmix_deploy.device`` (what it was compiled for), ``acmix_deploy.output_names`` (a JSON list) and the
caller's own entries under the same prefix.  Packages from other writers may record none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import AcmixDeployError
from .onnx import METADATA_PREFIX

__all__ = ["AotiMetadata", "aoti_metadata", "read_aoti_metadata"]

INPUT_SIZE_KEY = METADATA_PREFIX + "input_size"
MIN_BATCH_KEY = METADATA_PREFIX + "min_batch"
MAX_BATCH_KEY = METADATA_PREFIX + "max_batch"
DEVICE_KEY = METADATA_PREFIX + "device"
OUTPUT_NAMES_KEY = METADATA_PREFIX + "output_names"


@dataclass(frozen=True)
class AotiMetadata:
    input_size: tuple[int, int, int] | None  # (C, H, W), None when the package records none
    min_batch: int
    max_batch: int | None  # None: no recorded limit
    device: str | None  # the device it was compiled for
    output_names: list[str] | None  # None: not recorded (one output is then called ``logits``)


def aoti_metadata(input_size, min_batch: int, max_batch: int, device: str, output_names: list[str],
                  extra: dict | None = None) -> dict[str, str]:
    """The metadata entries :func:`acmix_deploy.exporters.aoti.export_aoti` stamps into a package."""
    return {INPUT_SIZE_KEY: ",".join(map(str, input_size)), MIN_BATCH_KEY: str(min_batch),
            MAX_BATCH_KEY: str(max_batch), DEVICE_KEY: device, OUTPUT_NAMES_KEY: json.dumps(list(output_names)),
            **{METADATA_PREFIX + k: str(v) for k, v in (extra or {}).items()}}


def read_aoti_metadata(metadata: dict[str, str], source: str = "the package") -> AotiMetadata:
    """Decode the entries of :func:`aoti_metadata`; a malformed number is an error naming ``source``."""
    try:
        size = metadata.get(INPUT_SIZE_KEY)
        input_size = tuple(int(v) for v in size.split(",")) if size else None
        min_batch = int(metadata.get(MIN_BATCH_KEY, 1))
        max_batch = int(metadata[MAX_BATCH_KEY]) if MAX_BATCH_KEY in metadata else None
    except ValueError as exc:
        raise AcmixDeployError(f"{source} has malformed acmix_deploy metadata ({exc}); re-export it") from None
    if input_size is not None and len(input_size) != 3:
        raise AcmixDeployError(f"{source} records input size {size!r}; expected C,H,W")
    try:  # packages written before several outputs were supported record none: one output, "logits"
        names = json.loads(metadata.get(OUTPUT_NAMES_KEY, "null"))
    except json.JSONDecodeError:
        names = None
    return AotiMetadata(input_size, min_batch, max_batch, metadata.get(DEVICE_KEY),  # type: ignore[arg-type]
                        names if isinstance(names, list) else None)
