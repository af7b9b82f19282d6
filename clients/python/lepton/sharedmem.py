"""Tensors in shared memory between Lepton's processes on one host (ARCHITECTURE.md §7).

A sender writes its arrays into one Linux memfd (`SharedArrays`), seals it (no write, shrink or
grow: what a receiver validated cannot change under it) and sends, instead of the bytes, where they
lie (`SharedBuffer`: its host, pid, descriptor, the memfd's random name and an offset). A receiver on
the same host opens `/proc/PID/fd/FD`, checks that it opened a sealed memfd of that name, and maps
the bytes read-only (`open_shared`): one copy in all (the sender's write), none after it.

Why a memfd and not a file in /dev/shm: it has no name in any file system, so nothing can leak. Its
memory goes when the last descriptor and mapping of it does, however the processes holding them
end (a SIGKILL included). Where it cannot work (another host, another pid namespace, another user,
no /proc), the receiver says so and the bytes travel as chunks instead.

Only this process's own registered memfds are handed on (`registry.locate`): a coordinator passes an
agent a view of the memfd it opened from its client, never a path it was merely told.

Results go the other way (`ResultMemory`, `ResultFile`): the client offers an empty memfd of its own,
the coordinator sizes it, the agents on its host write their row blocks into it with pwrite (never a
writable mapping, so that sealing it later is possible and proves nobody writes any more), each
partition at most once (`ResultFile.claim_write`), and the coordinator seals it before it tells the
client where the result lies. Servers only pread and pwrite it: a client that shrinks its own memfd
meanwhile cannot make them fault.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import secrets
import stat
import struct
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lepton.errors import FailedPrecondition, ResourceExhausted

NAME_PREFIX = "lepton-"
NAME = re.compile(r"^lepton-[0-9a-f]{32}$")
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
ALIGN = mmap.PAGESIZE  # each tensor starts on a page, so a receiver maps just its own range
WRITE_BYTES = 64 << 20  # pwrite in pieces of this size, spread over WRITERS threads
WRITERS = min(4, os.cpu_count() or 1)
# How a receiver that cannot use shared memory says so (the sender then sends the bytes).
UNAVAILABLE = "shared memory unavailable"

_host_id: str | None = None


def host_id() -> str:
    """This host and pid namespace: the kernel's boot id and the pid namespace's inode ("" where
    there is no such thing: then shared memory is never offered). Two processes with the same id can
    open each other's descriptors through /proc, permissions allowing."""
    global _host_id
    if _host_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
            _host_id = f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}" if hasattr(os, "memfd_create") else ""
        except OSError:
            _host_id = ""
    return _host_id


def enabled() -> bool:
    """Shared memory may be used by this process (LEPTON_SHARED_MEMORY=0 turns it off)."""
    return bool(host_id()) and os.environ.get("LEPTON_SHARED_MEMORY", "1") not in ("0", "false", "no")


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class SharedArrays:
    """`arrays` (little-endian, C-contiguous) copied into one sealed memfd of this process; `buffer(i)`
    says where array i lies. close() once the receiver has opened it (or it is no longer needed)."""

    def __init__(self, arrays: list[np.ndarray]):
        self.name = NAME_PREFIX + secrets.token_hex(16)
        self.offsets, size = [], 0
        for a in arrays:
            self.offsets.append(size)
            size = _aligned(size + a.nbytes)
        self.fd = os.memfd_create(self.name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, max(size, 1))
            jobs = []  # (piece, offset in the memfd)
            for a, offset in zip(arrays, self.offsets):
                data = memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b"")
                jobs += [(data[start:start + WRITE_BYTES], offset + start) for start in range(0, len(data), WRITE_BYTES)]
            if len(jobs) > 1 and WRITERS > 1:  # pwrite lets go of the GIL: the copy runs on several cores
                with ThreadPoolExecutor(WRITERS, thread_name_prefix="lepton-shm") as pool:
                    list(pool.map(lambda job: self._write(*job), jobs))
            else:
                for job in jobs:
                    self._write(*job)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, SEALS)
        except BaseException:
            os.close(self.fd)
            raise
        self.pid = os.getpid()

    def _write(self, piece: memoryview, at: int) -> None:
        done = 0
        while done < len(piece):
            done += os.pwrite(self.fd, piece[done:], at + done)

    def buffer(self, i: int) -> dict:
        """The SharedBuffer fields of array i."""
        return {"host_id": host_id(), "pid": self.pid, "fd": self.fd, "name": self.name, "offset": self.offsets[i]}

    def close(self) -> None:
        fd, self.fd = self.fd, -1  # (at most once, whichever thread gets here first)
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "SharedArrays":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_memfd(host: str, pid: int, fd: int, name: str, flags: int, what: str = "buffer") -> int:
    """A descriptor of this process's own for the Lepton memfd `name` that process `pid` on this host
    holds as `fd`, opened with `flags`; checked on the descriptor we hold, not on the path (which
    could change in between). Raises FailedPrecondition (the caller falls back to streaming)."""
    if host != host_id() or not host:
        raise FailedPrecondition(f"{UNAVAILABLE}: the {what} is on another host (or pid namespace)")
    if not NAME.match(name):
        raise FailedPrecondition(f"{UNAVAILABLE}: {name!r} is not the name of a Lepton buffer")
    path = f"/proc/{int(pid)}/fd/{int(fd)}"
    try:
        own = os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        mode = " for writing" if flags & (os.O_RDWR | os.O_WRONLY) else ""
        raise FailedPrecondition(f"{UNAVAILABLE}: cannot open {path}{mode}: {exc.strerror}") from None
    try:
        if os.readlink(f"/proc/self/fd/{own}") != f"/memfd:{name} (deleted)" or not stat.S_ISREG(os.fstat(own).st_mode):
            raise FailedPrecondition(f"{UNAVAILABLE}: {path} is not the memfd {name!r}")
    except BaseException:
        os.close(own)
        raise
    return own


class SharedFile:
    """A Lepton memfd of a process on this host, opened by this one: its descriptor (so that this
    process can hand it on) and a read-only mapping of all of it."""

    def __init__(self, host: str, pid: int, fd: int, name: str):
        own = open_memfd(host, pid, fd, name, os.O_RDONLY)
        try:
            if fcntl.fcntl(own, fcntl.F_GET_SEALS) & SEALS != SEALS:
                raise FailedPrecondition(f"{UNAVAILABLE}: the memfd {name!r} is not sealed against writes")
            self.size = os.fstat(own).st_size
            self.mmap = mmap.mmap(own, self.size, prot=mmap.PROT_READ)
            self.map = np.frombuffer(self.mmap, dtype=np.uint8)
        except BaseException:
            os.close(own)
            raise
        self.fd, self.name, self.pid = own, name, os.getpid()
        self.base = self.map.ctypes.data

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        """Bytes [offset, offset + nbytes) as a read-only uint8 array (it keeps the mapping alive)."""
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise FailedPrecondition(f"{UNAVAILABLE}: bytes [{offset}, {offset + nbytes}) are outside the "
                                     f"{self.size}-byte memfd {self.name!r}")
        return self.map[offset:offset + nbytes]

    def close(self) -> None:
        """Stop handing it on; views already taken stay valid (the mapping lives as long as they do,
        and the memory as long as any process maps or holds it)."""
        registry.discard(self)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.map = self.mmap = None  # (the mmap object holds a descriptor of its own until no view needs it)


MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14; Python 3.11 lacks the name
_mapped: "weakref.WeakValueDictionary[str, mmap.mmap]" = weakref.WeakValueDictionary()
_mapped_lock = threading.Lock()


def _mapping(buffer) -> mmap.mmap:
    """This process's one read-only mapping of the memfd `buffer` names, opened and checked on first
    use and shared by every view of it (a mapping holds a descriptor: one per view would run out)."""
    with _mapped_lock:
        mapped = _mapped.get(buffer.name)
        if mapped is None:
            shared = SharedFile(buffer.host_id, buffer.pid, buffer.fd, buffer.name)
            mapped = shared.mmap
            shared.close()
            _mapped[buffer.name] = mapped
        return mapped


def open_views(buffer, pieces: list[tuple[int, int]]) -> list[np.ndarray]:
    """Read-only uint8 views of `pieces` ((offset, nbytes) ranges) of the memfd `buffer` (a SharedBuffer
    message) names: the views hold the memory, nothing else does. Each range's page tables are filled
    up front (MADV_POPULATE_READ: in one go, faster than a fault per page when a kernel reads it)."""
    mapped = _mapping(buffer)
    views = []
    for offset, nbytes in pieces:
        if offset < 0 or nbytes < 0 or offset + nbytes > len(mapped):
            raise FailedPrecondition(f"{UNAVAILABLE}: bytes [{offset}, {offset + nbytes}) are outside the "
                                     f"{len(mapped)}-byte memfd {buffer.name!r}")
        if nbytes:
            start = offset - offset % ALIGN
            try:
                mapped.madvise(MADV_POPULATE_READ, start, offset + nbytes - start)
            except OSError:
                pass  # an older kernel: pages fault in as they are read
        views.append(np.frombuffer(mapped, dtype=np.uint8, count=nbytes, offset=offset))
    return views


class ReceiveBuffer:
    """A memfd of this process's own that bytes arriving in order fill (a streamed put's array), so
    that agents on this host map their partitions from it instead of receiving them as bytes again.

    Filled with pwrite (which lets go of the GIL, and needs no writable mapping: `map` is read-only)
    and sealed like a SharedArrays (no write, shrink or grow) once its last byte is written: only
    then does `registry.locate` hand it on, so a receiver validates what cannot change any more.
    Registered like a SharedFile; close() once it is handed on."""

    def __init__(self, nbytes: int):
        self.name = NAME_PREFIX + secrets.token_hex(16)
        self.size, self.filled, self.sealed = nbytes, 0, False
        fd = os.memfd_create(self.name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, max(nbytes, 1))
            # Mapped through a read-only descriptor: a mapping that could be made writable (one of fd)
            # would keep F_SEAL_WRITE from being added (EBUSY). Shared, it sees what pwrite writes.
            reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                self.mmap = mmap.mmap(reader, max(nbytes, 1), prot=mmap.PROT_READ)
            finally:
                os.close(reader)
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.pid = fd, os.getpid()
        self.map = np.frombuffer(self.mmap, dtype=np.uint8, count=nbytes)
        self.base = self.map.ctypes.data

    def write(self, data, at: int) -> None:
        """Bytes [at, at + len(data)); the caller writes each byte once (TensorAssembler.add checks the
        order), so the buffer is complete, and sealed, when `size` bytes were written."""
        piece = memoryview(data)
        done = 0
        try:
            while done < len(piece):
                done += os.pwrite(self.fd, piece[done:], at + done)
        except OSError as exc:  # (ENOMEM, ENOSPC: the host's memory)
            raise ResourceExhausted(f"this host has no memory left for the rows of a {self.size}-byte put "
                                    f"({exc.strerror}); put less at once, or free memory") from None
        self.filled += len(piece)
        if self.filled == self.size:
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, SEALS)
            self.sealed = True

    def close(self) -> None:
        """Stop handing it on; `map` stays valid as long as views of it live (the memory as long as
        any process maps it)."""
        registry.discard(self)
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
        self.map = self.mmap = None


def read_copy(buffer, nbytes: int) -> np.ndarray:
    """A private copy (uint8) of bytes [buffer.offset, buffer.offset + nbytes) of the sealed memfd
    `buffer` (a SharedBuffer message) names, read with preadv: no mapping, so no page tables to fill
    and tear down (256 MiB: 53 ms here, against 66 ms to map, populate and copy it)."""
    shared = SharedFile(buffer.host_id, buffer.pid, buffer.fd, buffer.name)
    try:
        if buffer.offset < 0 or nbytes < 0 or buffer.offset + nbytes > shared.size:
            raise FailedPrecondition(f"{UNAVAILABLE}: bytes [{buffer.offset}, {buffer.offset + nbytes}) are outside "
                                     f"the {shared.size}-byte memfd {buffer.name!r}")
        out = np.empty(nbytes, dtype=np.uint8)
        view, done = memoryview(out), 0
        while done < nbytes:
            n = os.preadv(shared.fd, [view[done:]], buffer.offset + done)
            if n <= 0:  # (sealed against shrinking: it cannot happen, but never loop on it)
                raise FailedPrecondition(f"{UNAVAILABLE}: the memfd {buffer.name!r} ended early")
            done += n
        return out
    finally:
        shared.close()


class Registry:
    """The memfds this process opened and may hand on to its own receivers: an array that is a view
    of one goes as a SharedBuffer (`locate`) instead of as bytes."""

    def __init__(self):
        self._files: dict[int, SharedFile] = {}
        self._lock = threading.Lock()

    def add(self, shared: SharedFile) -> SharedFile:
        with self._lock:
            self._files[id(shared)] = shared
        return shared

    def discard(self, shared: SharedFile) -> None:
        with self._lock:
            self._files.pop(id(shared), None)

    def locate(self, array: np.ndarray, filling: bool = False) -> dict | None:
        """The SharedBuffer fields of `array` if it is a contiguous view of a registered memfd (and,
        for a ReceiveBuffer, one sealed: complete). `filling`: a ReceiveBuffer still being filled
        counts too (for a caller that asks whether the array will go by reference, not sending it)."""
        if not self._files or not array.flags.c_contiguous or array.nbytes == 0:
            return None
        start = array.__array_interface__["data"][0]
        with self._lock:
            for shared in self._files.values():
                if (shared.fd >= 0 and shared.base <= start and start + array.nbytes <= shared.base + shared.size
                        and (filling or getattr(shared, "sealed", True))):
                    return {"host_id": host_id(), "pid": shared.pid, "fd": shared.fd, "name": shared.name,
                            "offset": start - shared.base}
        return None


registry = Registry()


# -- results written in place -----------------------------------------------------------------------

WRITE_SEALS = fcntl.F_SEAL_WRITE | getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)
CLAIMED = b"\x01"
# struct flock on 64-bit Linux: l_type, l_whence, (pad), l_start, l_len, l_pid, (pad).
_FLOCK = "hhxxxxqqixxxx"
WRITTEN: dict = {}  # the partial of a partition whose rows were written into the result memfd (compare by `is`)


def aligned(n: int) -> int:
    return _aligned(n)


def _pwrite_all(fd: int, data: memoryview, at: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], at + done)


class ResultMemory:
    """The client's offer of shared memory for a job's result: an empty memfd, not sealed (the
    coordinator sizes it and the agents write it; it seals it when the result is whole). `array`
    maps the result it says lies there; `close` once the job ended (a mapping stays valid)."""

    def __init__(self):
        self.name = NAME_PREFIX + secrets.token_hex(16)
        self.fd = os.memfd_create(self.name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self.pid = os.getpid()

    def buffer(self) -> dict:
        return {"host_id": host_id(), "pid": self.pid, "fd": self.fd, "name": self.name, "offset": 0}

    def array(self, buffer, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The result tensor the coordinator says lies at `buffer` (a SharedBuffer naming this memfd),
        mapped copy-on-write: no copy is made, and writing to the array changes only this process's
        pages. Only once the memfd is sealed against writes, so nothing changes it after."""
        if buffer.name != self.name or buffer.fd != self.fd or buffer.pid != self.pid or self.fd < 0:
            raise FailedPrecondition(f"the result was placed in shared memory {buffer.name!r} that this job did not offer")
        seals = fcntl.fcntl(self.fd, fcntl.F_GET_SEALS)
        if seals & SEALS != SEALS:
            raise FailedPrecondition(f"the result memfd {self.name!r} is not sealed against writes")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        size = os.fstat(self.fd).st_size
        if buffer.offset < 0 or buffer.offset + nbytes > size:
            raise FailedPrecondition(f"the result [{buffer.offset}, {buffer.offset + nbytes}) lies outside the "
                                     f"{size}-byte memfd {self.name!r}")
        if nbytes == 0:
            return np.empty(shape, dtype)
        mapped = mmap.mmap(self.fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        try:  # fill the page tables in one go (as open_views does): the caller reads it next
            start = buffer.offset - buffer.offset % ALIGN
            mapped.madvise(MADV_POPULATE_READ, start, buffer.offset + nbytes - start)
        except OSError:
            pass
        return np.frombuffer(mapped, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize,
                             offset=buffer.offset).reshape(shape)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class ResultFile:
    """A result memfd opened for writing by a server on its host: the coordinator opens its client's
    (`fresh`: no seal, nothing written yet) and sizes it; an agent opens the coordinator's descriptor
    of it. Checked like SharedFile, except that it must be open to writes."""

    def __init__(self, host: str, pid: int, fd: int, name: str, fresh: bool = False):
        own = open_memfd(host, pid, fd, name, os.O_RDWR, what="result buffer")
        try:
            seals = fcntl.fcntl(own, fcntl.F_GET_SEALS)
            if seals & WRITE_SEALS or (fresh and (seals or os.fstat(own).st_size)):
                raise FailedPrecondition(f"{UNAVAILABLE}: the memfd {name!r} is sealed or not empty")
        except BaseException:
            os.close(own)
            raise
        self.fd, self.name = own, name
        self._lock = threading.Lock()  # close() against writes on other threads

    def resize(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def _lock_claim(self, at: int, kind: int) -> bool:
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, kind, os.SEEK_SET, at, 1, 0))
            return True
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise

    def claim_write(self, claim_at: int, at: int, data: np.ndarray) -> bool | None:
        """Write `data`'s bytes at `at` unless the claim byte at `claim_at` says another writer did:
        True if written now, False if it was written before (by anyone: the bytes there are whole),
        None if another writer is at it right now (or stopped half-way: then it is not written).

        The claim byte is set only after the rows are in, under an open-file-description lock that
        the kernel drops when its holder dies: a writer killed half-way leaves the byte 0 and the
        partition to the next one, and a late speculative copy finds it 1 and writes nothing."""
        data = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
        with self._lock:
            if self.fd < 0:
                return False  # the job ended: nothing to write into any more
            if not self._lock_claim(claim_at, fcntl.F_WRLCK):
                return None
            try:
                if os.pread(self.fd, 1, claim_at) == CLAIMED:
                    return False
                _pwrite_all(self.fd, data, at)
                os.pwrite(self.fd, CLAIMED, claim_at)
                return True
            finally:
                self._lock_claim(claim_at, fcntl.F_UNLCK)

    def read(self, at: int, nbytes: int) -> bytes:
        data = os.pread(self.fd, nbytes, at)
        if len(data) != nbytes:
            raise FailedPrecondition(f"the result memfd {self.name!r} shrank under the job")
        return data

    def read_into(self, out: np.ndarray, at: int) -> None:
        view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], at + done)
            if n <= 0:
                raise FailedPrecondition(f"the result memfd {self.name!r} shrank under the job")
            done += n

    def seal(self) -> bool:
        """Seal it against writes, shrinking and growing for good; False if a writable mapping of it
        exists somewhere (then it cannot be sealed, and the result must go another way)."""
        try:
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, SEALS)
            return True
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return False
            raise

    def close(self) -> None:
        with self._lock:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
