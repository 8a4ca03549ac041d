//! Reply encoding: one dialect-neutral [`Reply`] becomes bytes appended to the connection's write
//! buffer, in the dialect recorded in its [`ReplyContext`]. All replies to one read are appended to one
//! buffer so a pipelined batch costs one write. This file writes the text dialect; meta and binary live
//! beside their decoders.

use super::types::{Dialect, ErrorReply, Reply, ReplyContext};
use super::{binary, meta};

/// Appends the encoding of `reply` to `out`. Quiet requests (text `noreply`, meta `q`, binary quiet
/// opcodes) get nothing for success; misses of quiet gets get nothing.
pub fn encode(reply: &Reply<'_>, ctx: &ReplyContext, out: &mut Vec<u8>) {
    encode_keyed(reply, ctx, &[], out);
}

/// Like [`encode`], with the request's key for the meta status lines (`HD`, `NF`, `NS`, `EX`)
/// that echo it when the request asked for `k`. Other replies carry their key themselves.
pub fn encode_keyed(reply: &Reply<'_>, ctx: &ReplyContext, key: &[u8], out: &mut Vec<u8>) {
    match ctx.dialect {
        Dialect::Text => encode_text(reply, ctx, out),
        Dialect::Meta => meta::encode(reply, ctx, key, out),
        Dialect::Binary => binary::encode(reply, ctx, out),
    }
}

fn encode_text(reply: &Reply<'_>, ctx: &ReplyContext, out: &mut Vec<u8>) {
    if ctx.quiet {
        return;
    }
    let line: &[u8] = match *reply {
        Reply::Value(value) => {
            out.extend_from_slice(b"VALUE ");
            out.extend_from_slice(value.key);
            out.push(b' ');
            push_u64(out, u64::from(value.flags));
            out.push(b' ');
            push_u64(out, value.data.len() as u64);
            if ctx.with_cas {
                out.push(b' ');
                push_u64(out, value.cas);
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(value.data);
            b""
        }
        Reply::Miss(_) | Reply::Quit => return,
        Reply::End => b"END",
        Reply::Stored(_) => b"STORED",
        Reply::NotStored => b"NOT_STORED",
        Reply::Exists => b"EXISTS",
        Reply::NotFound => b"NOT_FOUND",
        Reply::Deleted => b"DELETED",
        Reply::Touched => b"TOUCHED",
        Reply::Number(number, _) | Reply::Counter { value: number, .. } => {
            push_u64(out, number);
            b""
        }
        Reply::Ok => b"OK",
        Reply::Reset => b"RESET",
        Reply::Version(version) => {
            out.extend_from_slice(b"VERSION ");
            out.extend_from_slice(version.as_bytes());
            b""
        }
        Reply::Stat(name, value) => {
            out.extend_from_slice(b"STAT ");
            out.extend_from_slice(name.as_bytes());
            out.push(b' ');
            out.extend_from_slice(value.as_bytes());
            b""
        }
        Reply::Noop => return,
        Reply::Error(error) => return write_text_error(error, out),
    };
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

/// The memcached 1.6.18 text of each error, with its line ending.
pub(crate) fn write_text_error(error: ErrorReply, out: &mut Vec<u8>) {
    let text: &[u8] = match error {
        ErrorReply::UnknownCommand => b"ERROR",
        ErrorReply::BadCommandLine => b"CLIENT_ERROR bad command line format",
        ErrorReply::BadDeleteUsage => {
            b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]"
        }
        ErrorReply::BadDataChunk => b"CLIENT_ERROR bad data chunk",
        ErrorReply::InvalidExptime => b"CLIENT_ERROR invalid exptime argument",
        ErrorReply::InvalidDelta => b"CLIENT_ERROR invalid numeric delta argument",
        ErrorReply::NonNumeric => b"CLIENT_ERROR cannot increment or decrement non-numeric value",
        ErrorReply::InvalidFlag => b"CLIENT_ERROR invalid flag",
        ErrorReply::Client(message) => {
            out.extend_from_slice(b"CLIENT_ERROR ");
            message.as_bytes()
        }
        ErrorReply::InvalidMode => b"CLIENT_ERROR invalid mode for ms M token",
        ErrorReply::OpaqueTooLong => b"CLIENT_ERROR opaque token too long",
        ErrorReply::KeyDecode => b"CLIENT_ERROR error decoding key",
        ErrorReply::TooLarge => b"SERVER_ERROR object too large for cache",
        ErrorReply::OutOfMemory => b"SERVER_ERROR out of memory storing object",
        ErrorReply::Server(message) => {
            out.extend_from_slice(b"SERVER_ERROR ");
            message.as_bytes()
        }
    };
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal without allocating.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}
