//! VERSION payload (spec "VFIO_USER_VERSION"): `u16 major; u16 minor; char json[]`.
//!
//! The JSON is optional, NUL-terminated, and an object `{"capabilities": {...}}`. Unknown keys
//! are ignored (forward compatibility); known keys must have the right JSON type.

use serde_json::{Map, Value};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{read_prefix, Writer};
use crate::error::{ProtocolError, Result};

/// The spec default for `max_msg_fds` when the key is absent. (QEMU assumes 8 instead, which
/// is why a server must always send the key.)
pub const DEFAULT_MAX_MSG_FDS: u32 = 1;
/// The spec default for `max_data_xfer_size` when the key is absent (1 MiB).
pub const DEFAULT_MAX_DATA_XFER_SIZE: u32 = 1 << 20;

/// Fixed part of the VERSION payload.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct VersionWire {
    /// Major version (0).
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

const _: () = assert!(std::mem::size_of::<VersionWire>() == VersionWire::SIZE);

impl VersionWire {
    /// Encoded size of the fixed part.
    pub const SIZE: usize = 4;

    /// Decode a VERSION payload into the fixed part and the JSON text (without its NUL).
    pub fn decode(body: &[u8]) -> Result<(VersionWire, Option<&[u8]>)> {
        let Some((version, rest)) = read_prefix::<VersionWire>(body) else {
            return Err(ProtocolError::invalid(format!(
                "VERSION payload of {} bytes, need at least 4",
                body.len()
            )));
        };
        if rest.is_empty() {
            return Ok((version, None));
        }
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| ProtocolError::invalid("VERSION capabilities are not NUL-terminated"))?;
        let (json, tail) = rest.split_at(nul);
        if tail.iter().any(|b| *b != 0) {
            return Err(ProtocolError::invalid(
                "bytes after the VERSION capabilities' NUL",
            ));
        }
        // An empty string (a lone NUL) carries no capabilities, like an absent one.
        let json = (!json.is_empty()).then_some(json);
        Ok((version, json))
    }

    /// Encode the fixed part followed by `json` and a NUL (if `json` is given).
    pub fn encode(&self, json: Option<&str>, w: &mut Writer) {
        w.put(self);
        if let Some(j) = json {
            w.bytes(j.as_bytes()).u8(0);
        }
    }
}

/// The capabilities object of a VERSION message. `None` = key absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Most fds the sender accepts on one message.
    pub max_msg_fds: Option<u32>,
    /// Largest data transfer the sender accepts in one message.
    pub max_data_xfer_size: Option<u32>,
    /// Page sizes supported for DMA maps, or'ed together.
    pub pgsizes: Option<u64>,
    /// Most DMA mappings the sender supports.
    pub max_dma_maps: Option<u32>,
    /// `migration.pgsize`.
    pub migration_pgsize: Option<u64>,
    /// `migration.max_bitmap_size`.
    pub migration_max_bitmap_size: Option<u64>,
    /// Sender supports REGION_WRITE_MULTI.
    pub write_multiple: Option<bool>,
    /// A `twin_socket` object was present (we never offer it).
    pub twin_socket: bool,
}

fn num(map: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    match map.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ProtocolError::invalid(format!("capability {key} is not a u64"))),
    }
}

fn num32(map: &Map<String, Value>, key: &str) -> Result<Option<u32>> {
    num(map, key)?
        .map(|v| u32::try_from(v).map_err(|_| ProtocolError::invalid(format!("{key} too large"))))
        .transpose()
}

impl Capabilities {
    /// Parse the JSON text of a VERSION message.
    pub fn parse_json(json: &[u8]) -> Result<Capabilities> {
        let v: Value = serde_json::from_slice(json)
            .map_err(|e| ProtocolError::invalid(format!("VERSION JSON: {e}")))?;
        let top = v
            .as_object()
            .ok_or_else(|| ProtocolError::invalid("VERSION JSON is not an object"))?;
        let Some(caps) = top.get("capabilities") else {
            return Ok(Capabilities::default());
        };
        let caps = caps
            .as_object()
            .ok_or_else(|| ProtocolError::invalid("capabilities is not an object"))?;
        let mut out = Capabilities {
            max_msg_fds: num32(caps, "max_msg_fds")?,
            max_data_xfer_size: num32(caps, "max_data_xfer_size")?,
            pgsizes: num(caps, "pgsizes")?,
            max_dma_maps: num32(caps, "max_dma_maps")?,
            write_multiple: match caps.get("write_multiple") {
                None => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => return Err(ProtocolError::invalid("write_multiple is not a bool")),
            },
            twin_socket: match caps.get("twin_socket") {
                None => false,
                Some(Value::Object(_)) => true,
                Some(_) => return Err(ProtocolError::invalid("twin_socket is not an object")),
            },
            ..Capabilities::default()
        };
        if let Some(m) = caps.get("migration") {
            let m = m
                .as_object()
                .ok_or_else(|| ProtocolError::invalid("migration is not an object"))?;
            out.migration_pgsize = num(m, "pgsize")?;
            out.migration_max_bitmap_size = num(m, "max_bitmap_size")?;
        }
        Ok(out)
    }

    /// Compact JSON `{"capabilities":{...}}` with the present keys in a fixed order.
    pub fn to_json(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(v) = self.max_msg_fds {
            parts.push(format!("\"max_msg_fds\":{v}"));
        }
        if let Some(v) = self.max_data_xfer_size {
            parts.push(format!("\"max_data_xfer_size\":{v}"));
        }
        if let Some(v) = self.pgsizes {
            parts.push(format!("\"pgsizes\":{v}"));
        }
        if let Some(v) = self.max_dma_maps {
            parts.push(format!("\"max_dma_maps\":{v}"));
        }
        if self.migration_pgsize.is_some() || self.migration_max_bitmap_size.is_some() {
            let mut m = Vec::new();
            if let Some(v) = self.migration_pgsize {
                m.push(format!("\"pgsize\":{v}"));
            }
            if let Some(v) = self.migration_max_bitmap_size {
                m.push(format!("\"max_bitmap_size\":{v}"));
            }
            parts.push(format!("\"migration\":{{{}}}", m.join(",")));
        }
        if let Some(v) = self.write_multiple {
            parts.push(format!("\"write_multiple\":{v}"));
        }
        format!("{{\"capabilities\":{{{}}}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_request_json() {
        let j = br#"{"capabilities":{"pgsizes":4096,"max_msg_fds":16,"max_dma_maps":65535,"max_data_xfer_size":1048576,"migration":{"max_bitmap_size":268435456,"pgsize":4096},"write_multiple":true}}"#;
        let c = Capabilities::parse_json(j).expect("valid");
        assert_eq!(c.max_msg_fds, Some(16));
        assert_eq!(c.max_data_xfer_size, Some(1 << 20));
        assert_eq!(c.pgsizes, Some(4096));
        assert_eq!(c.max_dma_maps, Some(65535));
        assert_eq!(c.migration_pgsize, Some(4096));
        assert_eq!(c.migration_max_bitmap_size, Some(256 << 20));
        assert_eq!(c.write_multiple, Some(true));
        assert_eq!(
            Capabilities::parse_json(c.to_json().as_bytes()).ok(),
            Some(c)
        );
    }

    #[test]
    fn rejects_wrong_types() {
        for j in [
            &br#"[1]"#[..],
            br#"{"capabilities":3}"#,
            br#"{"capabilities":{"max_msg_fds":"16"}}"#,
            br#"{"capabilities":{"max_msg_fds":-1}}"#,
            br#"{"capabilities":{"max_data_xfer_size":4294967296}}"#,
            br#"{"capabilities":{"write_multiple":1}}"#,
            br#"{"capabilities":{"migration":[]}}"#,
            br#"{"capabilities":{"twin_socket":true}}"#,
            br#"{"#,
        ] {
            assert!(
                Capabilities::parse_json(j).is_err(),
                "{}",
                String::from_utf8_lossy(j)
            );
        }
        assert_eq!(
            Capabilities::parse_json(b"{}").ok(),
            Some(Capabilities::default())
        );
    }

    #[test]
    fn version_payload_needs_nul() {
        assert!(VersionWire::decode(&[0, 0, 0]).is_err());
        assert!(VersionWire::decode(&[0, 0, 0, 0, b'{', b'}']).is_err());
        assert!(VersionWire::decode(&[0, 0, 0, 0, b'{', 0, b'}']).is_err());
        let (v, j) = VersionWire::decode(&[0, 0, 1, 0, b'{', b'}', 0]).expect("valid");
        assert_eq!(v.minor, u16::from_ne_bytes([1, 0]));
        assert_eq!(j, Some(&b"{}"[..]));
        let (_, j) = VersionWire::decode(&[0, 0, 0, 0]).expect("valid");
        assert_eq!(j, None);
        let (_, j) = VersionWire::decode(&[0, 0, 0, 0, 0, 0]).expect("valid");
        assert_eq!(j, None);
    }
}
