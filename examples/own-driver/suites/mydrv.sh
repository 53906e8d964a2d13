#!/bin/sh
# vugpu-vm: gpus 1+
# The example suite: load the driver, check it bound every GPU and read their ID registers, unload it.
# The runner requires the "functions bound" line: a GPU the driver did not bind fails the run.
echo "KTAP version 1"
echo "1..3"
if insmod /lib/modules/mydrv.ko; then echo "ok 1 - insmod"; else echo "not ok 1 - insmod"; fi
bound=$(ls -d /sys/bus/pci/drivers/mydrv/0000:* 2>/dev/null | wc -l)
echo "# vugpu functions bound to the driver: $bound of ${VUGPU_GPUS:-0} attached"
probed=$(dmesg | grep -c "mydrv: vugpu VERSION")
if [ "$bound" -gt 0 ] && [ "$probed" = "$bound" ]; then
    echo "ok 2 - bound"
else
    echo "not ok 2 - bound"
    dmesg | tail -n 5 | sed 's/^/# /'
fi
if rmmod mydrv && [ -z "$(ls -d /sys/bus/pci/drivers/mydrv/0000:* 2>/dev/null)" ]; then
    echo "ok 3 - rmmod"
else
    echo "not ok 3 - rmmod"
fi
