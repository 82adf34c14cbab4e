"""A small KServe v2 HTTP client (standard library only) for ``acmix-deploy serve`` and Triton alike.

    client = ServingClient("http://127.0.0.1:8000")
    client.wait_ready(timeout_s=30)
    logits = client.infer("acmix", images)          # images: float32 (N, C, H, W)

Tensors travel as binary data by default (``binary=False`` sends JSON lists).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np

from ..errors import AcmixDeployError
from .protocol import tensor_entry

__all__ = ["ServingClient", "ServingError"]

HEADER_LENGTH = "Inference-Header-Content-Length"


class ServingError(AcmixDeployError):
    """A request the server answered with an error (``status``: the HTTP status)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ServingClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace") or exc.reason
            raise ServingError(f"{method} {path}: HTTP {exc.code}: {message}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServingError(f"{method} {self.url}{path}: {getattr(exc, 'reason', exc)}") from None

    def live(self) -> bool:
        try:
            return self._request("GET", "/v2/health/live")[0] == 200
        except ServingError:
            return False

    def ready(self) -> bool:
        try:
            return self._request("GET", "/v2/health/ready")[0] == 200
        except ServingError:
            return False

    def wait_ready(self, timeout_s: float = 30.0, poll_s: float = 0.1) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServingError(f"{self.url} not ready after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def metadata(self, model: str) -> dict:
        return json.loads(self._request("GET", f"/v2/models/{model}")[2])

    def infer(self, model: str, x: np.ndarray, binary: bool = True, input_name: str | None = None,
              output_name: str | None = None, request_id: str | None = None) -> np.ndarray:
        """Run ``x`` (float32) through ``model``; names default to the model's metadata (one extra request, cached)."""
        if input_name is None or output_name is None:
            meta = self._meta_cache(model)
            input_name = input_name or meta["inputs"][0]["name"]
            output_name = output_name or meta["outputs"][0]["name"]
        x = np.ascontiguousarray(x, dtype="<f4")
        tensor = tensor_entry(input_name, x, binary)
        req: dict = {"inputs": [tensor], "outputs": [{"name": output_name, "parameters": {"binary_data": binary}}]}
        resp_headers, raw = self._post_infer(model, req, x, binary, request_id)
        return _decode_output(raw, resp_headers, output_name)

    def infer_outputs(self, model: str, x: np.ndarray, binary: bool = True, outputs: list[str] | None = None,
                      request_id: str | None = None) -> dict[str, np.ndarray]:
        """Every output of ``model`` for ``x`` (or those named in ``outputs``), by name, in the response's order."""
        meta = self._meta_cache(model)
        names = outputs or [o["name"] for o in meta["outputs"]]
        x = np.ascontiguousarray(x, dtype="<f4")
        req: dict = {"inputs": [tensor_entry(meta["inputs"][0]["name"], x, binary)],
                     "outputs": [{"name": n, "parameters": {"binary_data": binary}} for n in names]}
        resp_headers, raw = self._post_infer(model, req, x, binary, request_id)
        return _decode_outputs(raw, resp_headers)

    def _post_infer(self, model: str, req: dict, x: np.ndarray, binary: bool, request_id: str | None):
        """POST one inference request: the JSON header, then (binary) the raw tensor; returns (headers, body)."""
        if request_id is not None:
            req["id"] = request_id
        head = json.dumps(req).encode()
        headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
        body = head
        if binary:
            body = head + x.tobytes()
            headers[HEADER_LENGTH] = str(len(head))
        _, resp_headers, raw = self._request("POST", f"/v2/models/{model}/infer", body, headers)
        return resp_headers, raw

    def _meta_cache(self, model: str) -> dict:
        cache = self.__dict__.setdefault("_meta", {})
        if model not in cache:
            cache[model] = self.metadata(model)
        return cache[model]


def _decode_output(raw: bytes, headers: dict, output_name: str) -> np.ndarray:
    lowered = {k.lower(): v for k, v in headers.items()}
    n_head = int(lowered.get(HEADER_LENGTH.lower(), len(raw)))
    resp = json.loads(raw[:n_head])
    offset = n_head
    for out in resp["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if out["name"] == output_name:
            if out["datatype"] != "FP32":
                raise ServingError(f"output {output_name!r} has datatype {out['datatype']}, expected FP32")
            if size is not None:
                return np.frombuffer(raw, dtype="<f4", count=size // 4, offset=offset).reshape(out["shape"]).copy()
            return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        offset += size or 0
    raise ServingError(f"the response has no output {output_name!r}")


_NUMPY = {"FP32": "<f4", "FP16": "<f2", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4", "INT16": "<i2", "INT8": "<i1",
          "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "BOOL": "|b1"}


def _decode_outputs(raw: bytes, headers: dict) -> dict[str, np.ndarray]:
    """Every output of a response, by name: binary ones read in order from after the JSON header."""
    lowered = {k.lower(): v for k, v in headers.items()}
    n_head = int(lowered.get(HEADER_LENGTH.lower(), len(raw)))
    resp = json.loads(raw[:n_head])
    offset, result = n_head, {}
    for out in resp["outputs"]:
        dtype = np.dtype(_NUMPY.get(out["datatype"], "<f4"))
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            result[out["name"]] = np.frombuffer(raw, dtype=dtype, count=size // dtype.itemsize,
                                                offset=offset).reshape(out["shape"]).copy()
            offset += size
        else:
            result[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
    return result
