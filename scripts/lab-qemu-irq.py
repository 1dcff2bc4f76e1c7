#!/usr/bin/env python3
"""Edits QEMU 10.0's TCG so that every read-modify-write of a vCPU's `interrupt_request` is
atomic (`qatomic_or` / `qatomic_and`), for the lab.

Why: the nested-SVM helpers (`helper_vmrun`, `do_vmexit` in target/i386/tcg/system/
svm_helper.c) run on the vCPU thread without the big QEMU lock and update
`cs->interrupt_request` with a plain `|=` / `&=`, while the main loop thread sets bits in the
same word (`tcg_handle_interrupt`, under the lock) when a device or the local APIC's timer
raises an interrupt. A set that lands between the helper's load and its store is lost. Seen
in the lab (2026-12-06, QEMU 10.0.2): L1's APIC timer vector pending in the local APIC's IRR,
`interrupt_request` 0, and the one vCPU executing a nested guest's `pause` spin loop with
interrupts off, which has no reason to exit to L1: L1 never took another interrupt, so it
never ran again (its console silent, QEMU at 100 % CPU) until the run's timeout. Every
guest entry and exit of the nested Linux goes through those helpers, so a long run meets the
race. Newer QEMU makes these updates atomic as well.

Usage: lab-qemu-irq.py QEMU_SOURCE_DIR. Exits non-zero, saying why, when the source does not
have the shape this edit expects (another QEMU version).
"""

import re
import sys
from pathlib import Path

MARK = "ssi-dp lab: atomic interrupt_request"

# File -> how many `X->interrupt_request |= ...;` / `&= ~...;` statements it must have.
FILES = {
    "accel/tcg/tcg-accel-ops.c": 1,
    "accel/tcg/cpu-exec.c": 3,
    "hw/core/cpu-common.c": 1,
    "system/cpus.c": 1,
    "target/i386/tcg/system/svm_helper.c": 2,
    "target/i386/tcg/system/seg_helper.c": 6,
}

OR = re.compile(r"(\w+)->interrupt_request\s*\|=\s*([^;]+);")
AND = re.compile(r"(\w+)->interrupt_request\s*&=\s*~\s*(\([^;]*?\)|\w+)\s*;", re.S)


def fail(msg):
    sys.exit(f"lab-qemu-irq: {msg}")


def main():
    if len(sys.argv) != 2:
        fail("usage: lab-qemu-irq.py QEMU_SOURCE_DIR")
    root = Path(sys.argv[1])
    for rel, want in FILES.items():
        path = root / rel
        try:
            text = path.read_text()
        except OSError as e:
            fail(f"{path}: {e}")
        if MARK in text:
            continue
        found = len(OR.findall(text)) + len(AND.findall(text))
        if found != want:
            fail(
                f"{rel}: {found} updates of interrupt_request, expected {want} "
                "(QEMU version changed?)"
            )
        text = OR.sub(r"qatomic_or(&\1->interrupt_request, \2);", text)
        text = AND.sub(r"qatomic_and(&\1->interrupt_request, ~\2);", text)
        path.write_text(f"/* {MARK} (scripts/lab-qemu-irq.py) */\n" + text)


if __name__ == "__main__":
    main()
