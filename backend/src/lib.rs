//! Where vugpu's bytes live: VRAM storage and the guest DMA address space.
