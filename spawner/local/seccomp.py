"""A seccomp filter that keeps instances from making namespaces, as Docker's default does.

Unprivileged user namespaces are enabled on hosts like ours: `unshare -Urm` would copy every
mount of the host, other users' homes and volumes included, into a namespace the hub cannot
unmount, keeping their filesystems alive after they stop. The filter refuses `unshare` and
`clone` with any namespace flag (EPERM) and `clone3`, whose flags sit in memory the filter
cannot read (ENOSYS, so libc falls back to `clone`). Calls through another ABI (32-bit,
x32) are refused outright. Every child of the instance inherits it.

`program` is the pure builder of the classic-BPF instructions; `loader` prepares their install.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import NamedTuple


class Abi(NamedTuple):
    """What the filter needs of one architecture: its audit id and syscall numbers."""

    audit_arch: int
    unshare: int
    clone: int
    clone3: int
    foreign_bit: int = 0  # syscall numbers with this bit belong to another ABI (x32)


ABIS = {
    "x86_64": Abi(0xC000003E, unshare=272, clone=56, clone3=435, foreign_bit=0x40000000),
    "aarch64": Abi(0xC00000B7, unshare=97, clone=220, clone3=435),
}

# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000
NAMESPACE_FLAGS |= 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6] (little-endian)
NR, ARCH, FIRST_ARG_LOW = 0, 4, 16

# classic BPF opcodes
LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ, JSET = 0x15, 0x45  # BPF_JMP | BPF_JEQ / BPF_JSET, BPF_K
RET = 0x06  # BPF_RET | BPF_K

ALLOW = 0x7FFF0000
ERRNO = 0x00050000


class Instruction(NamedTuple):
    code: int
    jt: int
    jf: int
    k: int


def program(machine: str) -> list[Instruction]:
    """The filter for processes of this machine's architecture (`platform.machine()`)."""
    abi = ABIS.get(machine)
    if abi is None:
        raise OSError(f"no namespace filter for the architecture {machine!r}")
    eperm, enosys = ERRNO | errno.EPERM, ERRNO | errno.ENOSYS
    tail = [
        Instruction(RET, 0, 0, ALLOW),  # T+0
        Instruction(LD_W_ABS, 0, 0, FIRST_ARG_LOW),  # T+1: unshare / clone flags
        Instruction(JSET, 1, 0, NAMESPACE_FLAGS),  # T+2
        Instruction(RET, 0, 0, ALLOW),  # T+3
        Instruction(RET, 0, 0, eperm),  # T+4
        Instruction(RET, 0, 0, enosys),  # T+5: clone3 and other ABIs
    ]
    checks = [(JEQ, abi.clone3, 5), (JEQ, abi.unshare, 1), (JEQ, abi.clone, 1)]  # to T+n
    if abi.foreign_bit:
        checks.insert(0, (JSET, abi.foreign_bit, 5))
    head = [
        Instruction(LD_W_ABS, 0, 0, ARCH),
        Instruction(JEQ, 1, 0, abi.audit_arch),
        Instruction(RET, 0, 0, enosys),
        Instruction(LD_W_ABS, 0, 0, NR),
    ]
    for i, (code, k, target) in enumerate(checks):
        to_tail = len(checks) - i - 1  # jumps count from the next instruction
        head.append(Instruction(code, to_tail + target, 0, k))
    return head + tail


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def loader(machine: str):
    """A function that installs the filter in the calling process (a preexec). Everything is
    built here, before the fork; the returned function only calls prctl. As root it must run
    before dropping to the account: without CAP_SYS_ADMIN the kernel wants no_new_privs,
    which it then sets (that also turns off setuid programs)."""
    instructions = program(machine)
    filters = (SockFilter * len(instructions))(*(SockFilter(*i) for i in instructions))
    fprog = SockFprog(len(instructions), filters)
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]

    def call(option: int, arg: int, pointer=None) -> None:
        if prctl(option, arg, pointer, 0, 0) != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"seccomp: {os.strerror(number)}")

    def install() -> None:
        if os.geteuid() != 0:
            call(PR_SET_NO_NEW_PRIVS, 1)
        call(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))

    return install
