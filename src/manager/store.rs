//! The manager's state file: the cluster state written atomically on every change and read at start,
//! so that a restart of both managers of a pair loses nothing (kumofs kept it in memory only).
//!
//! # Location
//!
//! `<dir>/kumo-manager-<ip>_<port>.state`, where `<dir>` is `-s` (default: the current directory)
//! and `<ip>_<port>` is the listen address with `:` turned into `_` (`[::1]:19700` gives
//! `kumo-manager-[__1]_19700.state`). Two managers on one host therefore never share a file.
//!
//! # Format (version 1)
//!
//! ```text
//! kumo-manager-state 1 <crc> <len>\n      header: ASCII, fields separated by one space;
//!                                         <crc> = CRC-32 (IEEE) of the body, 8 lower-case hex
//!                                         digits; <len> = body length in bytes, decimal
//! <body>                                  exactly <len> bytes of UTF-8 JSON:
//!                                         {"manager": "ip:port", "saved_ms": <unix ms>,
//!                                          "state": <ClusterState as serde JSON>}
//! ```
//!
//! The body is JSON so an operator can read it (`tail -n +2 FILE | python3 -m json.tool`); the
//! checksum and length catch a torn or bit-flipped file, which is refused with a message naming the
//! file instead of being half-used.
//!
//! # Atomic replacement
//!
//! [`StateStore::save`] writes `<file>.tmp`, fsyncs it, renames it over the file and fsyncs the
//! directory, so the file is always either the old or the new state, whatever moment the process
//! or the machine stops.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cluster::clock::wall_ms;
use crate::cluster::state::ClusterState;

const MAGIC: &str = "kumo-manager-state";
const FORMAT_VERSION: u32 = 1;
/// Refuse to read anything larger (a state with thousands of servers is far below this).
const MAX_FILE: u64 = 64 << 20;

#[derive(Serialize, Deserialize)]
struct Body {
    manager: SocketAddr,
    saved_ms: u64,
    state: ClusterState,
}

/// The state file of one manager.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
    me: SocketAddr,
}

/// The file name for a manager listening on `listen`.
pub fn file_name(listen: SocketAddr) -> String {
    format!(
        "kumo-manager-{}.state",
        listen.to_string().replace(':', "_")
    )
}

impl StateStore {
    /// The store of the manager `me` in directory `dir` (created if missing).
    pub fn open(dir: &Path, me: SocketAddr) -> Result<StateStore, String> {
        fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create state directory {}: {e}", dir.display()))?;
        Ok(StateStore {
            path: dir.join(file_name(me)),
            me,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state; `Ok(None)` when there is no file yet (a first start).
    pub fn load(&self) -> Result<Option<ClusterState>, String> {
        let bytes = match fs::metadata(&self.path) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(&format!("cannot read it: {e}"))),
            Ok(meta) if meta.len() > MAX_FILE => {
                return Err(self.error(&format!("it is {} bytes, too large", meta.len())))
            }
            Ok(_) => fs::read(&self.path).map_err(|e| self.error(&format!("cannot read: {e}")))?,
        };
        let body = decode(&bytes).map_err(|e| self.error(&e))?;
        if body.manager != self.me {
            crate::warn!(
                "state file {} was written by manager {}, not {}; using it anyway",
                self.path.display(),
                body.manager,
                self.me
            );
        }
        body.state
            .validate()
            .map_err(|e| self.error(&format!("invalid state: {e}")))?;
        Ok(Some(body.state))
    }

    /// Replaces the file with `state`, atomically and durably.
    pub fn save(&self, state: &ClusterState) -> Result<(), String> {
        let bytes = encode(self.me, state).map_err(|e| self.error(&e))?;
        let tmp = self.path.with_extension("state.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| format!("cannot write state file {}: {e}", self.path.display()))
    }

    fn error(&self, what: &str) -> String {
        format!(
            "state file {}: {what}. Move it away to start this manager with an empty state (it \
             then takes its partner's state, if it has one)",
            self.path.display()
        )
    }
}

fn encode(me: SocketAddr, state: &ClusterState) -> Result<Vec<u8>, String> {
    let body = serde_json::to_vec_pretty(&Body {
        manager: me,
        saved_ms: wall_ms(),
        state: state.clone(),
    })
    .map_err(|e| format!("cannot encode: {e}"))?;
    let mut out = format!(
        "{MAGIC} {FORMAT_VERSION} {:08x} {}\n",
        crc32fast::hash(&body),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<Body, String> {
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .filter(|&n| n < 200)
        .ok_or("not a kumo-manager state file (no header line)")?;
    let header = std::str::from_utf8(&bytes[..newline])
        .map_err(|_| "not a kumo-manager state file (header is not text)")?;
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, version, crc, len] = fields[..] else {
        return Err(format!("not a kumo-manager state file (header {header:?})"));
    };
    if magic != MAGIC {
        return Err(format!("not a kumo-manager state file (header {header:?})"));
    }
    if version != FORMAT_VERSION.to_string() {
        return Err(format!(
            "format version {version} is not supported (this kumo-manager reads version \
             {FORMAT_VERSION})"
        ));
    }
    let crc = u32::from_str_radix(crc, 16).map_err(|_| format!("bad checksum field {crc:?}"))?;
    let len: usize = len
        .parse()
        .map_err(|_| format!("bad length field {len:?}"))?;
    let body = &bytes[newline + 1..];
    if body.len() != len {
        return Err(format!(
            "truncated or padded: the header says {len} bytes of state, the file has {}",
            body.len()
        ));
    }
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch: the file is corrupt".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("cannot parse the state: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::RoutingState;
    use crate::cluster::table::{NodeState, TableSpec};

    fn me() -> SocketAddr {
        "127.0.0.1:19700".parse().unwrap()
    }

    fn sample() -> ClusterState {
        let table = TableSpec {
            version: 42,
            nodes: vec![("127.0.0.1:19801".parse().unwrap(), NodeState::Active)],
        };
        ClusterState {
            epoch: 43,
            routing: RoutingState {
                write: table.clone(),
                read: table,
                stamp: 42,
                origin: Some(me()),
                ..RoutingState::default()
            },
            gc_horizon: 7,
            ..ClusterState::default()
        }
    }

    #[test]
    fn saves_and_loads_and_names_files_after_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("sub"), me()).unwrap();
        assert!(store.path().ends_with("kumo-manager-127.0.0.1_19700.state"));
        assert_eq!(store.load().unwrap(), None);
        store.save(&sample()).unwrap();
        assert_eq!(store.load().unwrap(), Some(sample()));
        let mut newer = sample();
        newer.gc_horizon = 9;
        store.save(&newer).unwrap();
        assert_eq!(store.load().unwrap(), Some(newer));
        assert!(!store.path().with_extension("state.tmp").exists());
        assert_eq!(
            file_name("[::1]:19700".parse().unwrap()),
            "kumo-manager-[__1]_19700.state"
        );
    }

    #[test]
    fn corrupt_files_are_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), me()).unwrap();
        store.save(&sample()).unwrap();
        let good = fs::read(store.path()).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 5].to_vec(), "truncated"),
            (
                {
                    let mut b = good.clone();
                    let last = b.len() - 3;
                    b[last] ^= 0x01;
                    b
                },
                "checksum mismatch",
            ),
            (b"hello world\n".to_vec(), "not a kumo-manager state file"),
            (Vec::new(), "no header line"),
            (
                String::from_utf8(good.clone())
                    .unwrap()
                    .replacen(" 1 ", " 9 ", 1)
                    .into_bytes(),
                "format version 9",
            ),
        ];
        for (bytes, expected) in cases {
            fs::write(store.path(), &bytes).unwrap();
            let err = store.load().unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(err.contains("Move it away"), "{err}");
        }
        // A well-formed file with an invalid state (a table listing a server twice).
        let mut bad = sample();
        let node = bad.routing.write.nodes[0];
        bad.routing.write.nodes.push(node);
        fs::write(store.path(), encode(me(), &bad).unwrap()).unwrap();
        assert!(store.load().unwrap_err().contains("invalid state"));
    }
}
