//! The control socket's `inject` requests (hw-spec §10): parsing and applying them.
//!
//! ```text
//! inject dma-error engine=N [count=K]   the next K (1) descriptors of engine N fail (SYS_UNMAPPED)
//! inject hang engine=N                  engine N stops making progress until it is reset
//! inject poison offset=O length=L       engine reads of VRAM [O, O+L) fail (POISONED)
//! inject msix-drop vector=V [count=K]   the next K (1) MSI-X messages of vector V are lost
//! inject remove                         surprise removal: the function stops answering
//! inject clear                          forget pending DMA errors, hangs and poison
//! ```
//!
//! Every request is answered with one JSON line: `{"ok":"<what was done>"}` or
//! `{"error":"..."}`; a bad request changes nothing.

use serde::Serialize;

use super::inject::MAX_POISON;
use super::EngineMonitor;

/// Largest `count` of one request.
const MAX_COUNT: u32 = 1 << 20;

/// A parsed `inject` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// `dma-error engine=N count=K`.
    DmaError {
        /// Engine.
        engine: usize,
        /// Descriptors to fail.
        count: u32,
    },
    /// `hang engine=N`.
    Hang {
        /// Engine.
        engine: usize,
    },
    /// `poison offset=O length=L`.
    Poison {
        /// VRAM offset.
        offset: u64,
        /// Bytes.
        length: u64,
    },
    /// `msix-drop vector=V count=K`.
    MsixDrop {
        /// Vector.
        vector: usize,
        /// Messages to lose.
        count: u32,
    },
    /// `remove`.
    Remove,
    /// `clear`.
    Clear,
}

fn number(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Parses the words after `inject`.
pub fn parse(text: &str) -> Result<Injection, String> {
    let mut words = text.split_whitespace();
    let kind = words.next().ok_or(
        "inject what? (dma-error engine=N [count=K], hang engine=N, poison offset=O length=L, \
         msix-drop vector=V [count=K], remove, clear)",
    )?;
    let mut args: Vec<(&str, u64)> = Vec::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("{kind}: {w:?} is not key=value"))?;
        let n = number(v).ok_or_else(|| format!("{kind}: {k}={v:?} is not a number"))?;
        if args.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("{kind}: {k} given twice"));
        }
        args.push((k, n));
    }
    let allowed: &[&str] = match kind {
        "dma-error" => &["engine", "count"],
        "hang" => &["engine"],
        "poison" => &["offset", "length"],
        "msix-drop" => &["vector", "count"],
        "remove" | "clear" => &[],
        _ => return Err(format!("unknown fault {kind:?}")),
    };
    if let Some((k, _)) = args.iter().find(|(k, _)| !allowed.contains(k)) {
        return Err(format!(
            "{kind}: unknown key {k:?} (keys: {})",
            allowed.join(", ")
        ));
    }
    let get = |k: &str| args.iter().find(|(n, _)| *n == k).map(|&(_, v)| v);
    let need = |k: &str| get(k).ok_or_else(|| format!("{kind}: {k}= is missing"));
    let count = || -> Result<u32, String> {
        match get("count") {
            None => Ok(1),
            Some(c) if (1..=u64::from(MAX_COUNT)).contains(&c) => Ok(c as u32),
            Some(c) => Err(format!("{kind}: count={c} (1-{MAX_COUNT})")),
        }
    };
    let index = |k: &str| -> Result<usize, String> {
        usize::try_from(need(k)?).map_err(|_| format!("{kind}: {k} out of range"))
    };
    Ok(match kind {
        "dma-error" => Injection::DmaError {
            engine: index("engine")?,
            count: count()?,
        },
        "hang" => Injection::Hang {
            engine: index("engine")?,
        },
        "poison" => Injection::Poison {
            offset: need("offset")?,
            length: need("length")?,
        },
        "msix-drop" => Injection::MsixDrop {
            vector: index("vector")?,
            count: count()?,
        },
        "remove" => Injection::Remove,
        _ => Injection::Clear,
    })
}

#[derive(Serialize)]
struct Ok<'a> {
    ok: &'a str,
}

#[derive(Serialize)]
struct Err<'a> {
    error: &'a str,
}

/// Applies `inject <text>` to the GPU behind `monitor`; the reply line.
pub fn apply(text: &str, monitor: &EngineMonitor) -> String {
    let result = parse(text).and_then(|inj| perform(&inj, monitor).map(|()| inj));
    let line = match &result {
        Ok(_) => serde_json::to_string(&Ok { ok: text }),
        Err(e) => serde_json::to_string(&Err { error: e }),
    };
    match &result {
        Ok(_) => tracing::warn!("control socket: inject {text}"),
        Err(e) => tracing::info!("control socket: inject {text:?} refused: {e}"),
    }
    line.unwrap_or_else(|_| r#"{"error":"internal"}"#.to_string())
}

fn perform(inj: &Injection, m: &EngineMonitor) -> Result<(), String> {
    let env = &m.env;
    let engines = m.engines.len();
    let engine_ok = |e: usize| {
        if e < engines {
            Ok(())
        } else {
            Err(format!("no engine {e} (ENGINE_COUNT {engines})"))
        }
    };
    match *inj {
        Injection::DmaError { engine, count } => {
            engine_ok(engine)?;
            env.inject().arm_dma_error(engine, count);
        }
        Injection::Hang { engine } => {
            engine_ok(engine)?;
            env.inject().arm_hang(engine);
        }
        Injection::Poison { offset, length } => {
            let size = env.vram().size();
            if length == 0 || offset >= size || length > size - offset {
                return Err(format!(
                    "poison offset={offset:#x} length={length:#x}: not inside the VRAM ({size:#x} bytes)"
                ));
            }
            if !env.inject().poison(offset, length) {
                return Err(format!("at most {MAX_POISON} poisoned ranges"));
            }
        }
        Injection::MsixDrop { vector, count } => {
            let mut msix = env.msix();
            if vector >= msix.count() {
                return Err(format!("no vector {vector} ({} vectors)", msix.count()));
            }
            msix.drop_next(vector, count);
        }
        Injection::Remove => {
            env.inject().remove();
            // Engines leave their descriptor at the next chunk boundary and start no other.
            for e in &m.engines {
                e.wake();
            }
        }
        Injection::Clear => {
            env.inject().clear();
            env.msix().clear_drops();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_fault_and_refuses_the_rest() {
        assert_eq!(
            parse("dma-error engine=1"),
            Ok(Injection::DmaError {
                engine: 1,
                count: 1
            })
        );
        assert_eq!(
            parse("dma-error engine=0 count=3"),
            Ok(Injection::DmaError {
                engine: 0,
                count: 3
            })
        );
        assert_eq!(parse("hang engine=2"), Ok(Injection::Hang { engine: 2 }));
        assert_eq!(
            parse("poison offset=0x10000 length=4096"),
            Ok(Injection::Poison {
                offset: 0x10000,
                length: 4096
            })
        );
        assert_eq!(
            parse("msix-drop vector=2 count=2"),
            Ok(Injection::MsixDrop {
                vector: 2,
                count: 2
            })
        );
        assert_eq!(parse("remove"), Ok(Injection::Remove));
        assert_eq!(parse("clear"), Ok(Injection::Clear));
        for bad in [
            "",
            "melt",
            "hang",
            "hang engine=x",
            "hang engine=1 engine=2",
            "hang vector=1",
            "dma-error engine=1 count=0",
            "dma-error engine=1 count=99999999",
            "remove now",
            "poison offset=1",
            "msix-drop vector=-1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
