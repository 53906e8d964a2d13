#!/usr/bin/env python3
"""Drive a DMA engine of a real `vugpu serve` from a real QEMU guest, without a driver.

Boots a Linux guest (kernel + a busybox initramfs built here) under QEMU's vfio-user-pci and,
from /init, programs engine 0 with busybox `devmem`: a ring in VRAM (BAR2), buffers in the
guest's first MiB of RAM (which STRICT_DEVMEM allows and Linux keeps reserved), doorbell through
the mmapped BAR0 page. It checks COPY sys->VRAM, VRAM->sys, an unaligned sys->sys COPY and a
FENCE, then an engine error on an unmapped address (STATUS/ERROR_CODE, Device Status, config
Status). Modes:

  fd        guest RAM is a shared memfd: DMA_MAP carries fds, the engine copies directly
  msg       plain guest RAM: DMA_MAP without fd, the engine uses DMA_READ/DMA_WRITE messages
            (the server default layout: the vfio-user specification's)
  msg-qemu10  as msg, but the server speaks the layout of QEMU 10.2's source (u32 count, data
            at payload offset 12); expected to FAIL against QEMU 11.1.3, which speaks the
            specification's layout (observed: data shifted by 4 bytes, E2BIG on DMA_WRITE)

Usage: qemu_engine_check.py --root /var/cache/vugpu/root --vugpu target/release/vugpu [--mode M]
The root is a Debian trixie tree with qemu-system-x86 11.1, a kernel in usr/lib/modules/*/vmlinuz
and busybox (static). QEMU runs through the root's dynamic loader; nothing is mounted or written
inside the root. Exit status 0 when every check of the mode passed (msg-qemu10: when one failed).
"""
import argparse
import glob
import gzip
import io
import os
import re
import subprocess
import sys
import tempfile
import time

INIT = r'''#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
D=""
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat $d/vendor)" = "0x1234" ] && [ "$(cat $d/device)" = "0x5647" ]; then D=$d; fi
done
[ -n "$D" ] || { echo "VERIFY FAIL no vugpu device"; poweroff -f; }
echo 1 > $D/enable
printf '\006\004' | dd of=$D/config bs=1 seek=4 count=2 conv=notrunc 2>/dev/null
B0=$(sed -n 1p $D/resource | cut -d' ' -f1)
B2=$(sed -n 3p $D/resource | cut -d' ' -f1)
echo "BAR0 $B0 BAR2 $B2"
w() { devmem $(printf 0x%x $1) 32 $(printf 0x%x $2); }
r() { devmem $(printf 0x%x $1) 32; }
ENG=$((B0 + 0x1000))
echo "ID $(r $B0) VERSION $(r $((B0+4))) CAPS $(r $((B0+8))) ENGINES $(r $((B0+0x90)))"
SRC=0x70000; DST=0x71000; FENCE=0x72000; UNAL=0x73000
i=0; while [ $i -lt 64 ]; do w $((SRC + 4*i)) $((0xa5000000 + i*0x10101)); w $((DST + 4*i)) 0; i=$((i+1)); done
w $FENCE 0; w $((FENCE+4)) 0
i=0; while [ $i -lt 32 ]; do w $((UNAL + 4*i)) 0; i=$((i+1)); done
# desc SLOT OPCODE FLAGS SAP DAP SRC DST LEN VALLO VALHI  (ring in VRAM at offset 0)
desc() {
  a=$((B2 + 64*$1))
  w $a $(( $2 | ($3<<8) | ($4<<16) | ($5<<24) )); w $((a+4)) 0
  w $((a+8)) $6; w $((a+12)) 0; w $((a+16)) $7; w $((a+20)) 0
  w $((a+24)) $8; w $((a+28)) 0; w $((a+32)) $9; w $((a+36)) ${10}
  j=40; while [ $j -lt 64 ]; do w $((a+j)) 0; j=$((j+4)); done
}
desc 0 1 0 0 1 $SRC 0x10000 256 0 0
desc 1 1 0 1 0 0x10000 $DST 256 0 0
desc 2 3 0 0 0 0 $FENCE 0 0x55667788 0x11223344
desc 3 1 2 0 0 $((SRC+1)) $((UNAL+3)) 100 0 0
w $ENG 0; w $((ENG+4)) 0; w $((ENG+8)) 16; w $((ENG+12)) 1; w $((ENG+0x18)) 1
w $((B0 + 0x200000)) 4
n=0; while [ "$(r $((ENG+0x10)))" != "0x00000004" ] && [ $n -lt 200 ]; do n=$((n+1)); done
echo "HEAD $(r $((ENG+0x10))) STATUS $(r $((ENG+0x1c))) ERROR_CODE $(r $((ENG+0x20)))"
ok=1
i=0; while [ $i -lt 64 ]; do
  e=$(printf 0x%08X $((0xa5000000 + i*0x10101)))
  [ "$(r $((DST + 4*i)))" = "$e" ] || { ok=0; echo "mismatch sys $i $(r $((DST + 4*i))) want $e"; }
  [ "$(r $((B2 + 0x10000 + 4*i)))" = "$e" ] || { ok=0; echo "mismatch vram $i $(r $((B2 + 0x10000 + 4*i))) want $e"; }
  i=$((i+1)); done
[ $ok = 1 ] && echo "VERIFY ok copies sys->vram->sys" || echo "VERIFY FAIL copies"
[ "$(r $FENCE)" = "0x55667788" ] && [ "$(r $((FENCE+4)))" = "0x11223344" ] && echo "VERIFY ok fence" || echo "VERIFY FAIL fence $(r $FENCE) $(r $((FENCE+4)))"
ok=1; i=0; while [ $i -lt 100 ]; do
  s=$(devmem $(printf 0x%x $((SRC+1+i))) 8); d=$(devmem $(printf 0x%x $((UNAL+3+i))) 8)
  [ "$s" = "$d" ] || ok=0; i=$((i+1)); done
[ "$(devmem $((UNAL+2)) 8)" = "0x00" ] && [ "$(devmem $((UNAL+103)) 8)" = "0x00" ] || ok=0
[ $ok = 1 ] && echo "VERIFY ok unaligned sys->sys" || echo "VERIFY FAIL unaligned sys->sys"
echo "STATS jobs $(r $((ENG+0x40))) s2v $(r $((ENG+0x48))) v2s $(r $((ENG+0x50))) s2s $(r $((ENG+0x60))) RO_REQ $(r $((ENG+0x80))) RO_USED $(r $((ENG+0x88)))"
# An engine error: COPY from a GPA no DMA_MAP covers (past RAM, below the PCI hole).
desc 4 1 0 0 1 0x3f000000 0x20000 64 0 0
w $((B0 + 0x200000)) 5
n=0; while [ "$(r $((ENG+0x1c)))" != "0x00000004" ] && [ $n -lt 200 ]; do n=$((n+1)); done
echo "ERR STATUS $(r $((ENG+0x1c))) CODE $(r $((ENG+0x20))) ADDR $(r $((ENG+0x28)))$(r $((ENG+0x24))) CAUSE $(r $((B0+0xa0)))"
sta=$(dd if=$D/config bs=1 skip=6 count=2 2>/dev/null | od -An -tx2 | tr -d ' ')
dsta=$(dd if=$D/config bs=1 skip=$((0x6a)) count=2 2>/dev/null | od -An -tx2 | tr -d ' ')
aer=$(dd if=$D/config bs=1 skip=$((0x104)) count=4 2>/dev/null | od -An -tx4 | tr -d ' ')
echo "CONFIG status $sta devsta $dsta aer_uncor $aer"
[ "$(r $((ENG+0x20)))" = "0x00000005" ] && [ "$aer" = "00100000" ] && echo "VERIFY ok error SYS_UNMAPPED + AER UR" || echo "VERIFY FAIL error path"
echo "VERIFY done"
poweroff -f
'''


def cpio_newc(entries):
    """entries: list of (name, mode, data_bytes or None for dirs)"""
    out = io.BytesIO()
    ino = 1
    for name, mode, data in entries + [("TRAILER!!!", 0, b"")]:
        data = data or b""
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join("%08x" % v for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out.write(hdr.encode() + nb)
        out.write(b"\0" * ((4 - (110 + len(nb)) % 4) % 4))
        out.write(data)
        out.write(b"\0" * ((4 - len(data) % 4) % 4))
        ino += 1
    return out.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--vugpu", required=True)
    ap.add_argument("--mode", choices=["fd", "msg", "msg-qemu10"], default="msg")
    ap.add_argument("--timeout", type=int, default=300)
    a = ap.parse_args()
    root = os.path.abspath(a.root)
    kernel = sorted(glob.glob(f"{root}/usr/lib/modules/*/vmlinuz"))[-1]
    busybox = open(f"{root}/usr/bin/busybox", "rb").read()
    work = tempfile.mkdtemp(prefix="vugpu-qemu-")
    initrd = os.path.join(work, "initrd.gz")
    with open(initrd, "wb") as f:
        f.write(gzip.compress(cpio_newc([
            ("bin", 0o040755, None), ("proc", 0o040755, None), ("sys", 0o040755, None),
            ("dev", 0o040755, None), ("bin/busybox", 0o100755, busybox),
            ("init", 0o100755, INIT.encode()),
        ]), 1))
    sock = os.path.join(work, "gpu.sock")
    srv_log = open(os.path.join(work, "server.log"), "w")
    layout = "qemu-10.2" if a.mode == "msg-qemu10" else "spec"
    trace = os.path.join(work, "engines.trace")
    srv = subprocess.Popen([a.vugpu, "serve", "--socket", sock, "--vram", "16M",
                            "--dma-layout", layout, "--log-level", "debug", "--trace", trace],
                           stderr=srv_log)
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        ld = f"{root}/lib64/ld-linux-x86-64.so.2"
        libs = f"{root}/usr/lib/x86_64-linux-gnu:{root}/lib/x86_64-linux-gnu"
        mem = []
        if a.mode == "fd":
            mem = ["-object", "memory-backend-memfd,id=mem,size=512M,share=on",
                   "-machine", "memory-backend=mem"]
        dev = '{"driver":"vfio-user-pci","socket":{"path":"%s","type":"unix"}}' % sock
        cmd = [ld, "--library-path", libs, f"{root}/usr/bin/qemu-system-x86_64",
               "-L", f"{root}/usr/share/seabios", "-L", f"{root}/usr/share/qemu",
               "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "512M", *mem,
               "-kernel", kernel, "-initrd", initrd,
               "-append", "console=ttyS0 panic=-1 quiet", "-no-reboot",
               "-display", "none", "-serial", "stdio", "-monitor", "none",
               "-device", dev]
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
        out = p.stdout + p.stderr
        if os.environ.get("VUGPU_QEMU_VERBOSE"):
            print(out)
        lines = [l for l in out.splitlines()
                 if re.match(r"^(BAR0|ID|HEAD|VERIFY|STATS|ERR|CONFIG|mismatch|qemu)", l)]
        print("\n".join(lines))
        print(f"[{a.mode}] QEMU exited {p.returncode} after {time.time() - t0:.1f}s; "
              f"work dir {work}")
        text = open(trace).read() if os.path.exists(trace) else ""
        print("TRACE transactions: %d to fd-backed guest RAM, %d through DMA messages, "
              "%d to VRAM" % (text.count("target=sys "), text.count("target=sys-msg "),
                              text.count("target=vram ")))
        fails = [l for l in lines if l.startswith("VERIFY FAIL")]
        done = any(l == "VERIFY done" for l in lines)
        if a.mode == "msg-qemu10":
            return 0 if (done and fails) else 1
        return 0 if (done and not fails) else 1
    finally:
        srv.terminate()
        srv.wait()


if __name__ == "__main__":
    sys.exit(main())
