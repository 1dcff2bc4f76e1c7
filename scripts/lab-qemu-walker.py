#!/usr/bin/env python3
"""Edits QEMU's x86 TCG page walker (target/i386/tcg/system/excp_helper.c, QEMU 10.0) for the
lab: walk the nested-paging guest's page tables with loads, and ask for write access to a
page-table page only when an Accessed/Dirty bit must be set in it, as hardware does.

Why: stock QEMU probes every guest page-table entry for *write* through the nested page
tables. When the guest's memory is ssi-dp's distributed memory, a page-table page that vCPUs
on two nodes walk is then wanted writable by both, so it moves between the nodes at every TLB
refill (and TCG refills after every guest entry and exit) instead of being read-replicated:
an SMP Linux across nodes makes no progress. Real CPUs read page tables during a walk.

Usage: lab-qemu-walker.py QEMU_SOURCE_DIR. Exits non-zero, saying why, when the source does
not have the shape this edit expects (another QEMU version).
"""

import sys
from pathlib import Path

MARK = "ssi-dp lab:"


def fail(msg):
    sys.exit(f"lab-qemu-walker: {msg}")


def replace_once(text, old, new, what):
    if text.count(old) != 1:
        fail(f"cannot find {what} exactly once in excp_helper.c (QEMU version changed?)")
    return text.replace(old, new)


def main():
    if len(sys.argv) != 2:
        fail("usage: lab-qemu-walker.py QEMU_SOURCE_DIR")
    path = Path(sys.argv[1]) / "target/i386/tcg/system/excp_helper.c"
    try:
        text = path.read_text()
    except OSError as e:
        fail(f"{path}: {e}")
    if MARK in text:
        return

    # 1. Remember whether the probe of the current entry allowed writes.
    text = replace_once(
        text,
        "    void *haddr;\n    hwaddr gaddr;\n} PTETranslate;",
        "    void *haddr;\n    hwaddr gaddr;\n    bool writable; /* " + MARK + " probed for store */\n} PTETranslate;",
        "the PTETranslate struct",
    )

    # 2. Probe nested page-table entries for load.
    text = replace_once(
        text,
        "    flags = probe_access_full_mmu(inout->env, addr, 0, MMU_DATA_STORE,\n"
        "                                  inout->ptw_idx, &inout->haddr, NULL);",
        "    /* " + MARK + " nested tables are walked with loads (see ptw_setl_checked). */\n"
        "    inout->writable = inout->ptw_idx != MMU_NESTED_IDX;\n"
        "    flags = probe_access_full_mmu(inout->env, addr, 0,\n"
        "                                  inout->writable ? MMU_DATA_STORE : MMU_DATA_LOAD,\n"
        "                                  inout->ptw_idx, &inout->haddr, NULL);",
        "the page-table probe in ptw_translate",
    )

    # 3. Setting A/D first asks for write access (a stage-2 fault when the nested tables deny
    #    it), then updates the entry as before.
    setter = """/* %s 1: done, 0: retry the walk, -1: stage-2 fault (err filled). */
static int ptw_setl_checked(PTETranslate *in, uint32_t old, uint32_t set)
{
    if (!(set & ~old)) {
        return 1;
    }
    if (!in->writable) {
        int flags = probe_access_full_mmu(in->env, in->gaddr, 0, MMU_DATA_STORE,
                                          in->ptw_idx, &in->haddr, NULL);
        if (unlikely(flags & TLB_INVALID_MASK)) {
            *in->err = (TranslateFault){
                .error_code = in->env->error_code,
                .cr2 = in->gaddr,
                .stage2 = S2_GPT,
            };
            return -1;
        }
        in->writable = true;
    }
    return ptw_setl(in, old, set) ? 1 : 0;
}

/* Used inside mmu_translate: a fault returns from it. */
#define PTW_SETL_CHECKED(t, pte, set) ({                \\
    int r_ = ptw_setl_checked((t), (pte), (set));       \\
    if (r_ < 0) {                                       \\
        return false;                                   \\
    }                                                   \\
    r_ != 0;                                            \\
})

""" % MARK
    anchor = "static bool mmu_translate(CPUX86State *env, const TranslateParams *in,"
    text = replace_once(text, anchor, setter + anchor, "mmu_translate")
    calls = text.count("if (!ptw_setl(&pte_trans,")
    if calls < 5:
        fail(f"expected the walker's A/D updates (found {calls} calls to ptw_setl)")
    text = text.replace("if (!ptw_setl(&pte_trans,", "if (!PTW_SETL_CHECKED(&pte_trans,")
    path.write_text(text)


if __name__ == "__main__":
    main()
