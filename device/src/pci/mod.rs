//! PCI configuration space and the function built from it.
//!
//! [`config_space`] stores bytes and masks; [`bar`] describes BARs; [`capability`] links the
//! capability chains; one module per capability owns its registers ([`pm`], [`msix_cap`],
//! [`pcie`], [`aer`], [`rebar`], [`dsn`]); [`PciFunction`] puts the type 0 header, the BARs and the
//! capabilities together and routes client writes to their owners.

pub mod aer;
pub mod bar;
pub mod capability;
pub mod config_space;
pub mod dsn;
pub mod function;
pub mod msix_cap;
pub mod pcie;
pub mod pm;
pub mod rebar;

pub use function::{PciError, PciFunction, PciIdentity};
