"""The namespace filter as data: a small classic-BPF evaluator runs it on every case."""

import errno
import struct

import pytest

from atelier.spawner.local import seccomp
from atelier.spawner.local.seccomp import ABIS, ALLOW, ERRNO

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWTIME = 0x20000, 0x10000000, 0x40000000, 0x80
SIGCHLD, CLONE_VM, CLONE_THREAD = 17, 0x100, 0x10000
THREAD = 0x3D0F00  # glibc's pthread_create: VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|*TID
EPERM, ENOSYS = ERRNO | errno.EPERM, ERRNO | errno.ENOSYS


def run(program, nr: int, arch: int, first_arg: int = 0) -> int:
    """What the kernel would do with this call: the program's return value."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, first_arg, 0, 0, 0, 0, 0)
    accumulator, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == seccomp.LD_W_ABS:
            (accumulator,) = struct.unpack_from("<I", data, k)
        elif code == seccomp.RET:
            return k
        else:
            taken = accumulator == k if code == seccomp.JEQ else bool(accumulator & k)
            assert code in (seccomp.JEQ, seccomp.JSET), code
            pc += jt if taken else jf
        assert 0 <= pc < len(program), "ran off the program"


@pytest.mark.parametrize("machine", sorted(ABIS))
def test_namespaces_are_refused_and_everything_else_is_allowed(machine):
    abi, program = ABIS[machine], seccomp.program(machine)
    assert all(0 <= jt < 256 and 0 <= jf < 256 for _, jt, jf, _ in program)
    for flags in (CLONE_NEWUSER, CLONE_NEWUSER | SIGCHLD, CLONE_NEWNS, CLONE_NEWNET, 0x7E020000):
        assert run(program, abi.unshare, abi.audit_arch, flags) == EPERM, hex(flags)
        assert run(program, abi.clone, abi.audit_arch, flags) == EPERM, hex(flags)
        assert run(program, abi.clone, abi.audit_arch, flags | 0xFFFF << 32) == EPERM
    assert run(program, abi.unshare, abi.audit_arch, CLONE_NEWTIME) == EPERM
    assert run(program, abi.clone3, abi.audit_arch) == ENOSYS  # libc falls back to clone
    # fork, threads, vfork/posix_spawn and unsharing what is no namespace
    for flags in (SIGCHLD, THREAD, CLONE_VM | 0x4000 | SIGCHLD, CLONE_THREAD, 0x400, 0):
        assert run(program, abi.clone, abi.audit_arch, flags) == ALLOW, hex(flags)
        assert run(program, abi.unshare, abi.audit_arch, flags & ~0xFF) == ALLOW, hex(flags)
    special = {abi.unshare, abi.clone, abi.clone3}
    for nr in set(range(512)) - special:
        assert run(program, nr, abi.audit_arch, CLONE_NEWUSER) == ALLOW, nr


@pytest.mark.parametrize("machine", sorted(ABIS))
def test_calls_through_another_abi_are_refused(machine):
    abi, program = ABIS[machine], seccomp.program(machine)
    for other in [a for a in ABIS.values() if a != abi] + [seccomp.Abi(0x40000003, 310, 120, 435)]:
        for nr in (0, other.unshare, other.clone, abi.unshare, 435):
            assert run(program, nr, other.audit_arch) == ENOSYS
    if abi.foreign_bit:  # x32: the same audit arch, numbers with the x32 bit
        for nr in (abi.unshare, abi.clone, 0, 1):
            assert run(program, abi.foreign_bit | nr, abi.audit_arch) == ENOSYS


def test_an_unknown_architecture_gets_no_instance_rather_than_no_filter():
    with pytest.raises(OSError, match="riscv64"):
        seccomp.program("riscv64")
