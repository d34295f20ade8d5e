"""A stand-in for cuda-python's runtime module (`from cuda.bindings import runtime`), which needs a GPU.

Only names of the real module exist on it (a subset), with its calling convention: every call
returns a tuple (cudaError_t, value...), the value None on error. Checked against cuda-bindings
12.9.4 / 12.9.10 and 13.5.0 from PyPI (the names, docstrings and return tuples of the real
functions): the error codes and cudaMemcpyKind values below; cudaFree, cudaFreeHost,
cudaStreamSynchronize, cudaEventRecord(event, stream), cudaEventSynchronize(event) and
cudaEventDestroy(event) returning (err,); cudaMallocHost(size) -> (err, host pointer as an int);
cudaEventCreate() -> (err, cudaEvent_t); cudaEventElapsedTime(start, end) -> (err, ms as a float),
cudaErrorNotReady (600) while either event is still pending and cudaErrorInvalidResourceHandle for
an event never recorded; cudaStream_t and cudaEvent_t having __int__ and __index__. Names that are
the stand-in's own start with an underscore.

The device has a clock: work queued on a stream runs, in order, at cudaStreamSynchronize or
cudaEventSynchronize, and each piece advances the clock by a fixed, known time (a copy: its bytes
at the bandwidth of its host memory, pinned or pageable; an engine run: `engine_ms`). An event
records the clock when the stream reaches it, so a test knows what cudaEventElapsedTime between
two events must say without timing anything.
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
    | {"cudaErrorInsufficientDriver": 35, "cudaErrorNoDevice": 100, "cudaErrorInvalidResourceHandle": 400}
    | {"cudaErrorNotReady": 600, "cudaErrorIllegalAddress": 700},
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
PINNED_BYTES_PER_MS = 20e6  # the stand-in's copy speeds: 20 GB/s from pinned host memory,
PAGEABLE_BYTES_PER_MS = 5e6  # 5 GB/s from pageable memory (staged through a driver buffer)


class _Handle:
    def __init__(self, init_value: int = 0) -> None:
        self._handle = int(init_value)

    def __int__(self) -> int:
        return self._handle

    __index__ = __int__

    def getPtr(self) -> int:  # noqa: N802 - the real method name
        return self._handle


class cudaStream_t(_Handle):  # noqa: N801 - the real class name
    pass


class cudaEvent_t(_Handle):  # noqa: N801 - the real class name
    pass


class _Event:
    """An event's state: never recorded, recorded and pending on a stream, or done at a clock time."""

    def __init__(self) -> None:
        self.recorded, self.done_ms = False, None


class FakeCudart(types.ModuleType):
    """Device memory is bytearrays keyed by fake pointers; copies move real bytes with ctypes.

    Work queued on a stream (copies, engine runs, event records) happens at cudaStreamSynchronize
    or cudaEventSynchronize, in order. That is stricter than CUDA for pageable host memory, whose
    device-to-host copies finish before cudaMemcpyAsync returns: here a runner that reads its
    output before synchronizing fails. A copy from pinned memory reads the host bytes when it runs
    (as a real DMA does), one from pageable memory when it is queued (staged, as CUDA does).

    Args:
        devices: what cudaGetDeviceCount reports.
        fail: function name -> the cudaError_t that call returns.
        engine_ms: device time of one queued engine run (`_enqueue`).
    """

    def __init__(self, devices: int = 1, fail: dict[str, Any] | None = None, engine_ms: float = 1.5) -> None:
        super().__init__("cuda.bindings.runtime")
        self.cudaError_t, self.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
        self.cudaStream_t, self.cudaEvent_t = cudaStream_t, cudaEvent_t
        self._devices, self._fail, self._engine_ms = devices, fail or {}, engine_ms
        self._memory: dict[int, bytearray] = {}
        self._pinned: dict[int, Any] = {}  # host pointer -> its ctypes buffer
        self._streams: dict[int, list[Callable[[], Any]]] = {0: []}
        self._events: dict[int, _Event] = {}
        self._next, self._created = DEVICE_BASE, 0
        self._clock_ms = 0.0
        self._copies: list[tuple[str, bool]] = []  # ("h2d" | "d2h", from/to pinned memory) of each copy that ran

    def _failed(self, name: str) -> Any:
        return self._fail.get(name) or (None if self._devices else cudaError_t.cudaErrorNoDevice)

    def cudaGetDeviceCount(self) -> tuple:  # noqa: N802 - the real API's names, here and below
        err = self._fail.get("cudaGetDeviceCount")
        return (err, None) if err else (OK, self._devices)

    def cudaMalloc(self, size: int) -> tuple:  # noqa: N802
        err = self._failed("cudaMalloc")
        if err:
            return (err, None)
        ptr, self._next = self._next, self._next + (int(size) + 511) // 256 * 256
        self._memory[ptr] = bytearray(int(size))
        return (OK, ptr)

    def cudaFree(self, devPtr: Any) -> tuple:  # noqa: N802, N803
        if int(devPtr) and self._memory.pop(int(devPtr), None) is None:
            return (cudaError_t.cudaErrorInvalidDevicePointer,)
        return (OK,)

    def cudaMallocHost(self, size: int) -> tuple:  # noqa: N802
        err = self._failed("cudaMallocHost")
        if err:
            return (err, None)
        buf = (ctypes.c_byte * max(int(size), 1))()
        self._pinned[ctypes.addressof(buf)] = buf
        return (OK, ctypes.addressof(buf))

    def cudaFreeHost(self, ptr: Any) -> tuple:  # noqa: N802
        if int(ptr) and self._pinned.pop(int(ptr), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
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
        return (self._drain(queue, until=None) or OK,)

    def cudaEventCreate(self) -> tuple:  # noqa: N802
        err = self._failed("cudaEventCreate")
        if err:
            return (err, None)
        self._created += 1
        self._events[0xE000 + self._created] = _Event()
        return (OK, cudaEvent_t(0xE000 + self._created))

    def cudaEventDestroy(self, event: Any) -> tuple:  # noqa: N802
        return (OK,) if self._events.pop(int(event), None) is not None else (cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaEventRecord(self, event: Any, stream: Any) -> tuple:  # noqa: N802
        state, queue = self._events.get(int(event)), self._streams.get(int(stream))
        if state is None or queue is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        state.recorded, state.done_ms = True, None  # re-recording overwrites the captured state

        def reached() -> None:
            state.done_ms = self._clock_ms

        reached.event = state  # type: ignore[attr-defined]  # cudaEventSynchronize runs the stream up to here
        queue.append(reached)
        return (OK,)

    def cudaEventSynchronize(self, event: Any) -> tuple:  # noqa: N802
        state = self._events.get(int(event))
        if state is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        for queue in self._streams.values():
            if any(getattr(op, "event", None) is state for op in queue):
                return (self._drain(queue, until=state) or OK,)
        return (OK,)  # never recorded, or already reached: nothing to wait for

    def cudaEventElapsedTime(self, start: Any, end: Any) -> tuple:  # noqa: N802
        states = [self._events.get(int(start)), self._events.get(int(end))]
        if any(s is None or not s.recorded for s in states):
            return (cudaError_t.cudaErrorInvalidResourceHandle, None)
        if any(s.done_ms is None for s in states):  # type: ignore[union-attr]
            return (cudaError_t.cudaErrorNotReady, None)
        return (OK, float(states[1].done_ms - states[0].done_ms))  # type: ignore[union-attr, operator]

    def cudaMemcpyAsync(self, dst: Any, src: Any, count: int, kind: Any, stream: Any) -> tuple:  # noqa: N802
        queue = self._streams.get(int(stream))
        if queue is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice and not _on_device(src):
            region, pinned = self._device(dst, count), self._is_pinned(src, count)
            if region is None:
                return (cudaError_t.cudaErrorInvalidValue,)
            staged = None if pinned else ctypes.string_at(int(src), count)  # pageable memory is staged before the call returns

            def h2d() -> None:
                region[:] = ctypes.string_at(int(src), count) if staged is None else staged
                self._copied("h2d", pinned, count)

            queue.append(h2d)
            return (OK,)
        if kind == cudaMemcpyKind.cudaMemcpyDeviceToHost and not _on_device(dst):
            region, pinned = self._device(src, count), self._is_pinned(dst, count)
            if region is None:
                return (cudaError_t.cudaErrorInvalidValue,)

            def d2h() -> None:
                _to_host(int(dst), bytes(region))
                self._copied("d2h", pinned, count)

            queue.append(d2h)
            return (OK,)
        return (cudaError_t.cudaErrorInvalidValue,)  # a host pointer as device memory or the other way round

    def _copied(self, direction: str, pinned: bool, count: int) -> None:
        self._copies.append((direction, pinned))
        self._clock_ms += count / (PINNED_BYTES_PER_MS if pinned else PAGEABLE_BYTES_PER_MS)

    def _drain(self, queue: list[Callable[[], Any]], until: _Event | None) -> Any:
        """Run queued work in order (up to the record of `until`); the first error stops it."""
        while queue:
            op = queue.pop(0)
            err = op()
            if err:
                queue.clear()
                return err
            if until is not None and getattr(op, "event", None) is until:
                return None
        return None

    def _device(self, ptr: Any, nbytes: int) -> memoryview | None:
        """The device bytes [ptr, ptr + nbytes) inside one allocation, or None."""
        for base, buf in self._memory.items():
            if base <= int(ptr) and int(ptr) + nbytes <= base + len(buf):
                return memoryview(buf)[int(ptr) - base : int(ptr) - base + nbytes]
        return None

    def _is_pinned(self, ptr: Any, nbytes: int) -> bool:
        """Whether host bytes [ptr, ptr + nbytes) lie inside one cudaMallocHost allocation."""
        return any(base <= int(ptr) and int(ptr) + nbytes <= base + ctypes.sizeof(buf) for base, buf in self._pinned.items())

    def _enqueue(self, stream: Any, op: Callable[[], Any]) -> bool:
        """Queue work (an engine run, `engine_ms` of device time) on a stream; False for a stream that does not exist."""
        if int(stream) not in self._streams:
            return False

        def run() -> Any:
            self._clock_ms += self._engine_ms
            return op()

        self._streams[int(stream)].append(run)
        return True

    def _in_use(self) -> dict[str, int]:
        """Device allocations, pinned host allocations, streams and events not yet freed or destroyed."""
        return {"device": len(self._memory), "pinned": len(self._pinned), "streams": len(self._streams) - 1, "events": len(self._events)}


def _on_device(ptr: Any) -> bool:
    return int(ptr) >= DEVICE_BASE


def _to_host(ptr: int, data: bytes) -> None:
    ctypes.memmove(ptr, data, len(data))
