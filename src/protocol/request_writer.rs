//! Writing requests, the inverse of the decoders: used by the property tests (every valid request
//! round-trips) and by our own clients and load generator.

use super::binary::{base_opcode, opcode, HEADER_LEN, REQUEST_MAGIC};
use super::types::{Command, Request, StoreMode};

/// Appends `command` as a classic text request; `noreply` adds the token where the command takes
/// it. Returns false (writing nothing) for commands the text dialect cannot express.
pub fn write_text_request(command: &Command<'_>, noreply: bool, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let word = |out: &mut Vec<u8>, bytes: &[u8]| {
        if out.len() > start {
            out.push(b' ');
        }
        out.extend_from_slice(bytes);
    };
    let mut takes_noreply = true;
    match command {
        Command::Get {
            keys,
            with_cas,
            touch,
        } => {
            takes_noreply = false;
            let name: &[u8] = match (with_cas, touch) {
                (false, None) => b"get",
                (true, None) => b"gets",
                (false, Some(_)) => b"gat",
                (true, Some(_)) => b"gats",
            };
            word(out, name);
            if let Some(exptime) = touch {
                word(out, exptime.to_string().as_bytes());
            }
            for key in keys.iter() {
                word(out, key);
            }
        }
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            value,
            cas,
        } => {
            let name: &[u8] = match (mode, cas) {
                (StoreMode::Set, None) => b"set",
                (StoreMode::Add, None) => b"add",
                (StoreMode::Replace, None) => b"replace",
                (StoreMode::Append, None) => b"append",
                (StoreMode::Prepend, None) => b"prepend",
                (StoreMode::Set, Some(_)) => b"cas",
                // Text has no compare-and-swap for the other modes.
                (_, Some(_)) => return false,
            };
            word(out, name);
            word(out, key);
            word(out, flags.to_string().as_bytes());
            word(out, exptime.to_string().as_bytes());
            word(out, value.len().to_string().as_bytes());
            if let Some(cas) = cas {
                word(out, cas.to_string().as_bytes());
            }
            if noreply {
                word(out, b"noreply");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
            return true;
        }
        Command::Delete { key, cas: 0 } => {
            word(out, b"delete");
            word(out, key);
        }
        Command::Arith {
            incr,
            key,
            delta,
            initial: None,
            cas: 0,
            touch: None,
        } => {
            word(out, if *incr { b"incr" } else { b"decr" });
            word(out, key);
            word(out, delta.to_string().as_bytes());
        }
        Command::Touch { key, exptime } => {
            word(out, b"touch");
            word(out, key);
            word(out, exptime.to_string().as_bytes());
        }
        Command::FlushAll { delay } => {
            word(out, b"flush_all");
            word(out, delay.to_string().as_bytes());
        }
        Command::Version => {
            takes_noreply = false;
            word(out, b"version");
        }
        Command::Verbosity { level } => {
            word(out, b"verbosity");
            word(out, level.to_string().as_bytes());
        }
        Command::Stats { sub } => {
            takes_noreply = false;
            word(out, b"stats");
            if !sub.is_empty() {
                word(out, sub);
            }
        }
        Command::Quit => {
            takes_noreply = false;
            word(out, b"quit");
        }
        _ => return false,
    }
    if noreply && takes_noreply {
        word(out, b"noreply");
    }
    out.extend_from_slice(b"\r\n");
    true
}

/// Appends a binary request header plus body.
fn frame(
    out: &mut Vec<u8>,
    op: u8,
    opaque: u32,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    out.reserve(HEADER_LEN + extras.len() + key.len() + value.len());
    out.push(REQUEST_MAGIC);
    out.push(op);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.push(extras.len() as u8);
    out.extend_from_slice(&[0, 0, 0]);
    let body = (extras.len() + key.len() + value.len()) as u32;
    out.extend_from_slice(&body.to_be_bytes());
    out.extend_from_slice(&opaque.to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Appends `request` as a binary request using its context's opcode (quiet or not) and opaque.
/// Returns false (writing nothing) if the command does not fit that opcode.
pub fn write_binary_request(request: &Request<'_>, out: &mut Vec<u8>) -> bool {
    let (op, opaque) = (request.ctx.opcode, request.ctx.opaque);
    let base = base_opcode(op);
    let u32be = |n: i64| (n as u32).to_be_bytes();
    match (&request.command, base) {
        (
            Command::Get {
                keys, touch: None, ..
            },
            opcode::GET | opcode::GETK,
        ) if keys.len() == 1 => {
            let key = keys.iter().next().unwrap_or_default();
            frame(out, op, opaque, 0, &[], key, &[]);
        }
        (
            Command::Get {
                keys,
                touch: Some(exp),
                ..
            },
            opcode::GAT | opcode::GATK | opcode::TOUCH,
        ) if keys.len() == 1 => {
            let key = keys.iter().next().unwrap_or_default();
            frame(out, op, opaque, 0, &u32be(*exp), key, &[]);
        }
        (
            Command::Store {
                key,
                flags,
                exptime,
                value,
                cas,
                ..
            },
            _,
        ) => {
            let cas = cas.unwrap_or(0);
            let mut extras = [0u8; 8];
            extras[..4].copy_from_slice(&flags.to_be_bytes());
            extras[4..].copy_from_slice(&u32be(*exptime));
            let extras: &[u8] = match base {
                opcode::APPEND | opcode::PREPEND => &[],
                _ => &extras,
            };
            frame(out, op, opaque, cas, extras, key, value);
        }
        (Command::Delete { key, cas }, opcode::DELETE) => {
            frame(out, op, opaque, *cas, &[], key, &[])
        }
        (
            Command::Arith {
                key,
                delta,
                initial,
                cas,
                touch: None,
                ..
            },
            opcode::INCREMENT | opcode::DECREMENT,
        ) => {
            let mut extras = [0u8; 20];
            extras[..8].copy_from_slice(&delta.to_be_bytes());
            let (init, exp) = initial.map_or((0, u32::MAX), |(i, e)| (i, e as u32));
            extras[8..16].copy_from_slice(&init.to_be_bytes());
            extras[16..].copy_from_slice(&exp.to_be_bytes());
            frame(out, op, opaque, *cas, &extras, key, &[]);
        }
        (Command::Touch { key, exptime }, opcode::TOUCH) => {
            frame(out, op, opaque, 0, &u32be(*exptime), key, &[])
        }
        (Command::FlushAll { delay }, opcode::FLUSH) => {
            frame(out, op, opaque, 0, &u32be(*delay), &[], &[])
        }
        (Command::Verbosity { level }, opcode::VERBOSITY) => {
            frame(out, op, opaque, 0, &level.to_be_bytes(), &[], &[])
        }
        (Command::Stats { sub }, opcode::STAT) => frame(out, op, opaque, 0, &[], sub, &[]),
        (Command::Version, opcode::VERSION)
        | (Command::Noop, opcode::NOOP)
        | (Command::Quit, opcode::QUIT) => frame(out, op, opaque, 0, &[], &[], &[]),
        _ => return false,
    }
    true
}
