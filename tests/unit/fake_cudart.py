"""A stand-in for cuda-python's runtime module (`from cuda.bindings import runtime`), which needs a GPU.

Only names of the real module exist on it (a subset), with its calling convention: every call
returns a tuple (cudaError_t, value...), the value None on error. Checked against cuda-bindings
12.9.10 and 13.5.0 from PyPI: the error codes and cudaMemcpyKind values below, cudaFree and
cudaStreamSynchronize returning (err,), cudaStream_t having __int__ and __index__. Names that are
the stand-in's own start with an underscore.
"""

from __future__ import annotations

import ctypes
import enum
import types
from collections.abc import Callable
from typing import Any

cudaError_t = enum.IntEnum(  # noqa: N816 - the real names
    "cudaError_t",
    {"cudaSuccess": 0, "cudaErrorInvalidValue": 1, "cudaErrorMemoryAllocation": 2, "cudaErrorInvalidDevicePointer": 17}
    | {"cudaErrorInsufficientDriver": 35, "cudaErrorNoDevice": 100, "cudaErrorInvalidResourceHandle": 400, "cudaErrorIllegalAddress": 700},
)
cudaMemcpyKind = enum.IntEnum(  # noqa: N816
    "cudaMemcpyKind",
    {
        "cudaMemcpyHostToHost": 0,
        "cudaMemcpyHostToDevice": 1,
        "cudaMemcpyDeviceToHost": 2,
        "cudaMemcpyDeviceToDevice": 3,
        "cudaMemcpyDefault": 4,
    },
)
OK = cudaError_t.cudaSuccess
DEVICE_BASE = 0xFFFF_9000_0000_0000  # kernel half of the address space: never a host pointer, so a mix-up is caught


class cudaStream_t:  # noqa: N801 - the real class name
    def __init__(self, init_value: int = 0) -> None:
        self._handle = int(init_value)

    def __int__(self) -> int:
        return self._handle

    __index__ = __int__

    def getPtr(self) -> int:  # noqa: N802 - the real method name
        return self._handle


class FakeCudart(types.ModuleType):
    """Device memory is bytearrays keyed by fake pointers; copies move real bytes with ctypes.

    Work queued on a stream (copies, engine runs) happens at cudaStreamSynchronize, in order. That
    is stricter than CUDA for pageable host memory, whose device-to-host copies finish before
    cudaMemcpyAsync returns: here a runner that reads its output before synchronizing fails.

    Args:
        devices: what cudaGetDeviceCount reports.
        fail: function name -> the cudaError_t that call returns.
    """

    def __init__(self, devices: int = 1, fail: dict[str, Any] | None = None) -> None:
        super().__init__("cuda.bindings.runtime")
        self.cudaError_t, self.cudaMemcpyKind, self.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t
        self._devices, self._fail = devices, fail or {}
        self._memory: dict[int, bytearray] = {}
        self._streams: dict[int, list[Callable[[], Any]]] = {0: []}
        self._next, self._created = DEVICE_BASE, 0

    def cudaGetDeviceCount(self) -> tuple:  # noqa: N802 - the real API's names, here and below
        err = self._fail.get("cudaGetDeviceCount")
        return (err, None) if err else (OK, self._devices)

    def cudaMalloc(self, size: int) -> tuple:  # noqa: N802
        err = self._fail.get("cudaMalloc") or (None if self._devices else cudaError_t.cudaErrorNoDevice)
        if err:
            return (err, None)
        ptr, self._next = self._next, self._next + (int(size) + 511) // 256 * 256
        self._memory[ptr] = bytearray(int(size))
        return (OK, ptr)

    def cudaFree(self, devPtr: Any) -> tuple:  # noqa: N802, N803
        if int(devPtr) and self._memory.pop(int(devPtr), None) is None:
            return (cudaError_t.cudaErrorInvalidDevicePointer,)
        return (OK,)

    def cudaStreamCreate(self) -> tuple:  # noqa: N802
        self._created += 1
        self._streams[0x5000 + self._created] = []
        return (OK, cudaStream_t(0x5000 + self._created))

    def cudaStreamDestroy(self, stream: Any) -> tuple:  # noqa: N802
        return (OK,) if int(stream) and self._streams.pop(int(stream), None) is not None else (cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaStreamSynchronize(self, stream: Any) -> tuple:  # noqa: N802
        queue = self._streams.get(int(stream))
        if queue is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        ops, queue[:] = list(queue), []
        for op in ops:
            err = op()
            if err:
                return (err,)
        return (OK,)

    def cudaMemcpyAsync(self, dst: Any, src: Any, count: int, kind: Any, stream: Any) -> tuple:  # noqa: N802
        queue = self._streams.get(int(stream))
        if queue is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice and not _on_device(src):
            region = self._device(dst, count)
            if region is None:
                return (cudaError_t.cudaErrorInvalidValue,)
            data = ctypes.string_at(int(src), count)  # pageable host memory is staged before the call returns
            queue.append(lambda: region.__setitem__(slice(0, count), data))
            return (OK,)
        if kind == cudaMemcpyKind.cudaMemcpyDeviceToHost and not _on_device(dst):
            region = self._device(src, count)
            if region is None:
                return (cudaError_t.cudaErrorInvalidValue,)
            queue.append(lambda: _to_host(int(dst), bytes(region)))
            return (OK,)
        return (cudaError_t.cudaErrorInvalidValue,)  # a host pointer as device memory or the other way round

    def _device(self, ptr: Any, nbytes: int) -> memoryview | None:
        """The device bytes [ptr, ptr + nbytes) inside one allocation, or None."""
        for base, buf in self._memory.items():
            if base <= int(ptr) and int(ptr) + nbytes <= base + len(buf):
                return memoryview(buf)[int(ptr) - base : int(ptr) - base + nbytes]
        return None

    def _enqueue(self, stream: Any, op: Callable[[], Any]) -> bool:
        """Queue work (an engine run) on a stream; False for a stream that does not exist."""
        if int(stream) not in self._streams:
            return False
        self._streams[int(stream)].append(op)
        return True

    def _in_use(self) -> tuple[int, int]:
        """(allocations, streams) not yet freed or destroyed."""
        return len(self._memory), len(self._streams) - 1


def _on_device(ptr: Any) -> bool:
    return int(ptr) >= DEVICE_BASE


def _to_host(ptr: int, data: bytes) -> None:
    ctypes.memmove(ptr, data, len(data))
