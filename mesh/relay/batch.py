"""recvmmsg/sendmmsg through ctypes: up to 64 datagrams per system call for the relay's hot path.

Python's socket module has no batched calls, and at ~100k packets/s a relay spends most
of its time in one ``recvfrom`` and one ``sendto`` per packet. The arrays below are
built once; the hot path only reads and writes integers through memoryviews over them
(lengths, flags, address bytes, pointers), never creating a ctypes object per packet.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct

BATCH = 64
SLOT = 65536  # bytes per datagram: any UDP datagram fits (4 MiB for the 64 slots)
MSG_WAITFORONE = 0x10000
MSG_TRUNC = 0x20
_SOCKADDR = 16


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint32)]


_ENTRY = ctypes.sizeof(_MMsgHdr)
_NAMELEN = _MsgHdr.namelen.offset
_FLAGS = _MsgHdr.flags.offset
_LEN = _MMsgHdr.len.offset
_IOV = _MsgHdr.iov.offset


def available() -> bool:
    if os.uname().sysname != "Linux" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return hasattr(libc, "recvmmsg") and hasattr(libc, "sendmmsg")
    except OSError:
        return False


def sockaddr(addr: tuple[str, int]) -> ctypes.Array[ctypes.c_char]:
    """A sockaddr_in for ``addr`` (kept alive by the caller; its address goes into the send array)."""
    raw = (struct.pack("=H", socket.AF_INET) + struct.pack("!H", addr[1]) + socket.inet_aton(addr[0])
           + bytes(8))
    return ctypes.create_string_buffer(raw, _SOCKADDR)


def address_key(addr: tuple[str, int]) -> bytes:
    """The 6 bytes (port, IPv4) that identify a source in the receive array's sockaddrs."""
    return struct.pack("!H", addr[1]) + socket.inet_aton(addr[0])


class BatchIO:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._recvmmsg = libc.recvmmsg
        self._sendmmsg = libc.sendmmsg
        self.data = (ctypes.c_char * (SLOT * BATCH))()
        self.names = (ctypes.c_char * (_SOCKADDR * BATCH))()
        self.rx_iov = (_IoVec * BATCH)()
        self.tx_iov = (_IoVec * BATCH)()
        self.rx = (_MMsgHdr * BATCH)()
        self.tx = (_MMsgHdr * BATCH)()
        base = ctypes.addressof(self.data)
        for index in range(BATCH):
            self.rx_iov[index] = _IoVec(base + SLOT * index, SLOT)
            self.tx_iov[index] = _IoVec(base + SLOT * index, 0)
            entry = self.rx[index].hdr
            entry.name = ctypes.addressof(self.names) + _SOCKADDR * index
            entry.namelen = _SOCKADDR
            entry.iov = ctypes.addressof(self.rx_iov) + ctypes.sizeof(_IoVec) * index
            entry.iovlen = 1
            self.tx[index].hdr.namelen = _SOCKADDR
            self.tx[index].hdr.iovlen = 1
        self.tx_iov_addr = [ctypes.addressof(self.tx_iov) + ctypes.sizeof(_IoVec) * i for i in range(BATCH)]
        self.data_view = memoryview(self.data).cast("B")
        self.names_view = memoryview(self.names).cast("B")
        self.rx_u32 = memoryview(self.rx).cast("B").cast("I")
        self.rx_i32 = memoryview(self.rx).cast("B").cast("i")
        self.tx_u64 = memoryview(self.tx).cast("B").cast("Q")
        self.tx_iov_u64 = memoryview(self.tx_iov).cast("B").cast("Q")
        self.stride32 = _ENTRY // 4
        self.stride64 = _ENTRY // 8
        self.len_index = _LEN // 4
        self.flags_index = _FLAGS // 4
        self.namelen_index = _NAMELEN // 4
        self.iov_index = _IOV // 8

    def receive(self) -> int:
        """Block for at least one datagram; return how many arrived (negative on error)."""
        u32, stride, namelen = self.rx_u32, self.stride32, self.namelen_index
        for index in range(BATCH):
            u32[index * stride + namelen] = _SOCKADDR
        return self._recvmmsg(self.fd, self.rx, BATCH, MSG_WAITFORONE, None)

    def send(self, count: int) -> int:
        """Send the first ``count`` prepared datagrams; return how many could not be sent."""
        failed = 0
        start = 0
        entry = ctypes.sizeof(_MMsgHdr)
        base = ctypes.addressof(self.tx)
        while start < count:
            sent = self._sendmmsg(self.fd, ctypes.c_void_p(base + entry * start), count - start, 0)
            if sent <= 0:
                failed += 1  # skip the datagram the kernel refused, send the rest
                start += 1
            else:
                start += sent
        return failed
