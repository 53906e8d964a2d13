// SPDX-License-Identifier: GPL-2.0
/*
 * The smallest driver for a vugpu GPU: binds the PCI function, maps the register BAR and checks
 * the ID register against the hardware contract (docs/hw-spec.md §2; the constants come from the
 * generated vugpu_hw.h, copied next to this file). A starting point for your own driver.
 */
#include <linux/io.h>
#include <linux/module.h>
#include <linux/pci.h>

#include "vugpu_hw.h"

static int mydrv_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	void __iomem *regs;
	u32 ident, version;
	int ret;

	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	regs = pcim_iomap(pdev, VUGPU_BAR_REGS, 0);
	if (!regs)
		return -ENOMEM;
	ident = readl(regs + VUGPU_REG_ID);
	if (ident != VUGPU_ID_VALUE) {
		dev_err(&pdev->dev, "mydrv: ID register 0x%08x, want 0x%08x\n", ident, VUGPU_ID_VALUE);
		return -ENODEV;
	}
	version = readl(regs + VUGPU_REG_VERSION);
	dev_info(&pdev->dev, "mydrv: vugpu VERSION 0x%x\n", version);
	return 0;
}

static const struct pci_device_id mydrv_ids[] = {
	{ PCI_DEVICE(VUGPU_PCI_VENDOR_ID, VUGPU_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, mydrv_ids);

static struct pci_driver mydrv_driver = {
	.name = "mydrv",
	.id_table = mydrv_ids,
	.probe = mydrv_probe,
};
module_pci_driver(mydrv_driver);

MODULE_DESCRIPTION("Example driver for a vugpu GPU");
MODULE_LICENSE("GPL");
