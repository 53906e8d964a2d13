//! The vugpu GPU model.
